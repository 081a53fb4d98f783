#!/usr/bin/env bash
# Installs backup-agent as a hardened systemd service (run as root, from the source tree):
#   - a system user and group `backup-agent` (no login, no home),
#   - a virtualenv in /opt/backup-agent with the agent, and /usr/bin/backup-agent pointing into it,
#   - /etc/backup-agent (0750 root:backup-agent) with config.toml (0640) from config.example.toml
#     unless one exists, /var/backups/backup-agent (storage, 0750) and /var/log/backup-agent (0750)
#     owned by the user,
#   - the unit /etc/systemd/system/backup-agent.service, /etc/logrotate.d/backup-agent and
#     /usr/share/doc/backup-agent/operations.md,
#   - `systemctl enable` (not start: edit the config and run `backup-agent doctor` first).
# With --user (no root, no systemd: a PaaS account with cron), everything under your home instead:
#   - a virtualenv in ~/.local/share/backup-agent/venv, linked as ~/.local/bin/backup-agent,
#   - ~/.config/backup-agent/config.toml (0600) with storage ~/.local/share/backup-agent/storage and
#     log ~/.local/state/backup-agent/agent.log (XDG_*_HOME are honoured),
#   - ~/.config/backup-agent/crontab: the two lines that keep `backup-agent run` alive (--cron adds
#     them to your crontab).
#
# Options:
#   --dry-run     print every command instead of running it; changes nothing
#   --no-venv     skip the virtualenv (you provide /usr/bin/backup-agent another way)
#   --no-enable   do not run systemctl (also implied by DESTDIR and when systemd is not running)
#   --start       also start the service now (`systemctl enable --now`)
#   --user        install for the current user only (see above); no root needed
#   --cron        with --user: also add the keep-alive lines to your crontab (`crontab -l` is kept)
# Environment:
#   DESTDIR=DIR   install under DIR (for packaging and tests): no user, no chown, no systemctl
#   PREFIX=/opt/backup-agent   where the virtualenv goes;  PYTHON=python3
#   PACKAGE=...   with --user: what pip installs instead of this source tree (a wheel; or `backup-agent`
#                 with PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR, offline)
set -euo pipefail

dry_run=0; make_venv=1; enable=1; start=0; user_install=0; cron=0
for argument in "$@"; do
  case "$argument" in
    --dry-run) dry_run=1 ;;
    --no-venv) make_venv=0 ;;
    --no-enable) enable=0 ;;
    --start) start=1 ;;
    --user) user_install=1 ;;
    --cron) cron=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $argument (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$cron" -eq 1 ] && [ "$user_install" -eq 0 ]; then
  echo "install.sh: --cron goes with --user (a system install runs under systemd)" >&2
  exit 2
fi

source_dir="$(cd "$(dirname "$0")/.." && pwd)"
destdir="${DESTDIR:-}"
prefix="${PREFIX:-/opt/backup-agent}"
python="${PYTHON:-python3}"
user="backup-agent"
storage="/var/backups/backup-agent"
logs="/var/log/backup-agent"
config_dir="/etc/backup-agent"

run() {
  if [ "$dry_run" -eq 1 ]; then
    printf 'would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [ "$user_install" -eq 1 ]; then
  source "$source_dir/scripts/install-user.sh"
  exit 0
fi

# owner for chown: only on a real install (DESTDIR trees are packaged, the user may not exist)
owned() { [ -z "$destdir" ]; }

if [ -z "$destdir" ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (or use --dry-run, or DESTDIR=DIR)" >&2
  exit 1
fi

# 1. the user
if owned; then
  if ! getent passwd "$user" >/dev/null; then
    run useradd --system --user-group --no-create-home --home-dir "$storage" \
      --shell /usr/sbin/nologin --comment "backup-agent database dumps" "$user"
  fi
fi

# 2. the program
if [ "$make_venv" -eq 1 ]; then
  run "$python" -m venv "$destdir$prefix"
  run "$destdir$prefix/bin/pip" install --quiet --upgrade pip
  run "$destdir$prefix/bin/pip" install --quiet "$source_dir"
  run install -d -m 0755 "$destdir/usr/bin"
  run ln -sfn "$prefix/bin/backup-agent" "$destdir/usr/bin/backup-agent"
fi

# 3. folders, with modes that do not depend on the umask
run install -d -m 0755 "$destdir/etc"
if owned; then
  run install -d -m 0750 -o root -g "$user" "$destdir$config_dir"
  run install -d -m 0750 -o "$user" -g "$user" "$destdir$storage" "$destdir$logs"
else
  run install -d -m 0750 "$destdir$config_dir" "$destdir$storage" "$destdir$logs"
fi

# 4. the config (never overwritten), the unit, logrotate, the docs
if [ ! -e "$destdir$config_dir/config.toml" ]; then
  if owned; then
    run install -m 0640 -o root -g "$user" "$source_dir/config.example.toml" "$destdir$config_dir/config.toml"
  else
    run install -m 0640 "$source_dir/config.example.toml" "$destdir$config_dir/config.toml"
  fi
fi
run install -D -m 0644 "$source_dir/systemd/backup-agent.service" "$destdir/etc/systemd/system/backup-agent.service"
run install -D -m 0644 "$source_dir/systemd/backup-agent.logrotate" "$destdir/etc/logrotate.d/backup-agent"
run install -D -m 0644 "$source_dir/docs/operations.md" "$destdir/usr/share/doc/backup-agent/operations.md"

# 5. systemd
if [ -n "$destdir" ] || [ "$enable" -eq 0 ]; then
  echo "install.sh: not enabling the service (DESTDIR or --no-enable)"
elif [ ! -d /run/systemd/system ] && [ "$dry_run" -eq 0 ]; then
  echo "install.sh: systemd is not running here; enable it later: systemctl enable backup-agent"
else
  run systemctl daemon-reload
  if [ "$start" -eq 1 ]; then
    run systemctl enable --now backup-agent.service
  else
    run systemctl enable backup-agent.service
  fi
fi

cat <<EOF
install.sh: done. Next:
  1. edit $config_dir/config.toml (storage.path = "$storage", jobs, password_file 0640 root:$user)
  2. sudo -u $user backup-agent doctor        # says what to fix, one line per problem
  3. systemctl start backup-agent && backup-agent status
EOF
