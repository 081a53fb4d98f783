"""What ships for operators: the systemd unit, logrotate rules, the install script, the Docker image
files and the operations guide. Checked without changing the host's services or needing Docker."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from servers.common import skip_or_fail

from agent.config import DaemonConfig

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "backup-agent.service"
SHIPPED_EXEC_START = "ExecStart=/usr/bin/backup-agent run"


def tool_or_skip(name: str, why: str) -> str:
    """The tool's path; a missing tool fails under CI (it is in the project's dependencies), else skips."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        skip_or_fail(f"{name} is not installed ({why}); `make system-deps` installs it")
    return found


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "min" else 1)


# --------------------------------------------------------------------------------------------------
# systemd


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool_or_skip("systemd-analyze", "the unit must pass `systemd-analyze verify`")
    console_script = Path(sys.executable).parent / "backup-agent"
    assert console_script.exists(), "the package is not installed in this environment"
    shipped = UNIT.read_text()
    assert shipped.count(SHIPPED_EXEC_START) == 1
    copy = tmp_path / "backup-agent.service"  # the same unit, run from this checkout's virtualenv
    copy.write_text(shipped.replace(SHIPPED_EXEC_START, f"ExecStart={console_script} run"))
    differing = [
        pair for pair in zip(shipped.splitlines(), copy.read_text().splitlines(), strict=True) if pair[0] != pair[1]
    ]
    assert differing == [(SHIPPED_EXEC_START, f"ExecStart={console_script} run")]

    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False)

    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "backup-agent.service" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_the_unit_runs_the_daemon_hardened_and_stops_it_gently() -> None:
    settings = unit_settings(UNIT.read_text())
    one = {key: values[-1] for key, values in settings.items()}
    assert one["ExecStart"].endswith("backup-agent run")
    assert one["User"] == "backup-agent" and one["Group"] == "backup-agent"
    assert one["UMask"] == "0077"
    assert one["ProtectSystem"] == "strict"
    writable = one["ReadWritePaths"].split()
    assert "/var/backups/backup-agent" in writable and "/var/log/backup-agent" in writable
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert one[key] == "yes", key
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["KillMode"] == "mixed"
    assert one["Restart"] == "on-failure" and one["RestartPreventExitStatus"] == "78"
    assert seconds(one["TimeoutStopSec"]) >= DaemonConfig().shutdown_timeout.total_seconds() + 10
    assert int(one["Nice"]) > 0 and one["IOSchedulingClass"] in ("best-effort", "idle")
    assert one["CapabilityBoundingSet"] == ""


def test_logrotate_rules_parse_and_never_copytruncate(tmp_path: Path) -> None:
    rules = (ROOT / "systemd" / "backup-agent.logrotate").read_text()
    directives = [line.strip() for line in rules.splitlines() if not line.lstrip().startswith("#")]
    assert "copytruncate" not in directives  # the agent reopens a moved file; copying would lose lines
    logrotate = tool_or_skip("logrotate", "the rules must parse with logrotate")
    assert "su backup-agent backup-agent" in rules and "create 0640 backup-agent backup-agent" in rules
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "agent.log").write_text("{}\n")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    local = rules.replace("/var/log/backup-agent", str(tmp_path / "logs")).replace(
        "backup-agent backup-agent", f"{user} {user}"
    )
    config = tmp_path / "logrotate.conf"
    config.write_text(local)

    result = subprocess.run(
        [logrotate, "--debug", "--state", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    assert (tmp_path / "logs" / "agent.log").exists()  # --debug changes nothing


# --------------------------------------------------------------------------------------------------
# install script


def test_install_script_into_a_destdir_makes_folders_with_the_right_modes(tmp_path: Path) -> None:
    destination = tmp_path / "root"

    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--no-venv"],
        env={**os.environ, "DESTDIR": str(destination)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "not enabling the service" in result.stdout

    def mode(relative: str) -> int:
        return stat.S_IMODE((destination / relative).stat().st_mode)

    assert mode("etc/backup-agent") == 0o750
    assert mode("etc/backup-agent/config.toml") == 0o640
    assert mode("var/backups/backup-agent") == 0o750
    assert mode("var/log/backup-agent") == 0o750
    assert mode("etc/systemd/system/backup-agent.service") == 0o644
    assert (destination / "etc/systemd/system/backup-agent.service").read_text() == UNIT.read_text()
    assert (destination / "etc/logrotate.d/backup-agent").exists()
    assert (destination / "usr/share/doc/backup-agent/operations.md").exists()


def test_install_script_dry_run_shows_every_step_and_changes_nothing(tmp_path: Path) -> None:
    unit_before = Path("/etc/systemd/system/backup-agent.service").exists()
    user_before = subprocess.run(["getent", "passwd", "backup-agent"], capture_output=True, check=False).returncode

    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("would run:")]
    assert any("-m venv /opt/backup-agent" in step for step in steps)
    assert any("install -d -m 0750 -o backup-agent -g backup-agent /var/backups/backup-agent" in step for step in steps)
    assert any(step.endswith("systemctl enable backup-agent.service") for step in steps)
    if user_before != 0:
        assert any(step.startswith("would run: useradd --system") for step in steps)
    assert Path("/etc/systemd/system/backup-agent.service").exists() == unit_before
    after = subprocess.run(["getent", "passwd", "backup-agent"], capture_output=True, check=False).returncode
    assert after == user_before


def test_install_script_rejects_unknown_options() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--frobnicate"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr


def test_make_install_runs_the_install_script_with_destdir() -> None:
    make = tool_or_skip("make", "the Makefile's install target")
    result = subprocess.run(
        [make, "-n", "install", "DESTDIR=/tmp/pkg", "INSTALL_FLAGS=--no-venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert 'DESTDIR="/tmp/pkg" bash scripts/install.sh --no-venv' in result.stdout


# --------------------------------------------------------------------------------------------------
# Docker (no engine here: lint and read)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = tool_or_skip("hadolint", "the Dockerfile is linted without a Docker engine")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_has_every_piece_a_sidecar_needs() -> None:
    instructions = dockerfile_instructions()
    values = {keyword: [rest for key, rest in instructions if key == keyword] for keyword, _ in instructions}
    bases = values["FROM"]
    assert bases and all(re.match(r"python:\$\{PYTHON_VERSION\}-slim", base) for base in bases)
    pg_major = next(int(arg.split("=")[1]) for arg in values["ARG"] if arg.startswith("PG_MAJOR="))
    assert pg_major >= 17  # pg_dump cannot dump a newer server than itself
    installs = " ".join(values["RUN"])
    for package in ('"postgresql-client-${PG_MAJOR}"', "mariadb-client", "tini", "tzdata"):
        assert package in installs, package
    assert "apt.postgresql.org" in installs and "rm -rf /var/lib/apt/lists/*" in installs
    user = values["USER"][-1].split(":")[0]
    assert user not in ("0", "root")
    assert json.loads(values["ENTRYPOINT"][-1]) == ["/usr/bin/tini", "--", "backup-agent"]
    assert json.loads(values["CMD"][-1]) == ["run"]
    healthcheck = values["HEALTHCHECK"][-1]
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["backup-agent", "status", "--check"]
    assert "/var/backups/backup-agent" in json.loads(values["VOLUME"][-1])
    assert values["STOPSIGNAL"] == ["SIGTERM"]


def test_the_docker_context_and_compose_example_are_careful() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" or "*" in ignored  # an allowlist: nothing else reaches the build
    assert "!agent/" in ignored and "!pyproject.toml" in ignored
    compose = (ROOT / "compose.example.yaml").read_text()
    grace = re.search(r"stop_grace_period:\s*(\d+)s", compose)
    assert grace and int(grace[1]) > DaemonConfig().shutdown_timeout.total_seconds()
    assert "/etc/backup-agent:ro" in compose and ":/var/backups/backup-agent" in compose
    assert "no-new-privileges:true" in compose and "read_only: true" in compose


# --------------------------------------------------------------------------------------------------
# The operations guide


_EVENT_CALL = re.compile(
    r'(?:\.(?:debug|info|warning|error|exception|critical)|\blevel)\(\s*"([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)"'
)


def test_every_log_event_in_the_code_is_in_the_operations_guide() -> None:
    events = {match[1] for path in (ROOT / "agent").rglob("*.py") for match in _EVENT_CALL.finditer(path.read_text())}
    assert {"backup.finished", "backup.failed", "hook.failed", "notify.failed"} <= events
    guide = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)`", guide))
    assert sorted(events - documented) == []


def test_the_guide_documents_the_exit_codes_the_code_uses() -> None:
    from agent import errors

    guide = (ROOT / "docs" / "operations.md").read_text()
    for code in (errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_CONFIG):
        assert re.search(rf"^\| {code} \|", guide, re.MULTILINE), code
    assert "| 128+N |" in guide
    for section in ("## Install on a server", "## Run in Docker", "## Are my backups OK?"):
        assert section in guide
