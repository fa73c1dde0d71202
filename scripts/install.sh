#!/usr/bin/env bash
# Installs lispwg on this machine: the runtime packages (wireguard-tools, and
# wireguard-go for hosts without the kernel module), a release build of
# `xtr` and `map-server` in /usr/local/bin, the systemd units, and
# /etc/lispwg (mode 0700) for configuration and keys.
#
#   ./scripts/install.sh            install; does not start anything
#   ./scripts/install.sh --enable   also enable and start the units whose
#                                   configuration exists in /etc/lispwg
#
# Write /etc/lispwg/xtr.toml or /etc/lispwg/map-server.toml first (formats:
# conf/src/xtr.rs and conf/src/map_server.rs; scripts/lab.sh writes working
# examples) and a key with `xtr genkey --out /etc/lispwg/<name>.key`.
set -euo pipefail
LISPWG_SELF="$(readlink -f "$0")"
cd "$(dirname "$LISPWG_SELF")/.."
source scripts/common.sh
lispwg_need_root "$@"
LISPWG_APT_PACKAGES=(wireguard-tools wireguard-go iproute2)
lispwg_install_packages
lispwg_need_rust

cargo build --release --locked --bins
install -m 0755 target/release/xtr target/release/map-server /usr/local/bin/
install -d -m 0700 /etc/lispwg
install -d -m 0755 /usr/local/share/doc/lispwg
install -m 0644 README.md /usr/local/share/doc/lispwg/
if [ -d /etc/systemd/system ]; then
    install -m 0644 scripts/systemd/lispwg-xtr.service scripts/systemd/lispwg-map-server.service /etc/systemd/system/
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi
echo "installed: /usr/local/bin/xtr, /usr/local/bin/map-server, units lispwg-xtr and lispwg-map-server"

if [ "${1:-}" = --enable ]; then
    for unit in xtr map-server; do
        if [ -f "/etc/lispwg/$unit.toml" ]; then
            /usr/local/bin/$unit check-config -c "/etc/lispwg/$unit.toml"
            systemctl enable --now "lispwg-$unit.service"
            echo "enabled and started lispwg-$unit"
        fi
    done
fi
