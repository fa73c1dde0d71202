#!/usr/bin/env bash
# The newcomer's demo: installs what it needs, builds, brings up the
# namespace lab (map-server, two robots, an edge xTR with a host behind it),
# shows on-demand WireGuard tunnels carrying traffic (by name too), prints
# the agents' status, then does it again with the robots behind symmetric NATs through
# the campus relay (coturn), and tears everything down again.
set -euo pipefail
LISPWG_SELF="$(readlink -f "$0")"
cd "$(dirname "$LISPWG_SELF")/.."
source scripts/common.sh
lispwg_setup "$@"

echo ">> building (debug profile; the first build takes a few minutes)"
cargo build --bins --locked

export LAB_DIR="${LAB_DIR:-$(mktemp -d /tmp/lispwg-demo.XXXXXX)}"
export LAB_PREFIX="${LAB_PREFIX:-lwdemo}"
lab() { ./scripts/lab.sh "$@"; }
# robot-a's resolv.conf inside its namespace (ip netns exec bind-mounts it):
# its agent answers DNS for lispwg.internal on its control address.
NETNS_ETC="/etc/netns/$LAB_PREFIX-robot-a"
trap 'lab down >/dev/null 2>&1 || true; rm -rf "$LAB_DIR" "$NETNS_ETC"' EXIT

echo ">> bringing up the lab"
lab up

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "robot-a has no tunnel to robot-b yet:"
lab exec robot-a ./target/debug/xtr status -c "$LAB_DIR/robot-a.toml" | sed -n '/^map-cache/,/^$/p'

say "robot-a looks robot-b up by name: its agent asks the map-server (a Distinguished-Name EID) and answers once the tunnel is set up"
mkdir -p "$NETNS_ETC"
echo "nameserver 100.64.0.2" > "$NETNS_ETC/resolv.conf"
ip netns exec "$LAB_PREFIX-robot-a" getent hosts robot-b.lispwg.internal
lab exec robot-a ./target/debug/xtr status -c "$LAB_DIR/robot-a.toml" | sed -n '/^map-cache/,/^$/p'

say "robot-a pings robot-b by name"
ip netns exec "$LAB_PREFIX-robot-a" ping -n -c 3 -i 0.2 -W 2 robot-b.lispwg.internal
rm -rf "$NETNS_ETC"

say "robot-b pings robot-a (10.0.0.1) back: it learned robot-a from the map-server's Map-Notify"
lab exec robot-b ping -c 4 -i 0.2 -W 2 10.0.0.1

say "robot-a pings the host behind the edge xTR (10.1.0.10)"
lab exec robot-a ping -c 3 -i 0.2 -W 2 10.1.0.10

say "the host pings robot-b back through its edge xTR"
lab exec host ping -c 3 -i 0.2 -W 2 10.0.0.2

say "an EID nobody registered (10.0.0.99) is answered with ICMP unreachable at once"
lab exec robot-a ping -c 1 -W 2 10.0.0.99 || true

say "xtr status on robot-a"
lab exec robot-a ./target/debug/xtr status -c "$LAB_DIR/robot-a.toml"

say "xtr status on robot-b (it learned robot-a from the map-server's Map-Notify)"
lab exec robot-b ./target/debug/xtr status -c "$LAB_DIR/robot-b.toml"

say "map-server status"
lab exec ms ./target/debug/map-server status -c "$LAB_DIR/map-server.toml"

say "tearing down; next: robots behind symmetric NATs, with the campus relay"
lab down

# The same campus, robot-a and robot-b each behind a NAT router that maps
# every destination to a new port ("symmetric"): no direct path can exist,
# and coturn on the map-server's host relays the tunnel.
lab up --nat edm

say "robot-a pings robot-b through two symmetric NATs: the direct attempts fail, the relay carries the first packet"
lab exec robot-a ping -c 4 -i 0.2 -W 2 10.0.0.2

say "robot-a's relay allocation and its relayed peer (the relay only sees WireGuard ciphertext)"
lab exec robot-a ./target/debug/xtr status -c "$LAB_DIR/robot-a.toml" | grep -E 'seen at|relay|peer:|path:|endpoint:|transfer'

say "tearing down"
lab down
trap - EXIT
rm -rf "$LAB_DIR" "$NETNS_ETC"
echo "demo finished: every namespace, interface and process it made is gone"
