#!/usr/bin/env bash
# The lispwg namespace lab: a campus router joining three underlay subnets,
# the map-server in the public segment, two robots (mobile nodes) in
# different subnets, and an edge xTR with one host behind it.
#
#   ./scripts/lab.sh up       build nothing; start the lab from target/debug
#   ./scripts/lab.sh down     stop every process it started (by PID) and
#                             delete its namespaces
#   ./scripts/lab.sh exec NODE CMD...   run CMD in a node's namespace
#                             (NODE: router ms ms2 robot-a robot-b edge host)
#   ./scripts/lab.sh stop|kill9|start DAEMON   stop (SIGTERM), kill -9 or
#                             start one daemon (map-server map-server2 robot-a
#                             robot-b edge), waiting until it is ready
#   ./scripts/lab.sh move     move robot-b to its other subnet (one ip -batch:
#                             old address off, new address on, default route)
#
# Addresses (documentation ranges, inside the lab only):
#   public segment 192.0.2.0/24      router .1, map-server .10, map-server2 .11
#   subnet A       198.51.100.0/24   router .1, robot-a .10, edge .20,
#                                    robot-b's second interface .30 (handover)
#   subnet B       203.0.113.0/24    router .1, robot-b .10
#   control tunnel 100.64.0.0/16     map-server .1, robot-a .2, robot-b .3, edge .4,
#                                    map-server2 .254
#   overlay        robot-a 10.0.0.1, robot-b 10.0.0.2, edge LAN 10.1.0.0/24
#                  (edge .1, host .10)
#
# Environment: LAB_DIR (state: configs, keys, logs, PIDs; default
# /tmp/lispwg-lab), LAB_PREFIX (namespace/interface prefix, default "lwl"),
# LISPWG_BIN (folder of the binaries, default target/debug), LAB_MAP_SERVERS
# (1 or 2, default 1), LAB_PUSH_MOVES (true/false, default true).
set -euo pipefail
LISPWG_SELF="$(readlink -f "$0")"
ROOT="$(dirname "$LISPWG_SELF")/.."
source "$ROOT/scripts/common.sh"
lispwg_need_root "$@"

LAB_DIR="${LAB_DIR:-/tmp/lispwg-lab}"
P="${LAB_PREFIX:-lwl}"
BIN="${LISPWG_BIN:-$ROOT/target/debug}"
MAP_SERVERS="${LAB_MAP_SERVERS:-1}"
PUSH_MOVES="${LAB_PUSH_MOVES:-true}"
NODES=(router ms robot-a robot-b edge host)
[ "$MAP_SERVERS" = 2 ] && NODES+=(ms2)

ns() { echo "${P}-$1"; }
in_ns() { local n="$1"; shift; ip netns exec "$(ns "$n")" "$@"; }

veth() { # veth NS_A IF_A NS_B IF_B
    ip link add "$2" netns "$(ns "$1")" type veth peer name "$4" netns "$(ns "$3")"
}

start() { # start NODE NAME CMD... : background process in NODE's namespace, PID recorded
    local node="$1" name="$2"; shift 2
    ip netns exec "$(ns "$node")" "$@" >"$LAB_DIR/$name.log" 2>&1 &
    echo $! >"$LAB_DIR/$name.pid"
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD... : poll until CMD succeeds
    local secs="$1" what="$2"; shift 2
    for _ in $(seq 1 $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "lab: timed out waiting for $what" >&2
    return 1
}

keypair() { # keypair NAME : writes NAME.key (0600), prints the public key
    [ -f "$LAB_DIR/$1.key" ] || "$BIN/xtr" genkey --out "$LAB_DIR/$1.key"
    "$BIN/xtr" pubkey <"$LAB_DIR/$1.key"
}

topology() {
    for n in "${NODES[@]}"; do ip netns add "$(ns "$n")"; done
    for n in "${NODES[@]}"; do in_ns "$n" ip link set lo up; done
    in_ns router sysctl -qw net.ipv4.ip_forward=1
    local i=0
    for br in pub suba subb; do
        in_ns router ip link add "br-$br" type bridge
        in_ns router ip link set "br-$br" up
    done
    in_ns router ip addr add 192.0.2.1/24 dev br-pub
    in_ns router ip addr add 198.51.100.1/24 dev br-suba
    in_ns router ip addr add 203.0.113.1/24 dev br-subb

    # attach NODE IF BRIDGE ADDR
    attach() {
        local node="$1" ifname="$2" br="$3" addr="$4"
        local peer="r${node:0:7}${ifname}"
        veth "$node" "$ifname" router "${peer:0:15}"
        in_ns router ip link set "${peer:0:15}" master "br-$br" up
        in_ns "$node" ip link set "$ifname" up
        if [ -n "$addr" ]; then in_ns "$node" ip addr add "$addr" dev "$ifname"; fi
    }
    attach ms eth0 pub 192.0.2.10/24
    if [ "$MAP_SERVERS" = 2 ]; then
        attach ms2 eth0 pub 192.0.2.11/24
        in_ns ms2 ip route add default via 192.0.2.1
    fi
    attach robot-a eth0 suba 198.51.100.10/24
    attach robot-b eth0 subb 203.0.113.10/24
    attach robot-b eth1 suba ""          # for handover: no address yet
    attach edge eth0 suba 198.51.100.20/24
    in_ns ms ip route add default via 192.0.2.1
    in_ns robot-a ip route add default via 198.51.100.1
    in_ns robot-b ip route add default via 203.0.113.1
    in_ns edge ip route add default via 198.51.100.1

    veth edge lan host eth0
    in_ns edge ip link set lan up
    in_ns edge ip addr add 10.1.0.1/24 dev lan
    in_ns host ip link set eth0 up
    in_ns host ip addr add 10.1.0.10/24 dev eth0
    in_ns host ip route add default via 10.1.0.1
}

configs() {
    local ms_pub ms2_pub a_pub b_pub e_pub
    ms_pub="$(keypair ms)"; a_pub="$(keypair robot-a)"; b_pub="$(keypair robot-b)"; e_pub="$(keypair edge)"
    ms2_pub="$(keypair ms2)"
    for n in robot-a robot-b edge; do
        [ -f "$LAB_DIR/$n.site" ] || (umask 077; head -c 24 /dev/urandom | base64 >"$LAB_DIR/$n.site")
    done
    ms_config map-server "${P}-ms" ms 100.64.0.1
    [ "$MAP_SERVERS" = 2 ] && ms_config map-server2 "${P}-ms2" ms2 100.64.0.254
    node_configs
}

# ms_config NAME WG_IF KEY CONTROL_ADDRESS -> NAME.toml
ms_config() {
    local name="$1" wg="$2" key="$3" ctl="$4"
    (umask 077; cat >"$LAB_DIR/$name.toml" <<TOML
[control]
interface = "$wg"
private_key_file = "$key.key"
listen_port = 4340
address = "$ctl/16"

[server]
state_dir = "$name-state"
metrics = "127.0.0.1:9342"
push_moves = $PUSH_MOVES

[[peers]]
name = "robot-a"
public_key = "$a_pub"
control_address = "100.64.0.2"
site_key_file = "robot-a.site"
eids = [{ prefix = "10.0.0.1/32" }]

[[peers]]
name = "robot-b"
public_key = "$b_pub"
control_address = "100.64.0.3"
site_key_file = "robot-b.site"
eids = [{ prefix = "10.0.0.2/32" }]

[[peers]]
name = "edge"
public_key = "$e_pub"
control_address = "100.64.0.4"
site_key_file = "edge.site"
eids = [{ prefix = "10.1.0.0/24" }]
TOML
    )
}

node_configs() {
    # node_config NAME WG_IF CTL EID MODE RLOC_IFS... -> NAME.toml
    node_config() {
        local name="$1" wg="$2" ctl="$3" eid="$4" mode="$5"; shift 5
        {
            echo "mode = \"$mode\""
            echo "metrics = \"127.0.0.1:9343\""
            echo "[wireguard]"
            echo "interface = \"$wg\""
            echo "private_key_file = \"$name.key\""
            echo "listen_port = 51820"
            echo "[control]"
            echo "address = \"$ctl/16\""
            echo "[[map_servers]]"
            echo "name = \"ms\""
            echo "endpoint = \"192.0.2.10:4340\""
            echo "public_key = \"$("$BIN/xtr" pubkey <"$LAB_DIR/ms.key")\""
            echo "control_address = \"100.64.0.1\""
            echo "site_key_file = \"$name.site\""
            if [ "$MAP_SERVERS" = 2 ]; then
                echo "[[map_servers]]"
                echo "name = \"ms2\""
                echo "endpoint = \"192.0.2.11:4340\""
                echo "public_key = \"$("$BIN/xtr" pubkey <"$LAB_DIR/ms2.key")\""
                echo "control_address = \"100.64.0.254\""
                echo "site_key_file = \"$name.site\""
            fi
            echo "[[eids]]"
            echo "prefix = \"$eid\""
            local prio=1
            for r in "$@"; do
                echo "[[rlocs]]"
                echo "interface = \"$r\""
                echo "priority = $prio"
                prio=$((prio + 1))
            done
            echo "[overlay]"
            echo "capture = [\"10.0.0.0/8\"]"
            echo "miss_interface = \"${wg}m\""
            if [ "$mode" = xtr ]; then
                echo "[lan]"
                echo "interface = \"lan\""
            fi
        } >"$LAB_DIR/$name.toml"
        chmod 600 "$LAB_DIR/$name.toml"
    }
    node_config robot-a "${P}-a" 100.64.0.2 10.0.0.1/32 mobile-node eth0
    node_config robot-b "${P}-b" 100.64.0.3 10.0.0.2/32 mobile-node eth0 eth1
    node_config edge "${P}-e" 100.64.0.4 10.1.0.0/24 xtr eth0
}

status_ok() { in_ns "$1" "$BIN/xtr" status -c "$LAB_DIR/$1.toml" | grep -q "registered"; }

up() {
    for b in xtr map-server; do
        [ -x "$BIN/$b" ] || { echo "lab: $BIN/$b not found; build with: cargo build --bins" >&2; exit 1; }
    done
    if ip netns list | grep -q "^$(ns router)\b"; then
        echo "lab: already up (./scripts/lab.sh down first)" >&2
        exit 1
    fi
    mkdir -p "$LAB_DIR"
    chmod 700 "$LAB_DIR"
    topology
    configs
    start_daemon map-server
    [ "$MAP_SERVERS" = 2 ] && start_daemon map-server2
    for n in robot-a robot-b edge; do start_daemon "$n" nowait; done
    for n in robot-a robot-b edge; do
        wait_for 15 "$n to register" status_ok "$n"
    done
    echo "lab: up (state in $LAB_DIR)"
}

# start_daemon NAME [nowait]: map-server, map-server2, robot-a, robot-b, edge
start_daemon() {
    local name="$1"
    case "$name" in
        map-server) start ms "$name" "$BIN/map-server" run -c "$LAB_DIR/$name.toml"
            wait_for 10 "$name" in_ns ms "$BIN/map-server" status -c "$LAB_DIR/$name.toml" ;;
        map-server2) start ms2 "$name" "$BIN/map-server" run -c "$LAB_DIR/$name.toml"
            wait_for 10 "$name" in_ns ms2 "$BIN/map-server" status -c "$LAB_DIR/$name.toml" ;;
        robot-a|robot-b|edge) start "$name" "$name" "$BIN/xtr" run -c "$LAB_DIR/$name.toml"
            [ "${2:-}" = nowait ] || wait_for 15 "$name to register" status_ok "$name" ;;
        *) echo "lab: no daemon $name" >&2; return 2 ;;
    esac
}

# move: robot-b to its other subnet, in one ip -batch.
move() {
    local batch
    if in_ns robot-b ip -4 addr show dev eth0 | grep -q 203.0.113.10; then
        batch="address del 203.0.113.10/24 dev eth0
address add 198.51.100.30/24 dev eth1
route replace default via 198.51.100.1"
    else
        batch="address del 198.51.100.30/24 dev eth1
address add 203.0.113.10/24 dev eth0
route replace default via 203.0.113.1"
    fi
    echo "$batch" | in_ns robot-b ip -batch -
}

stop_pid() { # stop_pid FILE : SIGTERM, wait up to 5 s, then SIGKILL
    local f="$1" pid
    [ -f "$f" ] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

down() {
    for n in robot-a robot-b edge map-server map-server2; do stop_pid "$LAB_DIR/$n.pid"; done
    for n in "${NODES[@]}" ms2; do
        ip netns del "$(ns "$n")" 2>/dev/null || true
    done
    echo "lab: down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    exec) shift; node="$1"; shift; in_ns "$node" "$@" ;;
    stop) stop_pid "$LAB_DIR/$2.pid" ;;
    kill9) kill -KILL "$(cat "$LAB_DIR/$2.pid")"; rm -f "$LAB_DIR/$2.pid" ;;
    start) start_daemon "$2" ;;
    move) move ;;
    *) sed -n '2,32p' "$LISPWG_SELF"; exit 2 ;;
esac
