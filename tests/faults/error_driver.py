"""Run the agent's command line with a bug planted in the PostgreSQL engine.

    python error_driver.py DATABASE [agent arguments...]

The dump of DATABASE raises a RuntimeError (not an AgentError: what a bug or a library would
raise) from a frame whose locals hold the revealed password, so a traceback that showed locals,
or an error message built carelessly, would leak it. Every other database dumps normally.
"""

from __future__ import annotations

import sys
from typing import Any

from agent import cli
from agent.engines.base import DumpDetails, DumpTarget, Sink
from agent.engines.postgres.engine import PostgresEngine


def main() -> int:
    broken, *arguments = sys.argv[1:]
    real_dump = PostgresEngine.dump

    def dump(self: PostgresEngine, target: DumpTarget, sink: Sink) -> DumpDetails:
        if target.database != broken:
            return real_dump(self, target, sink)
        secret = self.job.password.read()
        revealed: Any = secret.reveal() if secret is not None else None
        raise RuntimeError(f"a planted bug while dumping {target.database!r} ({len(revealed or '')} characters)")

    PostgresEngine.dump = dump  # type: ignore[method-assign]
    return cli.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
