"""backup-agent: scheduled logical database dumps kept as immutable, checksummed local files."""

__version__ = "0.1.0"
