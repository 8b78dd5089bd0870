#!/usr/bin/env bash
# The load benchmark: one command, all points measured in the same run on this machine.
#
#   bench/load.sh [SECONDS] [POINTS]   (default 10 s a point, after a 2 s warm-up; POINTS
#                                       e.g. "5" measures (1), then only (5); default all)
#
# Points: (1) a bare hyper server that reads the body and answers 200; (3) b24-host with the
# durable journal and no plugins; (4) the same with the audit-log plugin and a second plugin
# (the test probe), once with both in-process and once in runner processes (isolation =
# "process", the default). Each with 64 keep-alive connections, then again with a new connection
# per request. Prints requests/s, p50, p99, peak RSS (with the runners' for process mode), the
# ratio of each to (1), the server's CPU per request (user + system time of the server and its
# runner processes from /proc, over the measured run and, with plugins, until every backlog is
# empty, divided by the requests answered) and its ratio to (1)'s, and for (4) how long the
# plugins need after the load stops until every backlog is empty.
# Point (5), keep-alive only: b24-host on the NATS backend ([journal] backend = "nats"), on a
# 1-node (R1) and a 3-node (R3) JetStream cluster on loopback started here, without and with the
# two plugins; its CPU column is the host's, the cluster's own CPU per request follows it.
# Point (6), keep-alive only: intake against a backlog (issue 20). The embedded journal with one
# enabled plugin that has no library ("ghost": its events wait in the journal, as for a plugin
# whose library is missing or whose downstream is down), on an empty journal, then on one that
# already holds BACKLOG (default 100000) events pending for it (written by the `backlog` bin
# before the host starts); then the same backlog left by a plugin no longer enabled. ROUNDS=N
# (default 1) measures the three N times, interleaved, so that the machine's drift over the
# run falls on each alike.
# Point (7): how fast each kind of plugin drains a backlog (issue 22): events are journaled for
# plugin `probe` while it cannot start (an exec command that does not exist), then the host is
# started again with `probe` as (a) the Rust probe in a runner, (b) a PHP exec plugin
# (bench/exec-plugin.php) with window = 1, (c) the same with window = 32, (d) an http plugin
# forwarding to the bare hyper server (1), (e) the same with concurrency = 8; each prints the
# events drained, events/s (from the host's start to an empty backlog) and CPU per event (the
# host and every process under it), and the ratio of its rate to (a)'s.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_POINT=${1:-10}
POINTS=${2:-34567}
BACKLOG=${BACKLOG:-100000}
want() { [[ "$POINTS" == *"$1"* ]]; }
CONNECTIONS=64

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p b24-host -p b24-bench -p audit-log -p probe
. scripts/lib/nats-server.sh
BIN=target/release
ROOT=$PWD
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/plugins"
cp "$BIN/libaudit_log.so" "$BIN/libprobe.so" "$WORK/plugins/"
"$BIN/b24-host" send --print --event ONCRMDEALUSERFIELDUPDATE > "$WORK/body.form"
export BODY_FILE="$WORK/body.form"

config() { # $1 = enabled list, $2 = isolation of the plugins (default process), $3 = [journal] lines
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
${3:-}
TOML
}

# Starts a server command in the background; sets PID and URL from its "listening on" line.
# With PREFILL=N, the state folder first gets a journal with N events pending for "ghost".
start() {
  rm -rf "$WORK/state" "$WORK"/*.jsonl
  if [ "${PREFILL:-0}" -gt 0 ]; then
    "$BIN/backlog" --state "$WORK/state" --body "$WORK/body.form" --pending "$PREFILL" --plugin ghost 2> "$WORK/backlog.txt"
  fi
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

# CPU ticks (user + system) used so far by the given processes and by their children.
ticks() {
  local pid total=0 t
  for pid in "$@" $(for p in "$@"; do pgrep -P "$p" || true; done); do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

# Microseconds of CPU per request: $1 ticks used, $2 requests.
cpu_us() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }'; }

NATS_PIDS=()
NATS_MONITORS=()
# Messages the cluster's nodes have received so far (clients' and routes', from /varz): a
# figure of the work per request that the machine's noise does not move.
nats_msgs() {
  local total=0 port n
  for port in "${NATS_MONITORS[@]}"; do
    n=$(curl -sf "http://127.0.0.1:$port/varz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["in_msgs"])' || echo 0)
    total=$((total + n))
  done
  echo "$total"
}
# Starts an N-node JetStream cluster on free loopback ports; sets NATS_URLS (TOML list).
nats_cluster() { # $1 = nodes
  local n=$1 i ports=() routes="" urls=""
  [ -n "${B24_NATS_SERVER:-}" ] || { echo "no nats-server: point (5) skipped" >&2; return 1; }
  read -r -a ports < <(python3 -c 'import socket
s=[socket.socket() for _ in range(3*'"$n"')]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
  for i in $(seq 0 $((n - 1))); do routes="$routes\"nats-route://127.0.0.1:${ports[$((3*i+1))]}\","; done
  for i in $(seq 0 $((n - 1))); do
    local dir="$WORK/nats/n$i"; mkdir -p "$dir"
    {
      echo "server_name: n$i"; echo "listen: \"127.0.0.1:${ports[$((3*i))]}\""
      echo "http: \"127.0.0.1:${ports[$((3*i+2))]}\""
      echo "jetstream { store_dir: \"$dir\", max_memory_store: 256MB, max_file_store: 8GB }"
      if [ "$n" -gt 1 ]; then
        echo "cluster { name: bench, listen: \"127.0.0.1:${ports[$((3*i+1))]}\", routes: [${routes%,}] }"
      fi
    } > "$dir.conf"
    "$B24_NATS_SERVER" -c "$dir.conf" > "$dir.log" 2>&1 &
    NATS_PIDS+=($!)
    NATS_MONITORS+=("${ports[$((3*i+2))]}")
    urls="$urls\"nats://127.0.0.1:${ports[$((3*i))]}\", "
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 200); do
      curl -sf "http://127.0.0.1:${ports[$((3*i+2))]}/healthz" > /dev/null && break
      sleep 0.05
    done
  done
  NATS_URLS="[${urls%, }]"
}
nats_stop() { kill "${NATS_PIDS[@]}" 2>/dev/null || true; wait "${NATS_PIDS[@]}" 2>/dev/null || true; NATS_PIDS=(); NATS_MONITORS=(); rm -rf "$WORK/nats"; }

# Peak RSS of the server and of its children (the runners in process mode).
peak_rss_mib() {
  local pid total=0 kib
  for pid in "$PID" $(pgrep -P "$PID" || true); do
    kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  awk -v k="$total" 'BEGIN {printf "%.1f", k/1024}'
}

# Runs wrk; prints "rps p50_ms p99_ms"; leaves the requests answered in $WORK/requests and the
# server's CPU ticks at the start of the measured run in $WORK/ticks0.
measure() { # $1 = close (0/1)
  CLOSE=$1 wrk -t2 -c$CONNECTIONS -d2s -s bench/post.lua "$URL" > /dev/null
  ticks "$PID" > "$WORK/ticks0"; ticks "${NATS_PIDS[@]}" > "$WORK/nats_ticks0"
  [ ${#NATS_MONITORS[@]} -gt 0 ] && nats_msgs > "$WORK/nats_msgs0"
  CLOSE=$1 wrk -t2 -c$CONNECTIONS -d"${SECONDS_PER_POINT}s" --latency -s bench/post.lua "$URL" > "$WORK/wrk.txt"
  awk '/requests in/ {print $1}' "$WORK/wrk.txt" > "$WORK/requests"
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

# CPU per request of the point just measured (call before stop): host, then the cluster's.
point_cpu() {
  local n; n=$(cat "$WORK/requests")
  cpu_us $(( $(ticks "$PID") - $(cat "$WORK/ticks0") )) "$n"
  if [ ${#NATS_PIDS[@]} -gt 0 ]; then
    printf ' '; cpu_us $(( $(ticks "${NATS_PIDS[@]}") - $(cat "$WORK/nats_ticks0") )) "$n"
    printf ' '; awk -v a="$(nats_msgs)" -v b="$(cat "$WORK/nats_msgs0")" -v n="$n" 'BEGIN {printf "%.1f", (a-b)/n}'
  fi
  echo
}

row() { # name rps p50 p99 rss cpu [drain] [nats cpu] [nats msgs]
  printf '%-46s %9.0f %7s %7s %8s %6.2f %7s %6.1f %7s %s\n' "$1" "$2" "$3" "$4" "$5" \
    "$(awk -v a="$2" -v b="$base" 'BEGIN {print a/b}')" "$6" \
    "$(awk -v a="$6" -v b="$base_cpu" 'BEGIN {print (b > 0 ? a/b : 0)}')" "${7:--}" "${8:+nats $8 us/req, $9 msgs/req}"
}

printf '%s\n' "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t2 -c$CONNECTIONS, ${SECONDS_PER_POINT}s a point"
printf '%-46s %9s %7s %7s %8s %6s %7s %6s %7s\n' point "req/s" "p50 ms" "p99 ms" "RSS MiB" ratio "CPU us" "x(1)" "drain s"
for close in 0 1; do
  [ "$close" = 1 ] && ! want 3 && ! want 4 && break
  mode=$([ "$close" = 1 ] && echo "new connection per request" || echo "keep-alive")
  echo "-- $mode"
  start "$PWD/$BIN/bare-hyper" 127.0.0.1:0
  read -r base p50 p99 < <(measure "$close"); base_cpu=$(point_cpu); rss=$(peak_rss_mib); stop
  row "(1) bare hyper" "$base" "$p50" "$p99" "$rss" "$base_cpu"

  if want 3; then
    config "" > "$WORK/host.toml"
    start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
    read -r rps p50 p99 < <(measure "$close"); cpu=$(point_cpu); rss=$(peak_rss_mib); stop
    row "(3) durable journal, no plugins" "$rps" "$p50" "$p99" "$rss" "$cpu"
  fi

  want 4 && for isolation in in-process process; do
    config '"audit-log", "probe"' "$isolation" > "$WORK/host.toml"
    start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
    read -r rps p50 p99 < <(measure "$close"); drain=$(drain_seconds); cpu=$(point_cpu); rss=$(peak_rss_mib); stop
    row "(4) journal + audit-log + probe, $isolation" "$rps" "$p50" "$p99" "$rss" "$cpu" "$drain"
  done

  [ "$close" = 0 ] || continue
  if want 6; then
    for run in $(for _ in $(seq "${ROUNDS:-1}"); do echo "0:ghost $BACKLOG:ghost $BACKLOG:none"; done); do
      run=${run/:/ }
      read -r prefill plugin <<< "$run"
      enabled=$([ "$plugin" = ghost ] && echo '"ghost"' || echo '')
      config "$enabled" > "$WORK/host.toml"
      PREFILL=$prefill start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
      read -r rps p50 p99 < <(measure "$close"); cpu=$(point_cpu); rss=$(peak_rss_mib); stop
      name=$([ "$plugin" = ghost ] && echo "ghost enabled, no library" || echo "ghost's rows, not enabled")
      row "(6) $prefill pending, $name" "$rps" "$p50" "$p99" "$rss" "$cpu"
    done
  fi
  want 5 || continue
  for nodes in 1 3; do
    nats_cluster "$nodes" || break
    for plugins in '' '"audit-log", "probe"'; do
      journal=$(printf '[journal]\nbackend = "nats"\n[journal.nats]\nurls = %s\nreplicas = %s\nstream = "BENCH%s"\n' "$NATS_URLS" "$nodes" "$RANDOM")
      config "$plugins" process "$journal" > "$WORK/host.toml"
      start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
      read -r rps p50 p99 < <(measure "$close")
      drain=-; [ -n "$plugins" ] && drain=$(drain_seconds)
      read -r cpu ncpu nmsgs < <(point_cpu); rss=$(peak_rss_mib); stop
      row "(5) nats R$nodes$([ -n "$plugins" ] && echo ", audit-log + probe" || echo ", no plugins")" "$rps" "$p50" "$p99" "$rss" "$cpu" "$drain" "$ncpu" "$nmsgs"
    done
    nats_stop
  done
done

# CPU ticks (user + system) of the given processes and of all their descendants.
tree_ticks() {
  local pid total=0 t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + ${t:-0} + $(tree_ticks $(pgrep -P "$pid" || true))))
  done
  echo "$total"
}

backlog() {
  "$BIN/b24-host" journal stats --config "$WORK/host.toml" --json \
    | python3 -c 'import json,sys; print(sum(p["backlog"] for p in json.load(sys.stdin)["plugins"]))'
}

drain_row() { # $1 name, $2 the [plugin.probe] tables that drain
  # Journal a backlog for `probe` while it cannot start.
  config '"probe"' process > "$WORK/host.toml"
  sed -i '/^\[plugin.probe\]/,$d' "$WORK/host.toml"
  printf '[plugin.probe]\nkind = "exec"\ncommand = ["/nonexistent"]\nevents = ["*"]\n' >> "$WORK/host.toml"
  start "$PWD/$BIN/b24-host" serve --config "$WORK/host.toml"
  CLOSE=0 wrk -t2 -c$CONNECTIONS -d"${FILL_SECONDS:-4}s" -s bench/post.lua "$URL" > /dev/null
  local events; events=$(backlog)
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  config '"probe"' process > "$WORK/host.toml"
  sed -i '/^\[plugin.probe\]/,$d' "$WORK/host.toml"
  printf '%s\n' "$2" >> "$WORK/host.toml"
  : > "$WORK/out.txt"
  local t0 t1 left
  t0=$(date +%s.%N)
  (cd "$WORK" && exec "$ROOT/$BIN/b24-host" serve --config "$WORK/host.toml" > "$WORK/out.txt" 2> "$WORK/err.txt") &
  PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$WORK/out.txt" && break; sleep 0.05; done
  for _ in $(seq 1200); do
    left=$(backlog 2>/dev/null || echo x)
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  local used; used=$(tree_ticks "$PID")
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  local rate; rate=$(awk -v n="$events" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n/(b-a)}')
  [ -z "${drain_base:-}" ] && drain_base=$rate
  printf '%-46s %9s %9s %8s %10s %6.2f\n' "$1" "$events" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b-a}')" "$rate" \
    "$(cpu_us "$used" "$events")" "$(awk -v a="$rate" -v b="$drain_base" 'BEGIN {print a/b}')"
}

if want 7; then
  command -v php >/dev/null || { apt-get update -qq && apt-get install -y -qq php-cli >/dev/null; }
  cp bench/exec-plugin.php "$WORK/exec-plugin.php"
  echo "-- (7) draining a backlog: plugin kinds"
  printf '%-46s %9s %9s %8s %10s %6s\n' point events seconds "events/s" "CPU us/ev" "x(7a)"
  drain_base=
  drain_row "(7a) Rust probe in a runner" "$(printf '[plugin.probe]\n[plugin.probe.settings]\nrecord = "probe.jsonl"')"
  for window in 1 32; do
    drain_row "(7$([ $window = 1 ] && echo b || echo c)) PHP exec plugin, window $window" \
      "$(printf '[plugin.probe]\nkind = "exec"\ncommand = ["php", "exec-plugin.php"]\nevents = ["*"]\nwindow = %s' "$window")"
  done
  (cd "$WORK" && exec "$ROOT/$BIN/bare-hyper" 127.0.0.1:0 > "$WORK/target.txt" 2>&1) &
  TARGET=$!
  for _ in $(seq 100); do grep -q "listening on" "$WORK/target.txt" && break; sleep 0.05; done
  target_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/target.txt" | head -n1)
  drain_row "(7d) http plugin to the bare hyper server" \
    "$(printf '[plugin.probe]\nkind = "http"\nurl = "%s"\nevents = ["*"]' "$target_url")"
  drain_row "(7e) the same, concurrency 8" \
    "$(printf '[plugin.probe]\nkind = "http"\nurl = "%s"\nevents = ["*"]\nconcurrency = 8' "$target_url")"
  kill "$TARGET" 2>/dev/null || true
fi
