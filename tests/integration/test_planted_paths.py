"""Nothing another user planted is followed: the log, metrics, hooks, tools, password files.

The agent runs as root beside unprivileged users. Each test plants something as `nobody` (or in
a folder `nobody` may write) and checks that `check-config` and `doctor` name it by its key, that
a run refuses it, and that the planted target stayed untouched.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from pathlib import Path

import pytest
from agent_helpers import password_file, run_cli, write_config
from servers.common import skip_or_fail

from agent import process
from agent.errors import ToolError

VICTIM_TEXT = "root:x:0:0:root:/root:/bin/bash\n"


def nobody() -> tuple[int, int]:
    if os.geteuid() != 0:
        skip_or_fail("planting files as another user needs root (CI runs the tests as root)")
    account = pwd.getpwnam("nobody")
    return account.pw_uid, account.pw_gid


def sqlite_job(directory: Path, **extra: object) -> dict[str, object]:
    database = directory / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS t (x)")
    connection.close()
    return {"engine": "sqlite", "databases": [str(database)], **extra}


def config_with(directory: Path, job: dict[str, object], **sections: dict[str, object]) -> Path:
    others = {key: value for key, value in sections.items() if key != "log"}
    config = write_config(directory, {"app": job}, sections=others)
    if "log" in sections:
        text = config.read_text().replace(f'file = "{directory / "agent.log"}"', f'file = "{sections["log"]["file"]}"')
        config.write_text(text)
    return config


def check_config(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(config, "check-config", "--offline")
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def doctor_problems(config: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    run_cli(config, "doctor")
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]


def victim(directory: Path) -> Path:
    path = directory / "victim"
    path.write_text(VICTIM_TEXT)
    return path


def test_a_log_file_planted_as_a_symlink_is_never_written_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uid, gid = nobody()
    logs = tmp_path / "logs"
    logs.mkdir()
    os.chown(logs, uid, gid)  # the unprivileged user's folder: it planted the link there
    target = victim(tmp_path)
    (logs / "agent.log").symlink_to(target)
    config = config_with(tmp_path, sqlite_job(tmp_path), log={"file": str(logs / "agent.log")})

    code, output = check_config(config, capsys)
    assert code == 78
    assert "log.file" in output and f"{logs} belongs to nobody" in output
    assert any("log.file" in line for line in doctor_problems(config, capsys))
    assert run_cli(config, "backup") == 78
    assert target.read_text() == VICTIM_TEXT


def test_a_symlink_in_place_of_the_log_is_refused_when_it_is_opened(tmp_path: Path) -> None:
    from agent import log

    target = victim(tmp_path)
    (tmp_path / "agent.log").symlink_to(target)

    with pytest.raises(Exception, match=r"symbolic link") as raised:
        log.configure(file=tmp_path / "agent.log", console=False)

    assert raised.type.__name__ == "UnsafePath"
    assert target.read_text() == VICTIM_TEXT
    log.configure(console=True)


def test_a_hard_link_in_place_of_the_log_is_refused(tmp_path: Path) -> None:
    from agent import log

    target = victim(tmp_path)
    os.link(target, tmp_path / "agent.log")

    with pytest.raises(Exception, match=r"2 names \(hard links\)"):
        log.configure(file=tmp_path / "agent.log", console=False)

    assert target.read_text() == VICTIM_TEXT
    log.configure(console=True)


def test_a_before_hook_another_user_can_change_is_refused_and_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uid, gid = nobody()
    marker = tmp_path / "hook-ran"
    hook = tmp_path / "before.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    os.chown(hook, uid, gid)
    config = config_with(tmp_path, sqlite_job(tmp_path, hooks={"before": [str(hook)]}))

    code, output = check_config(config, capsys)
    assert code == 78
    assert "jobs.app.hooks.before" in output and f"the program {hook} belongs to nobody" in output
    assert any("jobs.app.hooks.before" in line for line in doctor_problems(config, capsys))
    assert run_cli(config, "backup") == 78
    assert not marker.exists()


def test_a_hook_in_a_folder_others_can_write_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    hook = shared / "after.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    config = config_with(tmp_path, sqlite_job(tmp_path, hooks={"after": [str(hook)]}))

    code, output = check_config(config, capsys)

    assert code == 78
    assert "jobs.app.hooks.after" in output and f"{shared} is writable by others" in output


def test_a_program_changed_after_the_config_was_read_is_not_started(tmp_path: Path) -> None:
    """The rule holds where every child is started, not only when the config is loaded (a daemon runs for weeks)."""
    program = tmp_path / "tool"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o757)

    with pytest.raises(ToolError, match=rf"refusing to run {program}: the program {program} is writable by others"):
        process.run([str(program)])

    program.chmod(0o755)
    assert process.run([str(program)]).stdout == "ran\n"


def test_a_tool_owned_by_another_user_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uid, gid = nobody()
    tool = tmp_path / "pg_dump"
    tool.write_text("#!/bin/sh\nexit 1\n")
    tool.chmod(0o755)
    os.chown(tool, uid, gid)
    job = {"engine": "postgresql", "host": "db.example", "databases": ["app"], "tool": str(tool)}
    config = config_with(tmp_path, job)

    code, output = check_config(config, capsys)

    assert code == 78
    assert "jobs.app.tool" in output and "belongs to nobody" in output


def test_a_password_file_others_can_read_is_refused_like_an_inline_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = password_file(tmp_path, "s3cret-value")
    secret.chmod(0o644)
    job = {"engine": "postgresql", "host": "db.example", "databases": ["app"], "password_file": str(secret)}
    config = config_with(tmp_path, job)

    code, output = check_config(config, capsys)

    assert code == 78
    assert "jobs.app.password_file" in output and "readable by others" in output
    assert "s3cret-value" not in output


def test_a_password_file_made_readable_after_start_is_not_read(tmp_path: Path) -> None:
    from agent.errors import ConfigError
    from agent.secrets import SecretSource

    secret = password_file(tmp_path, "s3cret-value")
    source = SecretSource("file", str(secret), key_path="jobs.app.password_file")
    assert source.read() is not None
    secret.chmod(0o604)

    with pytest.raises(ConfigError, match=r"jobs\.app\.password_file: password file .* is readable by others"):
        source.read()


def test_a_password_file_reached_through_a_root_owned_link_is_read(tmp_path: Path) -> None:
    """Kubernetes mounts secrets as links in a folder only root writes: a link nobody else can change is fine."""
    from agent.secrets import SecretSource

    real = tmp_path / "..data"
    real.mkdir()
    password_file(real, "k8s-secret")
    (tmp_path / "db.password").symlink_to(real / "db.password")

    secret = SecretSource("file", str(tmp_path / "db.password"), key_path="jobs.app.password_file").read()

    assert secret is not None and secret.reveal() == "k8s-secret"


def test_a_password_file_linked_from_a_shared_folder_by_another_user_is_refused(tmp_path: Path) -> None:
    uid, _ = nobody()
    from agent.errors import ConfigError
    from agent.secrets import SecretSource

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky, but not root's /tmp: still writable by others
    os.chown(shared, 0, 0)
    planted = shared / "db.password"
    planted.symlink_to(password_file(tmp_path, "attacker-chosen"))
    os.lchown(planted, uid, -1)

    with pytest.raises(ConfigError, match=r"belongs to nobody in .*shared, where anyone may create names"):
        SecretSource("file", str(planted), key_path="jobs.app.password_file").read()


def test_a_metrics_file_in_a_folder_others_can_write_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    shared.chmod(0o777)
    config = config_with(tmp_path, sqlite_job(tmp_path), metrics={"textfile": str(shared / "agent.prom")})

    code, output = check_config(config, capsys)

    assert code == 78
    assert "metrics.textfile" in output and f"{shared} is writable by others" in output


def test_a_metrics_folder_that_became_writable_by_others_is_not_written(tmp_path: Path) -> None:
    """Someone who may write the folder could plant the temp file's name as a hard link to any file."""
    from agent import metrics
    from agent.config import load_config

    folder = tmp_path / "metrics"
    folder.mkdir()
    config = load_config(config_with(tmp_path, sqlite_job(tmp_path), metrics={"textfile": str(folder / "agent.prom")}))
    folder.chmod(0o777)
    target = victim(tmp_path)
    os.link(target, folder / f".agent.prom.{os.getpid()}.tmp")

    assert metrics.write_textfile(config) is False
    assert target.read_text() == VICTIM_TEXT


def test_a_good_setup_has_no_planted_path_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hook = tmp_path / "before.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    config = config_with(
        tmp_path,
        sqlite_job(tmp_path, hooks={"before": [str(hook)]}),
        metrics={"textfile": str(tmp_path / "agent.prom")},
    )

    code, output = check_config(config, capsys)

    assert code == 0, output
    assert run_cli(config, "backup") == 0
    assert (tmp_path / "agent.prom").exists()


@pytest.mark.parametrize("folder", [".agent/locks", ".agent/tmp", ".agent/tmp/app"])
def test_a_lock_or_scratch_folder_someone_else_could_write_is_not_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], folder: str
) -> None:
    config = config_with(tmp_path, sqlite_job(tmp_path))
    assert run_cli(config, "backup") == 0
    shared = tmp_path / "storage" / folder
    shared.chmod(0o777)  # a lock or a scratch file planted here would be the agent's to trust
    capsys.readouterr()

    code = run_cli(config, "backup")

    captured = capsys.readouterr()
    assert code == 1
    assert f"{shared} is writable by group or others" in captured.out + captured.err
