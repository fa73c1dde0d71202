#!/usr/bin/env bash
# Builds the Debian packages from this source tree (scripts/package.sh) and
# installs them with apt on this machine: the build-from-source path. Robots
# and servers normally get the .deb files instead:
#
#   sudo apt install ./lispwg-xtr_*.deb          # a robot or edge router
#   sudo apt install ./lispwg-map-server_*.deb   # the map-server
#
#   ./scripts/install.sh                 both packages
#   ./scripts/install.sh xtr             only lispwg-xtr (or: map-server)
#
# Then write /etc/lispwg/xtr.toml or /etc/lispwg/map-server.toml from the
# .sample beside it, and `systemctl restart lispwg-xtr` (the units are
# enabled at install and stay inactive until their configuration exists).
# `apt remove lispwg-xtr` uninstalls; `apt purge` also removes what the
# package generated.
set -euo pipefail
LISPWG_SELF="$(readlink -f "$0")"
cd "$(dirname "$LISPWG_SELF")/.."
source scripts/common.sh
lispwg_need_root "$@"
lispwg_need_rust

mapfile -t debs < <(./scripts/package.sh)
want=()
for deb in "${debs[@]}"; do
    case "${1:-all}:$(basename "$deb")" in
        all:* | xtr:lispwg-xtr_* | map-server:lispwg-map-server_*) want+=("$deb") ;;
    esac
done
[ ${#want[@]} -gt 0 ] || { echo "usage: $0 [xtr|map-server]" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${want[@]}"
echo "installed: ${want[*]##*/}"
