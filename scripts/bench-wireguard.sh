#!/usr/bin/env bash
# flannel-rs WireGuard datapath benchmark: pod-to-pod iperf3 (1 stream)
# through flanneld's userspace WireGuard, against boringtun-cli configured
# with wg(8) as Go flannel configures its device, and against kernel vxlan
# (unencrypted ceiling), with the CPU each costs.
#
#   scripts/bench-wireguard.sh [SECONDS]    # iperf3 -t SECONDS per run (default 5)
#
# Three 2-host topologies (network namespaces on a bridge, one pod per host),
# built one after the other on the same subnets and pod addresses:
#   ours       flanneld (backend wireguard; this kernel has no WireGuard, so
#              the userspace implementation) + our flannel CNI plugin;
#   boringtun  boringtun-cli devices configured with `wg set` (key, port
#              51820, peer endpoint and allowed IPs), address <subnet>.0/32,
#              route <Network> dev <wg> scope link, MTU 1420, bridge and pod
#              veth made by hand;
#   vxlan      kernel vxlan made by hand as Go flannel makes it (MTU 1450).
# CPU: busy CPU time of the whole machine during the run (from /proc/stat,
# iperf3 included), as cores per Gbit/s. One run each; the figures go to
# target/bench-wireguard.jsonl (kind "comparison"). boringtun-cli 0.7.1 is
# built once with `cargo install` into $BORINGTUN_DIR
# (default /var/tmp/flannel-tools/boringtun; about 1 CPU-minute).
# Kernel WireGuard is not measured: only the VM has it, and qemu TCG numbers
# mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. scripts/lib-bench.sh
ROOT=$(pwd)

bench_args "$@"

PACKAGES=(iproute2 iputils-ping iperf3 jq containernetworking-plugins iptables wireguard-tools
          protobuf-compiler libprotobuf-dev)
ensure_packages "${PACKAGES[@]}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

BORINGTUN_DIR=${BORINGTUN_DIR:-/var/tmp/flannel-tools/boringtun}
BORINGTUN="$BORINGTUN_DIR/bin/boringtun-cli"
if [ ! -x "$BORINGTUN" ]; then
    say "building boringtun-cli 0.7.1 into $BORINGTUN_DIR"
    cargo install -q boringtun-cli --version 0.7.1 --locked --root "$BORINGTUN_DIR"
fi
say "building flanneld and the flannel CNI plugin (release)"
cargo build --release -q -p flanneld -p flannel-cni
BIN="$ROOT/target/release"
CNI_BIN=/usr/lib/cni
OUT="$ROOT/target/bench-wireguard.jsonl"

WORK=$(mktemp -d /tmp/flannel-bench-wg.XXXXXX)
TAG="wb$$"
NETNAME="flannel-bench-wg-$$"
trap 'teardown; rm -rf "$WORK" "/var/lib/cni/networks/$NETNAME"' EXIT
trap 'exit 130' INT TERM

# ours PREFIX: flanneld (wireguard) per host + one pod per host through our CNI.
ours() {
    local P=$1 i d
    hosts "$P"
    mkdir -p "$WORK/$P/store"
    echo '{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard"}}' >"$WORK/$P/store/config"
    for i in 1 2; do
        d="$WORK/$P/h$i"
        start_flanneld "$P" "$i" WIREGUARD_KEY_FILE="$d/wgkey" FLANNEL_WIREGUARD_SOCKET_DIR="$d/wg"
    done
    cni_pods "$P" ours wgbench
}

# pods PREFIX MTU: cni0 bridge, pod veth, addresses as in ours.
pods() {
    local P=$1 mtu=$2 i h net_i gw
    for i in 1 2; do
        h="$P-h$i"
        net_i=$(lease_net "${TAG}o" "$i")
        gw="${net_i%.0}.1"
        handmade_pod "$P" "$i" "$mtu" "$gw" "${POD[$i]}"
    done
}

# boringtun PREFIX: boringtun-cli devices configured with wg as Go does.
boringtun() {
    local P=$1 i j h dev net_i net_j
    hosts "$P"
    for i in 1 2; do
        (umask 077; wg genkey >"$WORK/$P-k$i")
        wg pubkey <"$WORK/$P-k$i" >"$WORK/$P-pub$i"
    done
    for i in 1 2; do
        h="$P-h$i"
        j=$((3 - i))
        dev="${P}w$i"
        net_i=$(lease_net "${TAG}o" "$i")
        net_j=$(lease_net "${TAG}o" "$j")
        ip netns exec "$h" env WG_SUDO=1 "$BORINGTUN" --disable-drop-privileges --foreground "$dev" \
            >"$WORK/$dev.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 100); do [ -S "/var/run/wireguard/$dev.sock" ] && break; sleep 0.05; done
        ip netns exec "$h" wg set "$dev" private-key "$WORK/$P-k$i" listen-port 51820 \
            peer "$(cat "$WORK/$P-pub$j")" endpoint "192.168.100.$j:51820" allowed-ips "$net_j/24"
        ip -n "$h" link set "$dev" mtu 1420 up
        ip -n "$h" addr add "$net_i/32" dev "$dev"
        ip -n "$h" route replace 10.244.0.0/16 dev "$dev" scope link
    done
    pods "$P" 1420
}

# vxlan PREFIX: kernel vxlan made by hand as Go flannel makes it.
vxlan() {
    local P=$1 i j h net_i net_j
    hosts "$P"
    for i in 1 2; do
        h="$P-h$i"
        j=$((3 - i))
        net_i=$(lease_net "${TAG}o" "$i")
        net_j=$(lease_net "${TAG}o" "$j")
        ip -n "$h" link add vx0 type vxlan id 1 local "192.168.100.$i" dev eth0 dstport 8472 nolearning
        ip -n "$h" link set vx0 address "0e:fb:00:00:00:0$i" mtu 1450 up
        ip -n "$h" addr add "$net_i/32" dev vx0
        ip -n "$h" neigh add "$net_j" lladdr "0e:fb:00:00:00:0$j" dev vx0 nud permanent
        bridge -n "$h" fdb append "0e:fb:00:00:00:0$j" dev vx0 dst "192.168.100.$j"
        ip -n "$h" route add "$net_j/24" via "$net_j" dev vx0 onlink
    done
    pods "$P" 1450
}

# run PREFIX: iperf3 pod 1 -> pod 2 (the server started by `server`, in
# this shell so that teardown stops it); prints "Gbit/s busy-cores".
run() {
    local P=$1 dst g cores
    dst=$(ready "$P")
    read -r g _ cores < <(measure "$P" "$dst" 1)
    awk -v g="$g" -v c="$cores" 'BEGIN { printf "%.3f %.3f\n", g, c }'
}

declare -A POD
say "ours: flanneld (userspace WireGuard) + flannel CNI"
ours "${TAG}o"
grep -h "userspace WireGuard device" "$WORK/${TAG}o"/h*/flanneld.log | sed 's/^/  /'
POD[1]=$(podip "${TAG}o-p1")
POD[2]=$(podip "${TAG}o-p2")
server "${TAG}o"
read -r OURS_G OURS_C < <(run "${TAG}o")
echo "  ours: $OURS_G Gbit/s, $OURS_C busy cores"
teardown

say "boringtun-cli configured with wg"
boringtun "${TAG}b"
server "${TAG}b"
read -r BT_G BT_C < <(run "${TAG}b")
echo "  boringtun-cli: $BT_G Gbit/s, $BT_C busy cores"
teardown

say "kernel vxlan (unencrypted ceiling)"
vxlan "${TAG}x"
server "${TAG}x"
read -r VX_G VX_C < <(run "${TAG}x")
echo "  kernel vxlan: $VX_G Gbit/s, $VX_C busy cores"
teardown

per() { awk -v c="$1" -v g="$2" 'BEGIN { printf "%.3f", (g > 0 ? c / g : 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
say "results (iperf3 -t $SECS, 1 stream, one run each)"
printf '%-34s %8s %12s %16s\n' datapath Gbit/s "busy cores" "cores per Gbit/s"
printf '%-34s %8.2f %12.2f %16.3f\n' "ours (userspace WireGuard)" "$OURS_G" "$OURS_C" "$(per "$OURS_C" "$OURS_G")"
printf '%-34s %8.2f %12.2f %16.3f\n' "boringtun-cli (configured by wg)" "$BT_G" "$BT_C" "$(per "$BT_C" "$BT_G")"
printf '%-34s %8.2f %12.2f %16.3f\n' "kernel vxlan (no encryption)" "$VX_G" "$VX_C" "$(per "$VX_C" "$VX_G")"
echo "  ours / boringtun-cli: x$(ratio "$OURS_G" "$BT_G"); ours / kernel vxlan: x$(ratio "$OURS_G" "$VX_G")"
{
    jq -nc --argjson v "$OURS_G" --argjson b "$BT_G" --argjson r "$(ratio "$OURS_G" "$BT_G")" \
        '{name: "wireguard userspace 1 stream", kind: "comparison", value: $v, unit: "Gbit/s", baseline_name: "boringtun-cli configured by wg, 1 stream", baseline_value: $b, ratio: $r}'
    jq -nc --argjson v "$OURS_G" --argjson b "$VX_G" --argjson r "$(ratio "$OURS_G" "$VX_G")" \
        '{name: "wireguard userspace 1 stream", kind: "reference", value: $v, unit: "Gbit/s", baseline_name: "kernel vxlan, no encryption, 1 stream", baseline_value: $b, ratio: $r}'
    jq -nc --argjson v "$(per "$OURS_C" "$OURS_G")" --argjson b "$(per "$BT_C" "$BT_G")" \
        --argjson r "$(ratio "$(per "$OURS_C" "$OURS_G")" "$(per "$BT_C" "$BT_G")")" \
        '{name: "wireguard userspace CPU", kind: "comparison", value: $v, unit: "cores per Gbit/s", baseline_name: "boringtun-cli CPU", baseline_value: $b, ratio: $r}'
} >"$OUT"
echo "  wrote $OUT"
