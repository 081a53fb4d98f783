"""`python -m agent` runs the same CLI as the `backup-agent` console script."""

from agent.cli import main

raise SystemExit(main())
