"""`check-config` reads each job's password as a run would: a missing one is a config error, not "valid"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import cli


def _postgres_config(tmp_path: Path, password_line: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "storage"}"\n\n[jobs.main]\nengine = "postgresql"\nhost = "127.0.0.1"\n'
        f'port = 5432\nuser = "backup"\n{password_line}\ndatabases = "*"\n',
        encoding="utf-8",
    )
    config.chmod(0o600)
    return config


def test_a_missing_password_file_fails_check_config_naming_key_line_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "main.password"
    config = _postgres_config(tmp_path, f'password_file = "{absent}"')
    assert cli.main(["-c", str(config), "check-config", "--offline"]) == 78
    error = capsys.readouterr().err
    assert "jobs.main.password_file (line 9)" in error and str(absent) in error, error
    assert "config is valid" not in error


def test_an_unset_password_variable_fails_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKUP_AGENT_TEST_UNSET", raising=False)
    config = _postgres_config(tmp_path, 'password_env = "BACKUP_AGENT_TEST_UNSET"')
    assert cli.main(["-c", str(config), "check-config", "--offline"]) == 78
    assert "BACKUP_AGENT_TEST_UNSET is not set" in capsys.readouterr().err


def test_a_readable_password_file_passes_and_its_content_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "main.password"
    secret.write_text("very-secret-word\n", encoding="utf-8")
    os.chmod(secret, 0o600)
    config = _postgres_config(tmp_path, f'password_file = "{secret}"')
    assert cli.main(["-c", str(config), "check-config", "--offline"]) == 0
    output = capsys.readouterr()
    assert "config is valid" in output.out and "very-secret-word" not in output.out + output.err
