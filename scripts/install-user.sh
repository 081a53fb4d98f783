# The user install of scripts/install.sh (`install.sh --user`, `make install-user`); sourced by it, which
# provides run(), dry_run, make_venv, cron, python and source_dir. No root, no systemd: everything lives
# under the home, and cron keeps `backup-agent run` alive (one daemon per storage through its lock).

if [ -z "${HOME:-}" ] || [ "${HOME#/}" = "$HOME" ]; then
  echo "install.sh --user: HOME must be an absolute path (it is '${HOME:-}')" >&2
  exit 1
fi
absolute_or() { case "${1:-}" in /*) printf '%s' "$1" ;; *) printf '%s' "$2" ;; esac; }
data_dir="$(absolute_or "${XDG_DATA_HOME:-}" "$HOME/.local/share")/backup-agent"
config_dir="$(absolute_or "${XDG_CONFIG_HOME:-}" "$HOME/.config")/backup-agent"
state_dir="$(absolute_or "${XDG_STATE_HOME:-}" "$HOME/.local/state")/backup-agent"
bin_dir="$HOME/.local/bin"
prefix="$data_dir/venv"
storage="$data_dir/storage"
log_file="$state_dir/agent.log"
config="$config_dir/config.toml"
program="$prefix/bin/backup-agent"

case "$data_dir$config_dir" in
  *%*|*$'\n'*) echo "install.sh --user: a '%' or a newline in $data_dir or $config_dir cannot go in a crontab" >&2; exit 1 ;;
esac

# 1. folders, private whatever the umask (the storage folder is 0750, as the agent makes it)
run install -d -m 0700 "$data_dir" "$config_dir" "$state_dir"
run install -d -m 0750 "$storage"
run install -d -m 0755 "$bin_dir"

# 2. the program: a virtualenv the user owns. PACKAGE (default: this source tree) is what pip installs:
#    a built wheel, or `backup-agent` from PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 on a machine without an index.
if [ "$make_venv" -eq 1 ]; then
  run "$python" -m venv "$prefix"
  run "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGE:-$source_dir}"
  run ln -sfn "$program" "$bin_dir/backup-agent"
fi

# 3. the config (never overwritten): the example with the system paths moved under the home
if [ ! -e "$config" ]; then
  if [ "$dry_run" -eq 1 ]; then
    echo "would write: $config (0600) from config.example.toml: storage.path = \"$storage\", log.file = \"$log_file\""
  else
    example="$(cat "$source_dir/config.example.toml")"
    example="${example//\/var\/backups\/backup-agent/"$storage"}"
    example="${example//\/var\/log\/backup-agent\/agent.log/"$log_file"}"
    example="${example//\/etc\/backup-agent\//"$config_dir/"}"
    (umask 077 && printf '%s\n' "$example" > "$config")
  fi
fi

# 4. the crontab lines: start `run` at boot and every minute; a second `run` finds the daemon's lock
#    and exits 75 at once without a word, so exactly one daemon runs and a crashed one is back
#    within a minute. nice/ionice as the systemd unit does: the agent compresses in its own process.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
command_line="$(quote "$program") -c $(quote "$config") run"
if command -v ionice >/dev/null 2>&1; then
  command_line="ionice -t -c 2 -n 7 $command_line"
fi
command_line="nice -n 10 $command_line"
marker="# backup-agent: keep one daemon running"
crontab_lines="$marker (a second start exits 75 at once, silently)
@reboot $command_line
* * * * * $command_line"
if [ "$dry_run" -eq 1 ]; then
  echo "would write: $config_dir/crontab (0600):"
  printf '%s\n' "$crontab_lines" | sed 's/^/    /'
else
  (umask 077 && printf '%s\n' "$crontab_lines" > "$config_dir/crontab")
fi

if [ "$cron" -eq 1 ]; then
  if ! command -v crontab >/dev/null 2>&1; then
    echo "install.sh --user: no crontab command here; add the lines in $config_dir/crontab another way" >&2
    exit 1
  fi
  current="$(crontab -l 2>/dev/null || true)"
  if printf '%s\n' "$current" | grep -qF "$marker"; then
    echo "install.sh: your crontab already has the backup-agent lines; left as it is"
  elif [ "$dry_run" -eq 1 ]; then
    echo "would add the lines above to your crontab (crontab -l is kept)"
  else
    printf '%s\n%s\n' "$current" "$crontab_lines" | sed '/./,$!d' | crontab -
    echo "install.sh: added to your crontab (crontab -l shows it)"
  fi
fi

cron_step="(crontab -l 2>/dev/null; cat $(quote "$config_dir/crontab")) | crontab -   # or: install.sh --user --cron"
[ "$cron" -eq 1 ] && cron_step="(done: crontab -l)"
cat <<EOF
install.sh --user: done. Next:
  1. edit $config (storage.path = "$storage", jobs, password_file 0600 in $config_dir)
  2. $bin_dir/backup-agent doctor       # says what to fix, one line per problem
  3. $cron_step
  4. $bin_dir/backup-agent status       # within a minute the daemon runs; after its first backup: STATUS OK
EOF
