"""Every value in config.example.toml says whether it is the default or an example, and every edit
it suggests gives a valid config.

The file's own convention (its header explains it): a setting's comment starts with `(default)`,
`(example)` or `(required)`; a commented-out setting is a suggestion, applied by uncommenting it
(in place of the same key); `(example, instead of K)` also removes K, `(example, with K)` also
uncomments K's suggestion. A commented table (`# [jobs.shop]`) is one suggestion, taken whole;
`# # key = ...` inside it is a suggestion on top of that table.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import Config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
LINES = EXAMPLE.read_text(encoding="utf-8").splitlines()

_TABLE = re.compile(r"^(?P<hashes>(?:# )?)\[(?P<name>[^\]]+)\]")
_SETTING = re.compile(r"^(?P<hashes>(?:# ){0,2})(?P<key>[a-z_]+) = (?P<rest>.*)$")
_MARKER = re.compile(r"^\((?P<kind>default|example|required)(?P<options>(?:, [^)]*)?)\)")


@dataclass(frozen=True)
class Setting:
    index: int  # line number - 1
    table: str
    table_commented: bool
    depth: int  # 0 active, 1 `# key`, 2 `# # key`
    key: str
    value: str
    comment: str

    @property
    def marker(self) -> re.Match[str] | None:
        return _MARKER.match(self.comment)

    def option(self, word: str) -> list[str]:
        marker = self.marker
        assert marker is not None
        found = re.search(rf"{word} ([a-z_, ]+?)(?:,|$)", marker["options"].removeprefix(", ") + ",")
        return [key.strip() for key in found.group(1).split(",") if key.strip()] if found else []


def _split_value(rest: str) -> tuple[str, str]:
    """The TOML value and the comment after it: the shortest prefix that parses as a value."""
    for position in [index for index, character in enumerate(rest) if character == "#"] + [len(rest)]:
        candidate = rest[:position].strip()
        try:
            tomllib.loads(f"x = {candidate}")
        except tomllib.TOMLDecodeError:
            continue
        return candidate, rest[position + 1 :].strip()
    raise AssertionError(f"no TOML value in {rest!r}")


def _settings() -> list[Setting]:
    found: list[Setting] = []
    table, table_commented = "", False
    for index, line in enumerate(LINES):
        header = _TABLE.match(line)
        if header:
            table, table_commented = header["name"], bool(header["hashes"])
            continue
        setting = _SETTING.match(line)
        if not setting:
            continue
        value, comment = _split_value(setting["rest"])
        depth = len(setting["hashes"]) // 2
        found.append(Setting(index, table, table_commented, depth, setting["key"], value, comment))
    return found


SETTINGS = _settings()
SUGGESTIONS = [setting for setting in SETTINGS if setting.depth == (2 if setting.table_commented else 1)]
COMMENTED_TABLES = sorted({setting.table for setting in SETTINGS if setting.table_commented})


def _load(lines: list[str]) -> Config:
    return parse_config("\n".join(lines) + "\n", EXAMPLE, file_mode=0o100600)


def _uncomment(line: str, levels: int = 1) -> str:
    return line[2 * levels :]


def _with_table(lines: list[str], table: str) -> list[str]:
    """A commented table taken whole: its header and its `# key` lines uncommented."""
    out = list(lines)
    inside = False
    for index, line in enumerate(lines):
        header = _TABLE.match(line)
        if header:
            inside = header["name"] == table and bool(header["hashes"])
            if inside:
                out[index] = _uncomment(line)
            continue
        if inside and line.startswith("# ") and not line.startswith("# # ") and _SETTING.match(_uncomment(line)):
            out[index] = _uncomment(line)
    return out


def _apply(setting: Setting) -> list[str]:
    lines = _with_table(LINES, setting.table) if setting.table_commented else list(LINES)
    active_depth = 1 if setting.table_commented else 0
    chosen = [setting]
    for key in setting.option("with"):
        partners = [s for s in SUGGESTIONS if s.table == setting.table and s.key == key]
        assert partners, f"line {setting.index + 1}: `with {key}` names no suggestion in [{setting.table}]"
        chosen.append(partners[0])
    replaced = {one.key for one in chosen} | set(setting.option("instead of"))
    for other in SETTINGS:
        if other.table == setting.table and other.depth == active_depth and other.key in replaced:
            lines[other.index] = "# (replaced)"
    for one in chosen:
        lines[one.index] = _uncomment(LINES[one.index], one.depth - active_depth)
    return lines


def test_every_setting_says_whether_its_value_is_the_default_an_example_or_required() -> None:
    unmarked = [f"line {s.index + 1}: {s.key}" for s in SETTINGS if s.marker is None]
    assert unmarked == [], "comment must start with (default), (example) or (required)"


def test_the_header_explains_the_markers() -> None:
    header = "\n".join(LINES[:12])
    assert all(word in header for word in ("(default)", "(example)", "(required)", "instead of", "with"))


@pytest.mark.parametrize("setting", SUGGESTIONS, ids=lambda s: f"line{s.index + 1}-{s.table}.{s.key}")
def test_each_suggested_edit_loads(setting: Setting) -> None:
    _load(_apply(setting))


@pytest.mark.parametrize("table", COMMENTED_TABLES)
def test_each_commented_table_loads_when_uncommented(table: str) -> None:
    _load(_with_table(LINES, table))


@pytest.mark.parametrize(
    "setting", [s for s in SETTINGS if s.marker and s.marker["kind"] == "default"], ids=lambda s: f"line{s.index + 1}"
)
def test_a_value_marked_default_is_what_leaving_the_key_out_gives(setting: Setting) -> None:
    """Active: deleting the line changes nothing. Commented: uncommenting it changes nothing."""
    base = _with_table(LINES, setting.table) if setting.table_commented else list(LINES)
    active_depth = 1 if setting.table_commented else 0
    changed = list(base)
    assert setting.depth <= active_depth + 1, "a default is never a suggestion on top of a suggestion"
    if setting.depth == active_depth:
        changed[setting.index] = "# (left out)"
    else:
        changed[setting.index] = _uncomment(LINES[setting.index], setting.depth - active_depth)
    where = f"line {setting.index + 1}: {setting.key} = {setting.value}"
    assert _load(changed) == _load(base), f"{where} is not the default"
