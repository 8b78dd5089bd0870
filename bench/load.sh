#!/usr/bin/env bash
# The load benchmark: one command, all points measured in the same run on this machine.
#
#   bench/load.sh [SECONDS]        (default 10 s a point, after a 2 s warm-up)
#
# Points: (1) a bare hyper server that reads the body and answers 200; (3) b24-host with the
# durable journal and no plugins; (4) the same with the audit-log plugin and a second plugin
# (the test probe), once with both in-process and once in runner processes (isolation =
# "process", the default). Each with 64 keep-alive connections, then again with a new connection
# per request. Prints requests/s, p50, p99, peak RSS (with the runners' for process mode), the
# ratio of each to (1), and for (4) how long the plugins need after the load stops until every
# backlog is empty.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_POINT=${1:-10}
CONNECTIONS=64

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p b24-host -p b24-bench -p audit-log -p probe
BIN=target/release
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/plugins"
cp "$BIN/libaudit_log.so" "$BIN/libprobe.so" "$WORK/plugins/"
"$BIN/b24-host" send --print --event ONCRMDEALUSERFIELDUPDATE > "$WORK/body.form"
export BODY_FILE="$WORK/body.form"

config() { # $1 = enabled list, $2 = isolation of the plugins (default process)
  local isolation=${2:-process}
  cat <<TOML
state_dir = "state"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[auth.portals]
"a223c6b3710f85df22e9377d6c4f7553" = "51856fefc120afa4b628cc82d3935cce"
[plugins]
dir = "plugins"
enabled = [$1]
[plugin.audit-log]
isolation = "$isolation"
[plugin.audit-log.settings]
path = "audit.jsonl"
[plugin.probe]
isolation = "$isolation"
[plugin.probe.settings]
record = "probe.jsonl"
TOML
}

# Starts a server command in the background; sets PID and URL from its "listening on" line.
start() {
  rm -rf "$WORK/state" "$WORK"/*.jsonl
  : > "$WORK/out.txt" # not the previous server's "listening on" line
  (cd "$WORK" && exec "$@" > "$WORK/out.txt" 2> "$WORK/err.txt") &
  PID=$!
  for _ in $(seq 100); do
    URL=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/out.txt" | head -n1)
    [ -n "$URL" ] && return 0
    sleep 0.05
  done
  echo "server did not start:"; cat "$WORK/err.txt"; exit 1
}

stop() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }

# Peak RSS of the server and of its children (the runners in process mode).
peak_rss_mib() {
  local pid total=0 kib
  for pid in "$PID" $(pgrep -P "$PID" || true); do
    kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  awk -v k="$total" 'BEGIN {printf "%.1f", k/1024}'
}

# Runs wrk; prints "rps p50_ms p99_ms".
measure() { # $1 = close (0/1)
  CLOSE=$1 wrk -t2 -c$CONNECTIONS -d2s -s bench/post.lua "$URL" > /dev/null
  CLOSE=$1 wrk -t2 -c$CONNECTIONS -d"${SECONDS_PER_POINT}s" --latency -s bench/post.lua "$URL" > "$WORK/wrk.txt"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.txt")
  local errors
  errors=$(awk '/Non-2xx/ {print $5}' "$WORK/wrk.txt")
  [ -n "$errors" ] && echo "  (warning: $errors non-2xx answers)" >&2
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

to_ms() { # wrk prints 1.23ms, 456.00us or 1.02s
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}

drain_seconds() {
  local started now
  started=$(date +%s.%N)
  for _ in $(seq 600); do
    if "$BIN/b24-host" journal stats --config "$WORK/host.toml" --json \
        | python3 -c 'import json,sys; sys.exit(0 if all(p["backlog"]==0 for p in json.load(sys.stdin)["plugins"]) else 1)'; then
      now=$(date +%s.%N); awk -v a="$started" -v b="$now" 'BEGIN {printf "%.2f", b-a}'; return
    fi
    sleep 0.1
  done
  echo ">60"
}

printf '%s\n' "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t2 -c$CONNECTIONS, ${SECONDS_PER_POINT}s a point"
printf '%-44s %10s %8s %8s %9s %7s %s\n' point "req/s" "p50 ms" "p99 ms" "RSS MiB" ratio "drain s"
for close in 0 1; do
  mode=$([ "$close" = 1 ] && echo "new connection per request" || echo "keep-alive")
  echo "-- $mode"
  start "$PWD/$BIN/bare-hyper" 127.0.0.1:0
  read -r base p50 p99 < <(measure "$close"); rss=$(peak_rss_mib); stop
  printf '%-44s %10.0f %8s %8s %9s %7s\n' "(1) bare hyper" "$base" "$p50" "$p99" "$rss" "1.00"

  config "" > "$WORK/host.toml"
  start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
  read -r rps p50 p99 < <(measure "$close"); rss=$(peak_rss_mib); stop
  printf '%-44s %10.0f %8s %8s %9s %7.2f\n' "(3) durable journal, no plugins" "$rps" "$p50" "$p99" "$rss" "$(awk -v a="$rps" -v b="$base" 'BEGIN {print a/b}')"

  for isolation in in-process process; do
    config '"audit-log", "probe"' "$isolation" > "$WORK/host.toml"
    start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
    read -r rps p50 p99 < <(measure "$close"); drain=$(drain_seconds); rss=$(peak_rss_mib); stop
    printf '%-44s %10.0f %8s %8s %9s %7.2f %s\n' "(4) journal + audit-log + probe, $isolation" "$rps" "$p50" "$p99" "$rss" "$(awk -v a="$rps" -v b="$base" 'BEGIN {print a/b}')" "$drain"
  done
done
