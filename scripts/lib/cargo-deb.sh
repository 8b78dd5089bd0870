# Sourced by scripts/package and scripts/test: cargo-deb at the pinned version, installed from
# crates.io with its lock file when missing or different.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null | awk '{print $NF}' | tr -d v)" != "$CARGO_DEB_VERSION" ]; then
  echo "cargo-deb: installing $CARGO_DEB_VERSION from crates.io" >&2
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
