# Sourced by scripts/test: finds or installs promtool and exports B24_PROMTOOL, for the alert
# rules' tests (tests/tests/e2e/monitoring.rs). Prometheus' own releases are not reachable
# from CI, Debian's packages are: promtool is taken out of Debian's `prometheus` package
# (downloaded with apt-get, unpacked into target/promtool/, never installed, so no Prometheus
# server is set up or started). Pinned to the 2.42.0 line of Debian 12 (bookworm); another
# Debian's version is used with a notice. Without it B24_PROMTOOL stays unset (the tests then
# skip loudly, except under CI=true, where they fail).
PROMTOOL_VERSION=2.42.0
if [ -z "${B24_PROMTOOL:-}" ]; then
  promtool_dir="${CARGO_TARGET_DIR:-$PWD/target}/promtool"
  promtool_bin="$promtool_dir/promtool"
  if ! "$promtool_bin" --version >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    mkdir -p "$promtool_dir"
    (
      cd "$promtool_dir"
      rm -f prometheus_*.deb
      if ! apt-get download prometheus >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1
        apt-get download prometheus >/dev/null 2>&1 || true
      fi
      for deb in prometheus_*.deb; do
        [ -f "$deb" ] || continue
        dpkg-deb --fsys-tarfile "$deb" | tar -x -O ./usr/bin/promtool > promtool.new \
          && chmod 755 promtool.new && mv promtool.new promtool
        rm -f "$deb"
      done
    ) || true
  fi
  if "$promtool_bin" --version >/dev/null 2>&1; then
    if ! "$promtool_bin" --version 2>&1 | head -n 1 | grep -q "version $PROMTOOL_VERSION"; then
      echo "promtool: expected $PROMTOOL_VERSION, using $("$promtool_bin" --version 2>&1 | head -n 1)" >&2
    fi
    export B24_PROMTOOL="$promtool_bin"
  elif command -v promtool >/dev/null 2>&1; then
    B24_PROMTOOL="$(command -v promtool)"
    export B24_PROMTOOL
  else
    echo "promtool: not found and could not be taken from Debian's prometheus package" >&2
  fi
fi
