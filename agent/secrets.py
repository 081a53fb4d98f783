"""Secrets as a type: never printed, never in argv; re-read from their source at every use."""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent import trust
from agent.errors import ConfigError


class Secret:
    """A password that renders as `***` everywhere except `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SecretSource:
    """Where a password comes from: a file (read again at every run), an env variable, or inline."""

    kind: str  # "file" | "env" | "inline" | "none"
    reference: str = ""  # the file path or the variable name; empty for inline/none
    inline: Secret | None = None
    key_path: str = ""  # config key path, for error messages

    def read(self) -> Secret | None:
        """Return the current secret; a rotated password file is picked up without a restart."""
        if self.kind == "none":
            return None
        if self.kind == "inline":
            return self.inline
        if self.kind == "env":
            value = os.environ.get(self.reference)
            if value is None:
                raise ConfigError(f"{self.key_path}: environment variable {self.reference} is not set")
            return Secret(value)
        try:
            data = trust.read_secret_file(self.reference)
        except trust.UnsafePath as error:
            raise ConfigError(f"{self.key_path}: {error}") from None
        except OSError as error:
            raise ConfigError(
                f"{self.key_path}: cannot read password file {self.reference}: {error.strerror}"
            ) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            problem = f"password file {self.reference} is not UTF-8 (byte {error.start})"
            raise ConfigError(f"{self.key_path}: {problem}") from None
        return Secret(text.rstrip("\r\n"))

    def describe(self) -> str:
        """A printable description that never includes the secret itself."""
        if self.kind == "file":
            return f"file {self.reference}"
        if self.kind == "env":
            return f"env {self.reference}"
        if self.kind == "inline":
            return "inline (hidden)"
        return "none"
