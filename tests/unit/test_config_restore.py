"""[jobs.NAME.restore]: the account restores and drills use, read exactly like the job's own password."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import run_cli

from agent.config import parse_config
from agent.errors import ConfigError
from agent.restore import restoring_job
from agent.secrets import Secret

SOURCE = Path("/etc/backup-agent/config.toml")
HEAD = '[storage]\npath = "/var/backups/db"\n\n[jobs.main]\nengine = "postgresql"\ndatabases = "*"\nuser = "backup"\n'


def problems_of(text: str, file_mode: int | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE, file_mode=file_mode)
    return caught.value.problems


def test_a_restore_account_takes_a_user_and_a_password_file() -> None:
    text = HEAD + '\n[jobs.main.restore]\nuser = "restorer"\npassword_file = "/etc/backup-agent/restore.password"\n'
    job = parse_config(text, SOURCE).jobs["main"]
    assert job.restore is not None and job.restore.user == "restorer"
    source = job.restore.password
    assert (source.kind, source.reference) == ("file", "/etc/backup-agent/restore.password")
    assert source.key_path.startswith("jobs.main.restore.password_file")  # errors name the restore table's key
    restoring = restoring_job(job)
    assert restoring.user == "restorer" and restoring.password == job.restore.password
    assert job.user == "backup"  # backups keep the backup account


def test_a_job_without_a_restore_account_restores_as_itself() -> None:
    job = parse_config(HEAD, SOURCE).jobs["main"]
    assert job.restore is None and restoring_job(job) is job


def test_an_environment_variable_and_an_inline_password_work_as_for_the_job() -> None:
    env = parse_config(HEAD + '\n[jobs.main.restore]\nuser = "r"\npassword_env = "RESTORE_PW"\n', SOURCE)
    restore = env.jobs["main"].restore
    assert restore is not None and (restore.password.kind, restore.password.reference) == ("env", "RESTORE_PW")
    assert restore.password.key_path.startswith("jobs.main.restore.password_env")
    inline = parse_config(HEAD + '\n[jobs.main.restore]\nuser = "r"\npassword = "s3cret-x"\n', SOURCE, file_mode=0o600)
    restore = inline.jobs["main"].restore
    assert restore is not None and restore.password.read() == Secret("s3cret-x")


def test_an_inline_restore_password_in_a_readable_config_is_refused_without_echoing_it() -> None:
    text = HEAD + '\n[jobs.main.restore]\nuser = "r"\npassword = "s3cret-x"\n'
    [problem] = problems_of(text, file_mode=0o644)
    assert problem.startswith("jobs.main.restore.password (line 11)") and "chmod 600" in problem
    assert "s3cret-x" not in problem


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('password_file = "/x"\n', "jobs.main.restore.user (line 9): missing from [jobs.main.restore]"),
        ('user = "r"\npassword_file = "/x"\npassword_env = "Y"\n', "jobs.main.restore.password (line 9): set only one"),
        ('user = "r"\npasword_file = "/x"\n', "jobs.main.restore.pasword_file (line 11): unknown key"),
        ('user = ""\n', "jobs.main.restore.user (line 10): must not be empty"),
        (
            'user = "r"\npassword_env = "not a name"\n',
            "jobs.main.restore.password_env (line 11): expected an environment",
        ),
    ],
)
def test_a_bad_restore_table_names_its_key_and_line(body: str, expected: str) -> None:
    problems = problems_of(HEAD + "\n[jobs.main.restore]\n" + body)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_bad_restore_table_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path}/s"\n' + HEAD.split("\n", 2)[2] + '\n[jobs.main.restore]\npassword_env = "X"\n'
    )
    config.chmod(0o600)
    assert run_cli(config, "check-config", "--offline") == 78


def test_check_config_shows_the_restore_account_but_never_its_password() -> None:
    text = HEAD + '\n[jobs.main.restore]\nuser = "r"\npassword = "s3cret-x"\n'
    described = parse_config(text, SOURCE, file_mode=0o600).describe()
    assert described["jobs"]["main"]["restore"] == {"user": "r", "password": "inline (hidden)"}
    assert "s3cret-x" not in repr(described)
