"""Rows per table counted from the dump's own INSERT statements as they stream by (no second scan).

mariadb-dump/mysqldump write each table's data as extended inserts, `INSERT INTO `t` VALUES
(1,'a'),(2,'b');`, on one line (MySQL, older MariaDB) or one row per line (MariaDB 10.11).
The dump tools escape every newline inside a string (`\\n`, mysql_real_escape_string), so a raw
newline is always outside a string. A row per line (the head line ends at `VALUES`) is therefore
counted as its newlines up to the first `;` before a newline, plus the row that `;` ends: C-speed
`bytes.count`/`find` with no string to skip. On one line, every `(` outside a quoted string up to
the statement's `;` opens one row (values are numbers, NULL, quoted strings and, with --hex-blob,
0x literals); a regular expression steps over whole strings and another removes them before the
`(` are counted, both in C. The state (inside a string, a pending backslash, the head of a line,
a `;` at a chunk's end) carries across chunks, so a chunk may end anywhere; only
a line's first bytes are ever held.
Tables come from the `-- Dumping data for table` comments (so an empty table counts 0) and from
the INSERT targets; lines inside `DELIMITER ;;` blocks (trigger and routine bodies) are never data.
"""

from __future__ import annotations

import re

from agent.engines.base import TrailerCheck

_HEAD_LIMIT = 4096  # an INSERT's head ("INSERT INTO `name` VALUES ") is far shorter
_INSERT = re.compile(rb"(?:INSERT(?: IGNORE)?|REPLACE) INTO `((?:[^`]|``)+)`(?: \([^)]*\))? VALUES(?: |\Z)")
_DUMPING = re.compile(rb"-- Dumping data for table `((?:[^`]|``)+)`\s*$")
_INSERT_STARTS = (b"INSERT ", b"REPLACE ")
_ROUTINES_BEGIN = b"DELIMITER ;;"
_ROUTINES_END = b"DELIMITER ;"
_QUOTE = ord("'")
_BACKSLASH = ord("\\")
_NEWLINE = ord("\n")
_SEMICOLON_TRIES = 8  # `;` inside strings before _statement_end switches to the two-byte search
# a quoted string, escapes included (possessive: no backtracking on a long value)
_STRING_LITERAL = rb"'[^'\\]*+(?:\\.[^'\\]*+)*+'"
# an INSERT's values up to (not including) its `;` or the start of a string the chunk cuts
_VALUES_RUN = re.compile(rb"(?:[^';]++|" + _STRING_LITERAL + rb")*+", re.DOTALL)
_WHOLE_STRINGS = re.compile(_STRING_LITERAL, re.DOTALL)

# states
_LINE_HEAD = 0  # reading a line's first bytes to tell what it is
_SKIP_LINE = 1  # a line that is not data: pass to its newline
_VALUES = 2  # an INSERT's values, outside a string
_STRING = 3  # inside a quoted string of an INSERT's values
_ROW_LINES = 4  # an INSERT's values, a row per line


def _name(raw: bytes) -> str:
    return raw.replace(b"``", b"`").decode("utf-8", "replace")


def _statement_end(data: bytes, index: int) -> int:
    """The first `;` followed by a newline at or after `index`, or -1: a one-byte search (memchr) while
    the `;` it finds inside strings are few, a two-byte search once they are many."""
    for _ in range(_SEMICOLON_TRIES):
        semicolon = data.find(b";", index)
        if semicolon < 0 or data.startswith(b"\n", semicolon + 1):
            return semicolon
        index = semicolon + 1
    return data.find(b";\n", index)


class InsertRowCounter:
    """Counts the rows of each table's INSERT statements in a mysqldump/mariadb-dump stream."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.complete = True  # False once a line looked like data this counter could not read
        self._state = _LINE_HEAD
        self._head = b""
        self._table = ""
        self._rows = 0  # rows of the current INSERT so far
        self._escape = False  # the last byte of the previous chunk was an unpaired backslash in a string
        self._in_routines = False
        self._semicolon_pending = False  # a row per line: the previous chunk ended with `;`

    def feed(self, data: bytes) -> None:
        index, end = 0, len(data)
        while index < end:
            state = self._state
            if state == _ROW_LINES:
                index = self._row_lines(data, index)
            elif state == _VALUES:
                index = self._values(data, index)
            elif state == _STRING:
                index = self._string(data, index)
            elif state == _SKIP_LINE:
                newline = data.find(b"\n", index)
                if newline < 0:
                    return
                index = newline + 1
                self._state = _LINE_HEAD
            else:
                index = self._line_head(data, index)

    def finish(self) -> None:
        """End of stream: an INSERT without its end is not counted as whole."""
        if self._state in (_VALUES, _STRING, _ROW_LINES):
            self.complete = False
        elif self._state == _LINE_HEAD and self._head and self._decide(self._head, whole=True) is not None:
            self.complete = False  # the stream ends inside an INSERT's first bytes

    # --- lines -------------------------------------------------------------------------------------
    def _line_head(self, data: bytes, index: int) -> int:
        newline = data.find(b"\n", index, index + _HEAD_LIMIT)
        stop = newline if newline >= 0 else min(len(data), index + _HEAD_LIMIT)
        head = self._head + data[index:stop]
        if newline < 0 and len(head) < _HEAD_LIMIT and stop == len(data):
            self._head = head  # wait for more of the line
            return stop
        self._head = b""
        rest = self._decide(head, whole=newline >= 0)
        if rest is None:  # not data
            if newline >= 0:
                return newline + 1
            self._state = _SKIP_LINE
            return stop
        self._rows = 0
        if newline >= 0 and rest == len(head):  # the head line ends at VALUES: a row per line follows
            self._state = _ROW_LINES
            self._semicolon_pending = False
            return newline + 1
        # an INSERT: its values begin inside `head` (a line's first bytes, so this copy stays small)
        self._state = _VALUES
        self.feed(head[rest:])
        return stop

    def _decide(self, head: bytes, *, whole: bool) -> int | None:
        """Where an INSERT's values start in `head`, or None for any other line (noting comments)."""
        line = head.rstrip(b"\r\n") if whole else head
        if line == _ROUTINES_BEGIN:
            self._in_routines = True
        elif line == _ROUTINES_END:
            self._in_routines = False
        if self._in_routines:
            return None
        if line.startswith(_INSERT_STARTS):
            match = _INSERT.match(head)
            if match is None:
                self.complete = False
                return None
            self._table = _name(match[1])
            return match.end()
        if whole and line.startswith(b"-- Dumping data for table "):
            dumping = _DUMPING.match(line)
            if dumping:
                self.counts.setdefault(_name(dumping[1]), 0)
        return None

    # --- values --------------------------------------------------------------------------------------
    def _end_statement(self) -> None:
        self.counts[self._table] = self.counts.get(self._table, 0) + self._rows

    def _row_lines(self, data: bytes, index: int) -> int:
        """A row per line: every newline before the statement's `;` ends a row, and the `;` ends the last."""
        if self._semicolon_pending:
            self._semicolon_pending = False
            if data[index] == _NEWLINE:
                self._rows += 1
                self._end_statement()
                self._state = _LINE_HEAD
                return index + 1
        end = _statement_end(data, index)
        stop = end if end >= 0 else len(data)
        self._rows += data.count(b"\n", index, stop)  # one byte: memchr speed
        if end >= 0:
            self._rows += 1
            self._end_statement()
            self._state = _LINE_HEAD
            return end + 2
        self._semicolon_pending = data[-1] == ord(";")
        return len(data)

    def _values(self, data: bytes, index: int) -> int:
        """One line of rows: step over whole strings in C, then count the `(` left outside them."""
        run = _VALUES_RUN.match(data, index)
        stop = run.end() if run else index  # `*+` matches at least the empty string
        self._rows += _WHOLE_STRINGS.sub(b"", data[index:stop]).count(b"(")
        if stop == len(data):
            return stop
        if data[stop] == ord(";"):  # the statement's end; the rest of its line is not data
            self._end_statement()
            self._state = _SKIP_LINE
            return stop + 1
        self._state = _STRING  # a string the chunk cuts: find its end byte by byte from here
        return stop + 1

    def _string(self, data: bytes, index: int) -> int:
        """Skip to just after the string's closing quote (or the chunk's end)."""
        end = len(data)
        if self._escape:
            self._escape = False
            index += 1
        while index < end:
            quote = data.find(b"'", index)
            if quote < 0:
                run = end
                while run > index and data[run - 1] == _BACKSLASH:
                    run -= 1
                self._escape = (end - run) % 2 == 1
                return end
            start = quote
            while start > index and data[start - 1] == _BACKSLASH:
                start -= 1
            if (quote - start) % 2 == 0:
                self._state = _VALUES
                return quote + 1
            index = quote + 1
        return end


class SqlDumpCheck(TrailerCheck):
    """The SQL dump's completion line, and its rows per table counted on the way."""

    def __init__(self, marker: bytes, what: str) -> None:
        super().__init__(marker, what)
        self._counter = InsertRowCounter()

    def feed(self, data: bytes) -> None:
        super().feed(data)
        self._counter.feed(data)

    def finish(self) -> None:
        super().finish()
        self._counter.finish()

    def row_counts(self) -> dict[str, int] | None:
        return dict(self._counter.counts) if self._counter.complete else None
