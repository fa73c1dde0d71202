#!/usr/bin/env bash
# Installs what the tests need, then runs every check of the workspace:
# formatting, clippy with warnings denied, and all tests, the network-namespace
# integration tests included (they need root and wireguard-go).
set -euo pipefail
LISPWG_SELF="$(readlink -f "$0")"
cd "$(dirname "$LISPWG_SELF")/.."
source scripts/common.sh
lispwg_setup "$@"

echo ">> cargo fmt --check"
cargo fmt --all -- --check
echo ">> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo ">> cargo test"
cargo test --workspace --locked
