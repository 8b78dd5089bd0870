#!/usr/bin/env bash
# Start-up benchmark: time from launching `b24-host serve` with 10 plugins enabled until the
# first event is accepted (200). Builds ten distinct plugins (copies of the test probe under ten
# names) in release mode, once; repeats the start 5 times and prints each time and the median.
#
#   bench/startup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release -q -p b24-host
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/plugins" "$WORK/src"
TARGET="$ROOT/target/startup-plugins"
enabled=""
for i in $(seq 0 9); do
  name="startup-probe-$i"
  crate="$WORK/src/$name"
  mkdir -p "$crate/src"
  cp tests/plugins/probe/src/lib.rs "$crate/src/lib.rs"
  cat > "$crate/Cargo.toml" <<TOML
[package]
name = "$name"
version = "0.1.0"
edition = "2024"
[lib]
crate-type = ["cdylib"]
[dependencies]
b24-plugin-api = { path = "$ROOT/plugin-api" }
libc = "0.2"
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["preserve_order"] }
toml = "0.9"
[workspace]
TOML
  cp Cargo.lock "$crate/Cargo.lock"
  (cd "$crate" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q --offline)
  cp "$TARGET/release/lib${name//-/_}.so" "$WORK/plugins/"
  enabled="$enabled\"$name\", "
  printf '[plugin.%s.settings]\nrecord = "%s.jsonl"\n' "$name" "$name" >> "$WORK/plugin-tables.toml"
done
cat > "$WORK/host.toml" <<TOML
state_dir = "state"
[server]
listen = "127.0.0.1:0"
[admin]
enabled = false
[log]
level = "warn"
[auth.portals]
"a223c6b3710f85df22e9377d6c4f7553" = "51856fefc120afa4b628cc82d3935cce"
[plugins]
dir = "plugins"
enabled = [${enabled%, }]
TOML
cat "$WORK/plugin-tables.toml" >> "$WORK/host.toml"
BODY=$(target/release/b24-host send --print --event ONCRMDEALUSERFIELDUPDATE)
times=()
for run in 1 2 3 4 5; do
  rm -rf "$WORK/state"
  start=$(date +%s%N)
  (cd "$WORK" && exec "$ROOT/target/release/b24-host" serve --config host.toml > out.txt 2> err.txt) &
  pid=$!
  url=""
  while [ -z "$url" ]; do
    url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/out.txt" 2>/dev/null | head -n1)
  done
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/x-www-form-urlencoded' --data-binary "$BODY" "$url")" = 200 ]; do :; done
  end=$(date +%s%N)
  times+=($(( (end - start) / 1000000 )))
  kill -TERM $pid; wait $pid 2>/dev/null || true
done
printf 'start-up to first accepted event with 10 plugins (ms): %s\n' "${times[*]}"
printf '%s\n' "${times[@]}" | sort -n | sed -n 3p | xargs printf 'median: %s ms\n'
