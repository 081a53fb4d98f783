#!/usr/bin/env bash
# Installs the Debian packages the agent and its tests need, when run as root and they are missing.
# Not root (a laptop): prints what is missing and carries on; server tests then skip with a reason.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
pg_server_bin() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }

have pg_dump || missing+=(postgresql-client)
pg_server_bin || missing+=(postgresql)
have mariadb-dump || have mysqldump || missing+=(mariadb-client)
have mariadbd || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
have redis-server || missing+=(redis-server)  # tests start throwaway servers; drills start one too
have redis-check-rdb || missing+=(redis-tools)  # the reference RDB checker in tests
have ionice || missing+=(util-linux)
have zstd || missing+=(zstd)  # make bench: the reference pipeline `dump | zstd -3 -T0`
have faketime || missing+=(faketime)
have systemd-analyze || missing+=(systemd)
have logrotate || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
  echo "install-system-deps: missing Debian packages: ${missing[*]} (run as root, or install them; server tests skip without them)" >&2
  exit 0
fi
echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps apt from starting the packaged servers: tests start their own throwaway ones
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}"
