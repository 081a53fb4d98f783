"""The scale section of docs/performance.md, from bench/scale_bench.py's figures (results["scale"])."""

from __future__ import annotations

from typing import Any

TARGET_SMALL_RATIO = 1.2
TARGET_VIEW_SECONDS = 1.0
TARGET_VIEW_BYTES = 60 * 2**20
TARGET_VERIFY_RATIO = 2.0  # verify within 2x of sha256sum over the same files: bound by the bytes

VIEWS = (("status", "`status`"), ("list", "`list`"), ("prune_dry_run", "`prune --dry-run`"))


def _mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _load(values: list[float] | None) -> str:
    return ", ".join(f"{value:.1f}" for value in values) if values else "?"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    scale = results.get("scale")
    if not scale:
        return []
    rows: list[tuple[str, str, str]] = []
    small = scale.get("small_databases")
    if small:
        agent, loop = small["agent"], small["loop"]
        cpu_each = (agent["cpu"] - loop["cpu"]) / small["databases"] * 1000
        rows.append(
            (
                f"{small['databases']} small PostgreSQL databases: `backup` <= {TARGET_SMALL_RATIO}x a shell loop of "
                "`pg_dump -Fc --compress=0 $d \\| zstd -3 > f`",
                f"{small['ratio']:.2f}x ({agent['wall']:.2f} s vs {loop['wall']:.2f} s; "
                f"{small['per_database_overhead_seconds'] * 1000:.0f} ms more per database; CPU {agent['cpu']:.2f} s "
                f"vs {loop['cpu']:.2f} s, {cpu_each:.0f} ms more per database)",
                _verdict(small["ratio"] <= TARGET_SMALL_RATIO),
            )
        )
    many = scale.get("many_backups")
    if many:
        count = f"{many['backups']:,}"
        for key, label in VIEWS:
            figures = many[key]
            ok = figures["wall"] < TARGET_VIEW_SECONDS and figures["maxrss_bytes"] <= TARGET_VIEW_BYTES
            rows.append(
                (
                    f"{label} over {count} backups < 1 s and 60 MiB",
                    f"{figures['wall']:.2f} s (CPU {figures['cpu']:.2f} s), peak RSS {_mib(figures['maxrss_bytes'])}; "
                    f"the first run after the backups appeared: {many['first_run'][key]['wall']:.2f} s",
                    _verdict(ok),
                )
            )
        verify, reference = many["verify"], many["read_reference"]
        ratio = verify["wall"] / reference["wall"]
        per_backup = verify["cpu"] / many["backups"] * 1000
        rows.append(
            (
                f"`verify` over {count} backups bounded by reading the bytes (<= {TARGET_VERIFY_RATIO:.0f}x "
                "`sha256sum` of the same files)",
                f"{ratio:.1f}x ({verify['wall']:.1f} s vs {reference['wall']:.1f} s; CPU {verify['cpu']:.1f} s, "
                f"{per_backup:.2f} ms per backup)",
                _verdict(ratio <= TARGET_VERIFY_RATIO),
            )
        )
        incremental = many["verify_incremental"]
        rows.append(
            (
                f"`verify --incremental` a day later ({many['verify_incremental_added']} new backups, sample "
                f"{many['verify_incremental_sample']})",
                f"{incremental['wall']:.1f} s (CPU {incremental['cpu']:.1f} s), peak RSS "
                f"{_mib(incremental['maxrss_bytes'])}; the full verify {verify['wall']:.1f} s",
                "measured",
            )
        )
    return rows


def section(results: dict[str, Any]) -> list[str]:
    scale = results.get("scale")
    if not scale:
        return []
    lines = [
        "## At scale",
        "",
        f"bench/scale_bench.py, load average {_load(scale.get('load_at_start'))} at its start and "
        f"{_load(scale.get('load_at_end'))} at its end. Every command is a new process timed by wait4 "
        "(CPU of its tree; peak RSS from a bare parent, so the bench's own memory never counts).",
        "",
    ]
    small = scale.get("small_databases")
    if small:
        lines += [
            f"**{small['databases']} small databases** ({small['rows_per_database']:,}+ rows each, one table): "
            f"one `backup-agent backup` of a job listing all of them against `{small['loop_command']}`, "
            f"{small['agent']['runs']} interleaved rounds after a warm-up; walls agent {small['agent']['walls']}, "
            f"loop {small['loop']['walls']}.",
            "",
        ]
    many = scale.get("many_backups")
    if many:
        lines += [
            f"**{many['backups']:,} backups** ({many['stored_bytes'] / 1e6:.0f} MB): copies of the small databases' "
            "real backups (their manifests as the writer wrote them, with earlier times) and a journal line for "
            "each; medians of the repeated runs after the first.",
            "",
            "| command | wall | CPU | peak RSS | first run after the backups appeared (`status` builds the index) |",
            "|---|---|---|---|---|",
        ]
        commands = [*VIEWS, ("status_json", "`status --json`"), ("list_json", "`list --json`")]
        for key, label in commands:
            figures, first = many[key], many["first_run"][key]
            lines.append(
                f"| {label} | {figures['wall']:.2f} s | {figures['cpu']:.2f} s | {_mib(figures['maxrss_bytes'])} | "
                f"{first['wall']:.2f} s, CPU {first['cpu']:.2f} s, {_mib(first['maxrss_bytes'])} |"
            )
        for key, label in (
            ("read_reference", "`sha256sum` of every data file"),
            ("verify", "`verify`"),
            ("verify_incremental_first", "`verify --incremental`, right after"),
            ("verify_incremental", f"`verify --incremental`, {many['verify_incremental_added']} new backups later"),
        ):
            figures = many[key]
            lines.append(
                f"| {label} | {figures['wall']:.2f} s | {figures['cpu']:.2f} s | {_mib(figures['maxrss_bytes'])} | |"
            )
        lines.append("")
    return lines
