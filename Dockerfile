# syntax=docker/dockerfile:1
# backup-agent as a sidecar or one-container deployment: `backup-agent run` as the main process
# (under tini), a volume for the dumps, a HEALTHCHECK that is `status --check`.
#
# Client tools, and which servers they cover (a dump tool cannot dump a server newer than itself):
#   PostgreSQL: postgresql-client-${PG_MAJOR} from the PGDG apt repository (default 18): dumps
#               servers 9.2 to ${PG_MAJOR}. Build with --build-arg PG_MAJOR=NN for a newer server.
#   MariaDB/MySQL: mariadb-client from Debian bookworm (MariaDB 10.11): MariaDB servers up to 10.11
#               and MySQL 5.7/8.0 (the agent checks the pairing at every run and says when it is wrong).
#   MongoDB: the agent's built-in dumper (mongodump is not packaged by Debian); SQLite: built in.
#   Redis: no tool (the agent reads the snapshot over the replication protocol); redis-server from
#               bookworm (7.0) only for drills, which load snapshots up to RDB version 10 (Redis 7.0).
# Build: docker build -t backup-agent .      Run: see compose.example.yaml and docs/operations.md.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN python -m venv /opt/backup-agent \
    && /opt/backup-agent/bin/pip install --no-compile /src

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG PG_MAJOR=18
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        "postgresql-client-${PG_MAJOR}" mariadb-client redis-server tini tzdata util-linux \
    && apt-get purge -y --auto-remove curl \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version && mariadb-dump --version && redis-server --version

COPY --from=build /opt/backup-agent /opt/backup-agent
RUN ln -s /opt/backup-agent/bin/backup-agent /usr/local/bin/backup-agent \
    && groupadd --system --gid 10001 backup-agent \
    && useradd --system --uid 10001 --gid backup-agent --no-create-home --home-dir /var/backups/backup-agent \
        --shell /usr/sbin/nologin backup-agent \
    && install -d -m 0750 -o backup-agent -g backup-agent /var/backups/backup-agent \
    && install -d -m 0750 -o root -g backup-agent /etc/backup-agent

ENV BACKUP_AGENT_CONFIG=/etc/backup-agent/config.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/backups/backup-agent"]
USER 10001:10001
WORKDIR /var/backups/backup-agent

# Exit 1 when any database has no good backup newer than its max_backup_age (fast: reads the
# volume only). The start period covers the catch-up backup a fresh container runs first.
HEALTHCHECK --interval=5m --timeout=60s --start-period=30m --retries=1 \
    CMD ["backup-agent", "status", "--check"]

# tini is PID 1: it forwards SIGTERM to the agent, which stops its dumps, removes their partial
# files and exits 0 within daemon.shutdown_timeout (give `docker stop` longer: -t 90).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "backup-agent"]
CMD ["run"]
