#!/usr/bin/env bash
# flannel-rs datapath benchmark: pod-to-pod iperf3 throughput through what our
# flanneld + flannel CNI plugin set up, against a hand-made kernel baseline.
#
#   scripts/bench-datapath.sh [SECONDS]     # iperf3 -t SECONDS per run (default 5)
#
# For each backend (vxlan, host-gw, udp, udp-batch) two 2-host topologies
# (network namespaces on a bridge, one pod per host) are built side by side:
#   ours      flanneld on the embedded local store + our `flannel` CNI plugin
#             (delegating to Debian's `bridge` and `host-local`), as demo.sh;
#   baseline  no flanneld, no CNI: vxlan device / routes, bridge and pod veth
#             made by hand with ip(8) (vxlan: MTU 1450, host-gw: MTU 1500;
#             the udp rows are measured against kernel vxlan, MTU 1450),
#             on the same subnets and pod addresses as ours, carrying the
#             same iptables rules: each ours host's rules (flanneld's
#             FLANNEL-FWD forward accepts, and the bridge plugin's per-pod
#             masquerade chain, which the CNI plugin turns on because flanneld
#             runs without --ip-masq) are copied with iptables-save |
#             iptables-restore and checked to be identical, so the kernel
#             does the same netfilter work (conntrack, NAT) on both sides.
# udp is our userspace datapath (flannel-tun: TUN offload, UDP GSO/GRO);
# udp-batch is the same with FLANNEL_UDP_OFFLOAD=off (plain batching, what a
# Go-style per-packet proxy can reach at best).
# iperf3 runs pod 1 -> pod 2 with 1 and with 4 streams; ours and baseline
# alternate, 3 runs each, and the median of end.sum_received.bits_per_second
# is reported, with the CPU used per Gbit/s: iperf3's own CPU at both ends
# (end.cpu_utilization_percent, which includes the kernel work done in its
# threads) plus both flanneld processes' (their datapath threads), in % of
# one core per Gbit/s. Results: a table on stdout, and one JSON object per
# figure in target/bench-datapath.jsonl (overwritten; kind "comparison":
# like for like). BENCH_BACKENDS="udp udp-batch" limits the backends.
#
# Run as root on Debian; it installs what it needs and builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. scripts/lib-bench.sh
ROOT=$(pwd)

bench_args "$@"
RUNS=3
STREAMS=(1 4)
read -r -a BACKENDS <<<"${BENCH_BACKENDS:-vxlan host-gw udp udp-batch}"

START=$(date +%s.%N)

# iptables: the bridge plugin's masquerade rules and the copy of the rules.
PACKAGES=(iproute2 iputils-ping iperf3 jq containernetworking-plugins iptables protobuf-compiler
          libprotobuf-dev)
ensure_packages "${PACKAGES[@]}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

say "building flanneld and the flannel CNI plugin (release)"
cargo build --release -q -p flanneld -p flannel-cni
BIN="$ROOT/target/release"
CNI_BIN=/usr/lib/cni
OUT="$ROOT/target/bench-datapath.jsonl"

WORK=$(mktemp -d /tmp/flannel-bench.XXXXXX)
TAG="fb$$"
# host-local keeps its reservations in /var/lib/cni/networks/<name>: use a
# network name of our own and remove it on exit.
NETNAME="flannel-bench-$$"
cleanup() {
    teardown
    rm -rf "$WORK" "/var/lib/cni/networks/$NETNAME"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fwd_rules PREFIX I: waits for flanneld's forward rules on host I (the
# baseline copies them).
fwd_rules() {
    local P=$1 i=$2
    for _ in $(seq 1 100); do
        ip netns exec "$P-h$i" iptables -S FLANNEL-FWD 2>/dev/null | grep -q ACCEPT && break
        sleep 0.05
    done
    ip netns exec "$P-h$i" iptables -S FLANNEL-FWD 2>/dev/null | grep -q ACCEPT \
        || { echo "ours/$B host $i: no FLANNEL-FWD rules; log:"; cat "$WORK/$P/h$i/flanneld.log"; exit 1; }
}

# ours BACKEND PREFIX: flanneld per host + one pod per host through our CNI.
# udp-batch is the udp backend with FLANNEL_UDP_OFFLOAD=off.
ours() {
    local B=$1 P=$2 i type=$1 offload=on
    [ "$B" = udp-batch ] && { type=udp; offload=off; }
    hosts "$P"
    mkdir -p "$WORK/$P/store"
    echo "{\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"$type\"}}" >"$WORK/$P/store/config"
    FLANNELD_PIDS=()
    for i in 1 2; do
        start_flanneld "$P" "$i" FLANNEL_UDP_OFFLOAD=$offload
    done
    cni_pods "$P" "ours/$B" bench fwd_rules
}

# rules NS: NS's iptables and ip6tables rules without comments and counters.
rules() {
    { ip netns exec "$1" iptables-save; ip netns exec "$1" ip6tables-save; } |
        grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//'
}

# copy_rules FROM TO: loads host FROM's iptables and ip6tables rules into
# host TO and checks both now carry the same rules.
copy_rules() {
    local from=$1 to=$2
    ip netns exec "$from" iptables-save | ip netns exec "$to" iptables-restore
    ip netns exec "$from" ip6tables-save | ip netns exec "$to" ip6tables-restore
    if [ "$(rules "$from")" != "$(rules "$to")" ]; then
        echo "the baseline host $to does not carry the rules of $from:" >&2
        diff <(rules "$from") <(rules "$to") >&2
        exit 1
    fi
}

# baseline BACKEND PREFIX OURS: the same topology, everything made by hand, on
# the subnets and pod addresses of topology OURS, with OURS' iptables rules.
baseline() {
    local B=$1 P=$2 O=$3 i j h mtu net_i net_j gw pod
    hosts "$P"
    # The udp rows compare against kernel vxlan.
    case "$B" in udp | udp-batch) B=vxlan ;; esac
    if [ "$B" = vxlan ]; then mtu=1450; else mtu=1500; fi
    for i in 1 2; do
        h="$P-h$i"
        j=$((3 - i))
        net_i=$(lease_net "$O" "$i")
        net_j=$(lease_net "$O" "$j")
        gw="${net_i%.0}.1"
        pod=$(podip "$O-p$i")
        if [ "$B" = vxlan ]; then
            ip -n "$h" link add vx0 type vxlan id 1 local "192.168.100.$i" dev eth0 dstport 8472 nolearning
            ip -n "$h" link set vx0 address "0e:fb:00:00:00:0$i" mtu 1450 up
            ip -n "$h" addr add "$net_i/32" dev vx0
            ip -n "$h" neigh add "$net_j" lladdr "0e:fb:00:00:00:0$j" dev vx0 nud permanent
            bridge -n "$h" fdb append "0e:fb:00:00:00:0$j" dev vx0 dst "192.168.100.$j"
            ip -n "$h" route add "$net_j/24" via "$net_j" dev vx0 onlink
        else
            ip -n "$h" route add "$net_j/24" via "192.168.100.$j" dev eth0
        fi
        handmade_pod "$P" "$i" "$mtu" "$gw" "$pod"
        copy_rules "$O-h$i" "$h"
    done
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
label() { if [ "$1" = 1 ]; then echo "$2 1 stream"; else echo "$2 $1 streams"; fi; }

declare -A OURS BASE OCPU BCPU
NAMES=()
for B in "${BACKENDS[@]}"; do
    say "$B: ours (flanneld + flannel CNI) and baseline (hand-made) topologies"
    ours "$B" "${TAG}o"
    baseline "$B" "${TAG}b" "${TAG}o"
    server "${TAG}o"
    server "${TAG}b"
    DST_O=$(ready "${TAG}o")
    DST_B=$(ready "${TAG}b")
    echo "  ours:     pod $(podip "${TAG}o-p1") -> $DST_O, MTU $(ip -n "${TAG}o-p1" -o link show eth0 | awk '{for (k = 1; k < NF; k++) if ($k == "mtu") print $(k + 1)}')"
    echo "  baseline: pod $(podip "${TAG}b-p1") -> $DST_B, MTU $(ip -n "${TAG}b-p1" -o link show eth0 | awk '{for (k = 1; k < NF; k++) if ($k == "mtu") print $(k + 1)}')"
    echo "  iptables rules on each host (both topologies):"
    rules "${TAG}o-h1" | sed 's/^/    /'
    for n in "${STREAMS[@]}"; do
        name=$(label "$n" "$B")
        NAMES+=("$name")
        OURS[$name]=""
        BASE[$name]=""
        OCPU[$name]=""
        BCPU[$name]=""
    done
    for r in $(seq 1 $RUNS); do
        for n in "${STREAMS[@]}"; do
            name=$(label "$n" "$B")
            read -r o oc _ < <(measure "${TAG}o" "$DST_O" "$n" "${FLANNELD_PIDS[@]}")
            read -r b bc _ < <(measure "${TAG}b" "$DST_B" "$n")
            [ -n "${o:-}" ] && [ -n "${b:-}" ] || { echo "iperf3 failed for $name" >&2; exit 1; }
            OURS[$name]+=" $o"
            BASE[$name]+=" $b"
            OCPU[$name]+=" $(awk -v c="$oc" -v g="$o" 'BEGIN {printf "%.1f", (g > 0 ? c / g : 0)}')"
            BCPU[$name]+=" $(awk -v c="$bc" -v g="$b" 'BEGIN {printf "%.1f", (g > 0 ? c / g : 0)}')"
            printf '  run %d/%d %-22s ours %6.2f Gbit/s (CPU %5.1f%%)  baseline %6.2f Gbit/s (CPU %5.1f%%)\n' \
                "$r" "$RUNS" "$name" "$o" "$oc" "$b" "$bc"
        done
    done
    cleanup
done

say "results (iperf3 -t $SECS, median of $RUNS runs, pod 1 -> pod 2; CPU in % of one core per Gbit/s)"
: >"$OUT"
printf '%-22s | %13s | %17s | %5s | %9s | %13s\n' name "ours (Gbit/s)" "baseline (Gbit/s)" ratio "ours CPU" "baseline CPU"
printf '%-22s-+-%13s-+-%17s-+-%5s-+-%9s-+-%13s\n' "----------------------" "-------------" "-----------------" "-----" "---------" "-------------"
for name in "${NAMES[@]}"; do
    # shellcheck disable=SC2086 # word-split the run list on purpose
    o=$(median ${OURS[$name]})
    # shellcheck disable=SC2086
    b=$(median ${BASE[$name]})
    o=$(awk -v x="$o" 'BEGIN {printf "%.3f", x}')
    b=$(awk -v x="$b" 'BEGIN {printf "%.3f", x}')
    ratio=$(awk -v x="$o" -v y="$b" 'BEGIN {printf "%.3f", (y > 0 ? x / y : 0)}')
    # shellcheck disable=SC2086
    oc=$(median ${OCPU[$name]})
    # shellcheck disable=SC2086
    bc=$(median ${BCPU[$name]})
    printf '%-22s | %13.2f | %17.2f | %5.2f | %9.1f | %13.1f\n' "$name" "$o" "$b" "$ratio" "$oc" "$bc"
    case "$name" in
        vxlan* | udp*) bname="hand-made kernel vxlan, same rules, ${name#* }" ;;
        *) bname="hand-made kernel routes, same rules, ${name#host-gw }" ;;
    esac
    jq -nc --arg name "$name" --argjson value "$o" --arg bname "$bname" --argjson bvalue "$b" \
        --argjson ratio "$ratio" \
        '{name: $name, kind: "comparison", value: $value, unit: "Gbit/s", baseline_name: $bname, baseline_value: $bvalue, ratio: $ratio}' >>"$OUT"
    case "$name" in
        udp*)
            cratio=$(awk -v x="$oc" -v y="$bc" 'BEGIN {printf "%.3f", (y > 0 ? x / y : 0)}')
            jq -nc --arg name "$name CPU" --argjson value "$oc" --arg bname "$bname CPU" --argjson bvalue "$bc" \
                --argjson ratio "$cratio" \
                '{name: $name, kind: "comparison", value: $value, unit: "%core per Gbit/s", baseline_name: $bname, baseline_value: $bvalue, ratio: $ratio}' >>"$OUT"
            ;;
    esac
done
# Offload against the plain-batching fallback, same run.
for n in "${STREAMS[@]}"; do
    g=$(label "$n" udp)
    f=$(label "$n" udp-batch)
    [ -n "${OURS[$g]:-}" ] && [ -n "${OURS[$f]:-}" ] || continue
    # shellcheck disable=SC2086
    o=$(median ${OURS[$g]})
    # shellcheck disable=SC2086
    b=$(median ${OURS[$f]})
    ratio=$(awk -v x="$o" -v y="$b" 'BEGIN {printf "%.3f", (y > 0 ? x / y : 0)}')
    printf '%-22s | %13.2f | %17.2f | %5.2f |   (offload vs FLANNEL_UDP_OFFLOAD=off)\n' "$g vs batch" "$o" "$b" "$ratio"
    jq -nc --arg name "$g vs batch" --argjson value "$o" --arg bname "$f (FLANNEL_UDP_OFFLOAD=off)" \
        --argjson bvalue "$b" --argjson ratio "$ratio" \
        '{name: $name, kind: "comparison", value: $value, unit: "Gbit/s", baseline_name: $bname, baseline_value: $bvalue, ratio: $ratio}' >>"$OUT"
done
END=$(date +%s.%N)
echo
echo "  wrote $OUT"
awk -v a="$START" -v b="$END" 'BEGIN { printf "  wall time: %.0f s\n", b - a }'
