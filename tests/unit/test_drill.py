"""Drill comparisons and scratch names (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.drill import compare_counts, scratch_name


def test_missing_and_extra_tables_are_table_differences_and_counts_are_row_differences() -> None:
    tables, rows = compare_counts({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 0})
    assert tables == ["table c is missing after restore", "table d appeared that the backup did not record"]
    assert rows == ["table b: 2 rows recorded, 5 restored"]


def test_equal_counts_have_no_differences() -> None:
    assert compare_counts({"a": 1}, {"a": 1}) == ([], [])


def test_a_scratch_name_fits_63_bytes_even_for_a_long_unicode_name() -> None:
    name = scratch_name("ü" * 60, datetime(2026, 11, 26, 6, 0, tzinfo=UTC))
    assert len(name.encode()) <= 63
    assert name.endswith("__drill_20261126T060000Z")
