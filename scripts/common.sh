# Shared helpers for the lispwg scripts. Sourced, not run.

# Re-run the calling script ($LISPWG_SELF, an absolute path) as root: through sudo when the user has it,
# otherwise stop with a clear reason (the lab needs namespaces and TUN).
lispwg_need_root() {
    if [ "$(id -u)" -eq 0 ]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1; then
        echo ">> $0 needs root (network namespaces, TUN, WireGuard); re-running through sudo" >&2
        exec sudo -E "$LISPWG_SELF" "$@"
    fi
    echo "error: $0 must run as root (network namespaces, TUN, WireGuard) and sudo is not installed" >&2
    exit 1
}

# Debian packages the tests, the lab and the benchmarks use (nftables and
# conntrack for the lab's NAT routers, coturn for its TURN relay; prometheus
# for promtool and systemd for systemd-analyze, which the packaging tests run).
LISPWG_APT_PACKAGES=(tshark wireguard-go wireguard-tools iproute2 iputils-ping iperf3 tcpdump openssl procps
    nftables conntrack coturn prometheus systemd)

# Installs whatever of LISPWG_APT_PACKAGES is missing, without prompts.
lispwg_install_packages() {
    local missing=()
    for p in "${LISPWG_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        lispwg_disable_system_coturn
        return 0
    fi
    echo ">> installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no, without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    lispwg_disable_system_coturn
}

# Debian's coturn package comes with a system service (started on install
# under systemd). The lab runs its own turnserver inside a namespace and never
# uses it: stop and disable it, so that it does not hold port 3478 on the host.
lispwg_disable_system_coturn() {
    if [ -d /run/systemd/system ]; then
        if systemctl is-enabled --quiet coturn 2>/dev/null || systemctl is-active --quiet coturn 2>/dev/null; then
            echo ">> stopping and disabling the system coturn service (the lab runs its own)"
            systemctl disable --now coturn >/dev/null 2>&1 || true
        fi
        # Likewise the Prometheus server of the prometheus package (the tests
        # only use its promtool).
        if systemctl is-enabled --quiet prometheus 2>/dev/null || systemctl is-active --quiet prometheus 2>/dev/null; then
            echo ">> stopping and disabling the system prometheus service (the tests use only promtool)"
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/coturn ] && grep -q '^TURNSERVER_ENABLED=1' /etc/default/coturn 2>/dev/null; then
        # Without systemd the init script starts it only when enabled here.
        echo ">> stopping and disabling the system coturn service (the lab runs its own)"
        /etc/init.d/coturn stop >/dev/null 2>&1 || true
        sed -i 's/^TURNSERVER_ENABLED=1/#TURNSERVER_ENABLED=1/' /etc/default/coturn
    fi
}

# What demo.sh and test.sh do first: root (through sudo if need be), the
# Debian packages, a Rust toolchain. Call with the script's arguments.
lispwg_setup() {
    lispwg_need_root "$@"
    lispwg_install_packages
    lispwg_need_rust
}

# Makes sure a Rust toolchain with rustfmt and clippy is on PATH.
lispwg_need_rust() {
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run $0" >&2
        exit 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy >/dev/null 2>&1 || true
    fi
}
