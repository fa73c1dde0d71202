#!/usr/bin/env bash
# The lispwg namespace lab: a thin wrapper over the testbed's lispwg-lab
# (target/debug/lispwg-lab, built by `cargo build --bins`), which holds the
# one lab topology the tests, the bench and the demo use. `lispwg-lab --help`
# gives the address plan.
#
#   ./scripts/lab.sh up       start the lab from the binaries (builds nothing)
#   ./scripts/lab.sh down     stop every process it started (by PID) and
#                             delete its namespaces, also after a crashed up
#   ./scripts/lab.sh exec NODE CMD...   run CMD in a node's namespace
#                             (NODE: router ms ms2 robot-a robot-b edge host)
#   ./scripts/lab.sh stop|kill9|start DAEMON   stop (SIGTERM), kill -9 or
#                             start one daemon (map-server map-server2 robot-a
#                             robot-b edge), waiting until it is ready
#   ./scripts/lab.sh move     move robot-b to its other subnet (one ip -batch)
#   ./scripts/lab.sh status   nodes, addresses, daemons and their PIDs
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

export LISPWG_BIN="${LISPWG_BIN:-$ROOT/target/debug}"
if [ ! -x "$LISPWG_BIN/lispwg-lab" ]; then
    echo "lab: $LISPWG_BIN/lispwg-lab not found; build with: cargo build --bins" >&2
    exit 1
fi
if [ $# -eq 0 ]; then
    sed -n '2,21p' "$LISPWG_SELF"
    exit 2
fi
exec "$LISPWG_BIN/lispwg-lab" "$@"
