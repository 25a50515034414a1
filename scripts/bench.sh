#!/usr/bin/env bash
# flannel-rs benchmarks: every figure next to its baseline, in one report.
#
#   scripts/bench.sh                 # as root on Debian; run on demand (not part of test.sh)
#   BENCH_DATAPATH_SECS=10 scripts/bench.sh
#
# Installs what is missing (apt), builds flanneld, the flannel CNI plugin and
# the bench programs in release mode, then runs:
#   acquire     lease acquisition among 60,000 leases on a real etcd
#               vs the raw etcd range read (benches/src/bin/acquire.rs)
#   program     5,000 vxlan leases programmed / removed with flannel-netlink
#               vs ip -batch + bridge -batch (benches/src/bin/program.rs)
#   converge    etcd PUT -> route on the other hosts, 3 flanneld in netns
#               vs raw etcd watch delivery (benches/src/bin/converge.rs)
#   footprint   flanneld RSS with 5,000 leases vs 0; start -> subnet.env
#               vs ip link add + ip addr add (benches/src/bin/footprint.rs)
#   udp-resync  the udp datapath's longest ping gap while 5,000 leases are
#               added, resynced and deleted vs the same quiet
#               (benches/src/bin/udp_resync.rs)
#   kube_footprint  Kubernetes mode on the fake API server: RSS watching 5,000
#               more Nodes vs none; Node written -> route on both hosts vs a
#               bare kube-rs watch (benches/src/bin/kube_footprint.rs)
#   datapath    pod-to-pod iperf3 vs hand-made kernel setup with the same
#               iptables rules, CPU per Gbit/s; the udp backend (and its
#               FLANNEL_UDP_OFFLOAD=off batching) vs kernel vxlan
#               (scripts/bench-datapath.sh, BENCH_DATAPATH_SECS per run,
#               default 5)
#   ipsec       host-side ipsec with userspace ESP (kernel-libipsec: this
#               kernel has no ESP) next to kernel vxlan in the same run,
#               labelled as such (scripts/bench-ipsec.sh)
#   wireguard   pod-to-pod iperf3 over userspace WireGuard vs boringtun-cli
#               configured with wg, and vs kernel vxlan, with CPU per Gbit/s
#               (scripts/bench-wireguard.sh)
# Every JSON figure line goes to target/bench-report.json (a JSON array); a
# table of all figures (name, kind, value, unit, baseline, ratio) is printed
# last. The kind says what the ratio means: "comparison" (like for like: the
# baseline does the same job by other means), "growth" (ours against ours
# under less load) or "reference" (the baseline is a floor or a smaller
# operation given for scale, not the same work).
# A failing bench is reported and the others still run; the exit status is
# then 1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib.sh
ROOT=$(pwd)

case "${1:-}" in -h|--help) sed -n '2,32p' "$0"; exit 0 ;; esac
[ $# -eq 0 ] || { echo "usage: $0  (no arguments; see --help)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (network namespaces)" >&2; exit 1; }
DATAPATH_SECS=${BENCH_DATAPATH_SECS:-5}

START=$(date +%s.%N)

PACKAGES=(iproute2 iputils-ping iperf3 jq etcd-server containernetworking-plugins iptables
          protobuf-compiler libprotobuf-dev)
ensure_packages "${PACKAGES[@]}" || exit 1
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

say "building flanneld, the flannel CNI plugin and the benches (release)"
cargo build --release -q -p flanneld -p flannel-cni -p flannel-benches || exit 1
BIN="$ROOT/target/release"
REPORT="$ROOT/target/bench-report.json"
WORK=$(mktemp -d /tmp/flannel-bench-all.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
: >"$WORK/figures.jsonl"
FAILED=()

# bench NAME CMD...: runs one bench (progress on stderr, figures on stdout)
# and keeps its JSON figure lines.
bench() {
    local name=$1
    shift
    say "$name"
    local t0 t1
    t0=$(date +%s.%N)
    if "$@" >"$WORK/$name.out"; then
        cat "$WORK/$name.out"
        grep '^{' "$WORK/$name.out" >>"$WORK/figures.jsonl"
    else
        cat "$WORK/$name.out"
        echo "!! $name failed" >&2
        FAILED+=("$name")
    fi
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v n="$name" 'BEGIN { printf "  (%s: %.0f s)\n", n, b - a }'
}

bench acquire "$BIN/acquire"
bench program "$BIN/program"
bench converge "$BIN/converge"
bench footprint "$BIN/footprint"
bench udp-resync "$BIN/udp_resync"
bench kube_footprint "$BIN/kube_footprint"

say "datapath"
rm -f "$ROOT/target/bench-datapath.jsonl"
if scripts/bench-datapath.sh "$DATAPATH_SECS" && [ -s "$ROOT/target/bench-datapath.jsonl" ]; then
    cat "$ROOT/target/bench-datapath.jsonl" >>"$WORK/figures.jsonl"
else
    echo "!! datapath failed" >&2
    FAILED+=(datapath)
fi

say "ipsec (userspace ESP) next to kernel vxlan"
rm -f "$ROOT/target/bench-ipsec.jsonl"
if scripts/bench-ipsec.sh "$DATAPATH_SECS" && [ -s "$ROOT/target/bench-ipsec.jsonl" ]; then
    cat "$ROOT/target/bench-ipsec.jsonl" >>"$WORK/figures.jsonl"
else
    echo "!! ipsec failed" >&2
    FAILED+=(ipsec)
fi
say "wireguard datapath"
rm -f "$ROOT/target/bench-wireguard.jsonl"
if scripts/bench-wireguard.sh "$DATAPATH_SECS" && [ -s "$ROOT/target/bench-wireguard.jsonl" ]; then
    cat "$ROOT/target/bench-wireguard.jsonl" >>"$WORK/figures.jsonl"
else
    echo "!! wireguard datapath failed" >&2
    FAILED+=(wireguard)
fi

jq -s . "$WORK/figures.jsonl" >"$REPORT" || { echo "invalid JSON figure lines" >&2; exit 1; }

say "all figures (ratio = value / baseline; kind: comparison = like for like, growth = ours under less load, reference = a floor for scale)"
jq -r '.[] | [.name, .kind, .value, .unit, .baseline_name, .baseline_value, .ratio] | @tsv' "$REPORT" | awk -F'\t' '
    function put(r, i, v) { cell[r, i] = v; if (length(v) > w[i]) w[i] = length(v) }
    BEGIN { split("figure|kind|value|unit|baseline|value|ratio", h, "|"); for (i = 1; i <= 7; i++) put(1, i, h[i]) }
    {
        r = NR + 1
        put(r, 1, $1); put(r, 2, $2); put(r, 3, sprintf("%.2f", $3)); put(r, 4, $4)
        put(r, 5, $5); put(r, 6, sprintf("%.2f", $6)); put(r, 7, sprintf("x%.2f", $7))
    }
    END {
        for (r = 1; r <= NR + 1; r++) {
            printf "%-*s  %-*s  %*s %-*s | %-*s  %*s | %*s\n", w[1], cell[r, 1], w[2], cell[r, 2], w[3], cell[r, 3],
                w[4], cell[r, 4], w[5], cell[r, 5], w[6], cell[r, 6], w[7], cell[r, 7]
            if (r == 1) {
                line = ""
                for (i = 1; i <= w[1] + w[2] + w[3] + w[4] + w[5] + w[6] + w[7] + 14; i++) line = line "-"
                print line
            }
        }
    }'
END=$(date +%s.%N)
echo
echo "  wrote $REPORT ($(jq length "$REPORT") figures)"
awk -v a="$START" -v b="$END" 'BEGIN { printf "  wall time: %.0f s\n", b - a }'
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "  FAILED: ${FAILED[*]}" >&2
    exit 1
fi
