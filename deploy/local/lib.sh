# Shared helpers for the local service scripts (sourced, not run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="${EVENTPIPE_LOCAL_DIR:-$ROOT/.local}"
# Data, logs and the local ClickHouse's passwords live here: the owner's only.
mkdir -p "$LOCAL" && chmod 700 "$LOCAL"

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive PIDFILE -> 0 when the pid in the file names a live process.
pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

port_open() {  # port_open HOST PORT
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# wait_until DEADLINE_SECONDS LOGFILE DESCRIPTION COMMAND... : polls COMMAND every 0.25 s.
wait_until() {
  local secs=$1 deadline=$(( $(date +%s) + $1 )) logfile=$2 what=$3; shift 3
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$what not ready after ${secs}s; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      die "$what did not become ready; see $logfile"
    fi
    sleep 0.25
  done
}

# stop_pid PIDFILE NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pidfile=$1 name=$2 pid i
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; log "$name not running"; return 0; fi
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in 30 s; killing"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "$name stopped"
}

# write_users_xml FILE MAX_MEMORY: the one local ClickHouse user, passwordless, loopback only.
write_users_xml() {
  cat > "$1" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>$2</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
}
