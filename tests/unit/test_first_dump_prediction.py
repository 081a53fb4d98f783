"""Predicting a dump with no history, and the refusal message when even its smallest size cannot fit."""

from __future__ import annotations

import re
from pathlib import Path

from agent.budget import MIB, Budget, DiskFigures, Prediction, Shortage, explain_shortage, predict
from agent.config import StorageConfig
from agent.engines import family
from agent.units import parse_size


def storage(reserve: str = "10%", max_usage: str | None = None) -> StorageConfig:
    return StorageConfig(
        path=Path("/srv/backups"),
        compression="zstd",
        level=3,
        threads=-1,
        max_usage=parse_size(max_usage, "storage.max_usage", allow_percent=True) if max_usage else None,
        reserve=parse_size(reserve, "storage.reserve", allow_percent=True),
        quota=None,
        immutable=False,
        max_write_rate=None,
    )


def test_a_first_dump_is_predicted_from_the_engines_measured_ratio_not_half_the_estimate() -> None:
    ratio = family("postgresql").first_dump_ratios["zstd"]
    estimate = 316 * MIB  # the reported case: 158 MiB predicted (0.5x), 82 MiB written

    prediction = predict([], estimate, "zstd", (ratio.low, ratio.high))

    assert prediction.basis == "estimate"
    assert prediction.least_bytes < 82 * MIB < prediction.stored_bytes < 158 * MIB


def test_every_engine_has_measured_ratios_for_every_compression_with_low_at_most_high() -> None:
    for name in ("postgresql", "mysql", "mongodb", "sqlite"):
        ratios = family(name).first_dump_ratios
        assert set(ratios) == {"zstd", "gzip", "none"}, name
        assert all(0 < ratio.low <= ratio.high for ratio in ratios.values()), name


def test_with_history_the_least_plausible_size_is_the_newest_one() -> None:
    prediction = predict([10 * MIB, 30 * MIB, 20 * MIB], None, "zstd")
    assert prediction.basis == "history"
    assert prediction.stored_bytes == 36 * MIB and prediction.least_bytes == 20 * MIB


def shortage(freeable: int = 0, protected: int = 0, protected_bytes: int = 0) -> Shortage:
    return Shortage(
        what="the first backup of main/shop",
        prediction=Prediction(stored_bytes=95 * MIB, basis="estimate", least_bytes=16 * MIB),
        least_need_bytes=18 * MIB,
        freeable_bytes=freeable,
        protected_backups=protected,
        protected_bytes=protected_bytes,
        keep_min=2,
    )


def test_a_refusal_with_no_backups_names_the_reserve_value_that_lets_it_run() -> None:
    figures = DiskFigures(total_bytes=300 * MIB, free_bytes=40 * MIB, usage_bytes=0)
    budget = Budget(reserve_bytes=30 * MIB, max_usage_bytes=None)

    message = explain_shortage(shortage(), figures, budget, storage("10%"))

    assert "no backups to delete yet" in message and "keep_min" not in message
    assert "needs at least 18 MiB" in message and "10 MiB can be used" in message
    reserve = re.search(r'set storage\.reserve = "(\d+)MiB" or less \(now "10%"\)', message)
    assert reserve is not None and int(reserve.group(1)) * MIB + 18 * MIB <= 40 * MIB
    assert "free 8 MiB more on the filesystem holding /srv/backups" in message


def test_a_refusal_by_max_usage_names_the_max_usage_that_lets_it_run() -> None:
    figures = DiskFigures(total_bytes=300 * MIB, free_bytes=200 * MIB, usage_bytes=50 * MIB)
    budget = Budget(reserve_bytes=30 * MIB, max_usage_bytes=60 * MIB)

    message = explain_shortage(
        shortage(protected=2, protected_bytes=50 * MIB), figures, budget, storage("10%", "60MiB")
    )

    assert 'set storage.max_usage = "68MiB" or more (now "60 MiB")' in message
    assert "storage.reserve" not in message.split("To let it run:")[1]
    assert "2 backup(s) (50 MiB) are kept by retention.keep_min = 2" in message
    assert "lower retention.keep_min (now 2)" in message
