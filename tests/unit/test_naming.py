"""Database names become safe, distinct, reversible path components."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.naming import (
    MAX_COMPONENT_BYTES,
    backup_filename,
    decode_name,
    encode_name,
    parse_backup_filename,
)

names = st.text(min_size=1, max_size=300).filter(lambda text: "\x00" not in text) | st.sampled_from(
    ["..", ".", "../x", "a/b", "a_b", "a%2Fb", "_globals", ".hidden", 'x\n{"fake": 1}', "\x1b[31mred", "A", "a"]
)


def test_a_plain_name_stays_readable() -> None:
    assert encode_name("shop_db-2.prod") == "shop_db-2.prod"


def test_a_space_is_percent_encoded() -> None:
    assert encode_name("my shop") == "my%20shop"


def test_dots_and_slashes_cannot_form_a_path() -> None:
    for name in ("..", ".", "../x", "a/b", "/etc/passwd"):
        component = encode_name(name)
        assert "/" not in component
        assert component not in (".", "..")
        assert not component.startswith(".")


def test_the_agents_own_folders_cannot_be_named_by_a_database() -> None:
    assert encode_name("_globals") != "_globals"
    assert encode_name("_grants").startswith("%5F")


@settings(max_examples=200)
@given(names)
def test_every_name_becomes_one_safe_component_that_decodes_back(name: str) -> None:
    component = encode_name(name)
    assert PurePosixPath(component).name == component
    assert component not in (".", "..") and not component.startswith(".")
    assert all(32 < ord(char) < 127 for char in component)
    assert len(component.encode()) <= MAX_COMPONENT_BYTES
    decoded = decode_name(component)
    assert decoded is None or decoded == name
    if decoded is None:
        assert "~" in component


@settings(max_examples=200)
@given(names, names)
def test_two_different_names_never_share_a_component(first: str, second: str) -> None:
    if first != second:
        assert encode_name(first) != encode_name(second)


def test_names_a_naive_sanitiser_would_merge_stay_apart() -> None:
    components = {encode_name(name) for name in ("a/b", "a_b", "a%2Fb", "a b", "a\tb", "A_b")}
    assert len(components) == 6


def test_a_long_name_is_cut_with_a_hash_and_the_full_file_name_fits_255_bytes() -> None:
    name = "ü" * 300
    component = encode_name(name)
    assert "~" in component
    filename = backup_filename("job-name-that-is-long", component, datetime.now(UTC), "pgdump.zst", 12)
    assert len((filename + ".json.partial").encode()) <= 255


def test_file_names_parse_back_to_job_name_time_and_sequence() -> None:
    moment = datetime(2026, 3, 29, 1, 30, 5, tzinfo=UTC)
    filename = backup_filename("main", encode_name("my shop"), moment, "pgdump.zst", 2)
    assert filename == "main.my%20shop.20260329T013005Z-2.pgdump.zst"
    parsed = parse_backup_filename(filename)
    assert parsed is not None
    assert (parsed.job, parsed.component, parsed.created_at, parsed.sequence, parsed.extension) == (
        "main",
        "my%20shop",
        moment,
        2,
        "pgdump.zst",
    )


def test_the_newest_of_two_backups_in_one_second_is_the_one_with_the_higher_sequence(tmp_path) -> None:
    from agent import catalog

    moment = datetime(2026, 1, 1, tzinfo=UTC)
    first = catalog.BackupRecord("j", "db", tmp_path / backup_filename("j", "db", moment, "sql"), moment, "good")
    second = catalog.BackupRecord("j", "db", tmp_path / backup_filename("j", "db", moment, "sql", 1), moment, "good")
    assert max([second, first], key=lambda record: record.order) is second
    assert max([first, second], key=lambda record: record.order) is second
