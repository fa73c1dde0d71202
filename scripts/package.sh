#!/usr/bin/env bash
# Builds the Debian packages lispwg-xtr and lispwg-map-server with cargo-deb
# (installed with `cargo install cargo-deb` when missing), from a release
# build, into target/debian/. Prints the paths of the two packages.
#
#   ./scripts/package.sh
#   sudo apt install ./target/debian/lispwg-xtr_*.deb          # on a robot
#   sudo apt install ./target/debian/lispwg-map-server_*.deb   # on the server
set -euo pipefail
LISPWG_SELF="$(readlink -f "$0")"
cd "$(dirname "$LISPWG_SELF")/.."
source scripts/common.sh
lispwg_need_rust

if ! cargo deb --version >/dev/null 2>&1; then
    echo ">> installing cargo-deb" >&2
    cargo install cargo-deb --locked --quiet
fi
# One release build for both, then one package each.
cargo build --release --locked -p xtr -p map-server --bins >&2
for p in xtr map-server; do
    cargo deb --locked --no-build --strip -p "$p" --output target/debian/ >&2
done
version="$(cargo metadata --no-deps --format-version 1 --locked \
    | python3 -c 'import json,sys; print({p["name"]: p["version"] for p in json.load(sys.stdin)["packages"]}["xtr"])')"
arch="$(dpkg --print-architecture)"
for p in lispwg-xtr lispwg-map-server; do
    deb="target/debian/${p}_${version}-1_${arch}.deb"
    [ -f "$deb" ] || { echo "error: $deb was not built" >&2; exit 1; }
    echo "$PWD/$deb"
done
