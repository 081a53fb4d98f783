"""Deterministic, realistic bench data, the same rows for PostgreSQL and MariaDB.

Three tables, by share of the raw bytes: `orders` (40 %: integers, decimals, timestamps, short
codes), `documents` (40 %: titles and bodies of Zipf-distributed words, a JSON attribute object),
`attachments` (20 %: binary content, half random and half repetitive, so it compresses about 2x).
Rows come from a seeded generator, so a given size and part always gives the same bytes. They are
written once as tab-separated files that both servers load natively (COPY, LOAD DATA).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

TABLE_SHARES = {"orders": 0.40, "documents": 0.40, "attachments": 0.20}
_EPOCH = datetime(2021, 1, 1, tzinfo=UTC)
_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "SEK")
_STATUSES = ("new", "paid", "packed", "shipped", "delivered", "returned", "cancelled")
_MIME = ("application/pdf", "image/png", "image/jpeg", "application/zip", "text/csv")
_LANGUAGES = ("en", "de", "fr", "es", "it", "nl")

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id bigint PRIMARY KEY, customer_id integer NOT NULL, product_id integer NOT NULL,
    quantity smallint NOT NULL, unit_price numeric(10,2) NOT NULL, discount numeric(4,3) NOT NULL,
    total numeric(12,2) NOT NULL, currency char(3) NOT NULL, status varchar(12) NOT NULL,
    created_at timestamp NOT NULL, shipped_at timestamp);
CREATE TABLE IF NOT EXISTS documents (
    id bigint PRIMARY KEY, title varchar(200) NOT NULL, body text NOT NULL, attributes jsonb NOT NULL,
    created_at timestamp NOT NULL);
CREATE TABLE IF NOT EXISTS attachments (
    id bigint PRIMARY KEY, name varchar(100) NOT NULL, mime varchar(40) NOT NULL, content bytea NOT NULL);
"""

MARIADB_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id BIGINT PRIMARY KEY, customer_id INT NOT NULL, product_id INT NOT NULL,
    quantity SMALLINT NOT NULL, unit_price DECIMAL(10,2) NOT NULL, discount DECIMAL(4,3) NOT NULL,
    total DECIMAL(12,2) NOT NULL, currency CHAR(3) NOT NULL, status VARCHAR(12) NOT NULL,
    created_at DATETIME NOT NULL, shipped_at DATETIME NULL) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS documents (
    id BIGINT PRIMARY KEY, title VARCHAR(200) NOT NULL, body MEDIUMTEXT NOT NULL, attributes JSON NOT NULL,
    created_at DATETIME NOT NULL) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS attachments (
    id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, mime VARCHAR(40) NOT NULL, content MEDIUMBLOB NOT NULL
) ENGINE=InnoDB;
"""

# LOAD DATA reads `\\x0a1b...` (the PostgreSQL bytea form) as `\x0a1b...`: drop the prefix, unhex
MARIADB_LOAD_SUFFIX = {"attachments": "(id, name, mime, @content) SET content = UNHEX(SUBSTRING(@content, 3))"}


def _vocabulary(rng: random.Random, size: int = 4000) -> tuple[list[str], list[float]]:
    """Pronounceable words with Zipf-like weights (cumulative), like natural text."""
    onsets = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ck"]
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)))
    ordered = sorted(words)
    rng.shuffle(ordered)
    total = 0.0
    cumulative: list[float] = []
    for rank in range(1, len(ordered) + 1):
        total += 1.0 / rank
        cumulative.append(total)
    return ordered, cumulative


@dataclass(frozen=True)
class Part:
    """One slice of the data: `part` 0 is the base size, part 1 doubles it (new ids, new rows)."""

    size_bytes: int
    part: int = 0
    seed: int = 20240601

    def write(self, directory: Path) -> dict[str, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed * 10 + self.part)
        words, weights = _vocabulary(random.Random(self.seed))  # one vocabulary for every part
        files: dict[str, Path] = {}
        for table, share in TABLE_SHARES.items():
            path = directory / f"{table}.{self.part}.tsv"
            writer = getattr(self, f"_write_{table}")
            with path.open("w", encoding="utf-8", newline="\n") as out:
                writer(out, int(self.size_bytes * share), rng, words, weights)
            files[table] = path
        return files

    def _first_id(self, per_part: int) -> int:
        return 1 + self.part * per_part

    def _write_orders(self, out: TextIO, budget: int, rng: random.Random, *_: object) -> None:
        write = out.write
        rows = max(1, budget // 112)
        base = self._first_id(10**9)
        lines: list[str] = []
        for number in range(rows):
            created = _EPOCH + timedelta(seconds=(self.part * rows + number) * 17 + rng.randrange(60))
            quantity = rng.randrange(1, 20)
            price = rng.randrange(100, 50_000) / 100
            discount = rng.choice((0, 0, 0, 0.05, 0.1, 0.15, 0.25))
            shipped = (
                (created + timedelta(hours=rng.randrange(2, 240))).strftime("%Y-%m-%d %H:%M:%S")
                if rng.random() < 0.8
                else "\\N"
            )
            lines.append(
                f"{base + number}\t{rng.randrange(1, 250_000)}\t{rng.randrange(1, 8000)}\t{quantity}\t{price:.2f}\t"
                f"{discount:.3f}\t{quantity * price * (1 - discount):.2f}\t{rng.choice(_CURRENCIES)}\t"
                f"{rng.choice(_STATUSES)}\t{created:%Y-%m-%d %H:%M:%S}\t{shipped}\n"
            )
            if len(lines) >= 10_000:
                write("".join(lines))
                lines.clear()
        write("".join(lines))

    def _write_documents(
        self, out: TextIO, budget: int, rng: random.Random, words: list[str], weights: list[float]
    ) -> None:
        write = out.write
        written = 0
        number = 0
        base = self._first_id(10**9)
        choices = rng.choices
        while written < budget:
            title = " ".join(choices(words, cum_weights=weights, k=rng.randrange(3, 10))).capitalize()
            sentences = []
            for _ in range(rng.randrange(2, 40)):
                sentence = " ".join(choices(words, cum_weights=weights, k=rng.randrange(5, 22)))
                sentences.append(sentence.capitalize() + ".")
            tags = ", ".join(f'"{tag}"' for tag in choices(words, cum_weights=weights, k=rng.randrange(1, 6)))
            attributes = (
                f'{{"author": "{rng.choice(words)} {rng.choice(words)}", "lang": "{rng.choice(_LANGUAGES)}", '
                f'"score": {rng.randrange(0, 1000)}, "tags": [{tags}], "published": {str(rng.random() < 0.7).lower()}, '
                f'"revision": {rng.randrange(1, 30)}}}'
            )
            created = _EPOCH + timedelta(minutes=(self.part * 10**6 + number) * 3)
            line = f"{base + number}\t{title}\t{' '.join(sentences)}\t{attributes}\t{created:%Y-%m-%d %H:%M:%S}\n"
            write(line)
            written += len(line)
            number += 1

    def _write_attachments(self, out: TextIO, budget: int, rng: random.Random, *_: object) -> None:
        write = out.write
        written = 0
        number = 0
        base = self._first_id(10**9)
        while written < budget:
            pattern = rng.randbytes(64)
            pieces = [rng.randbytes(64) if rng.random() < 0.5 else pattern for _ in range(rng.randrange(16, 256))]
            content = b"".join(pieces)
            line = f"{base + number}\tfile-{number:08d}.bin\t{rng.choice(_MIME)}\t\\\\x{content.hex()}\n"
            write(line)
            written += len(line)
            number += 1


def load_postgres(connection: Any, files: dict[str, Path]) -> None:
    """COPY each file into its table (the tables exist)."""
    for table, path in files.items():
        with connection.cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN") as copy, path.open("rb") as source:
            while chunk := source.read(1 << 20):
                copy.write(chunk)


def load_mariadb(connection: Any, files: dict[str, Path]) -> None:
    """LOAD DATA LOCAL INFILE each file into its table (the connection has local_infile on)."""
    with connection.cursor() as cursor:
        for table, path in files.items():
            suffix = MARIADB_LOAD_SUFFIX.get(table, "")
            cursor.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {table} {suffix}")
