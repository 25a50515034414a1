#!/usr/bin/env bash
# flannel-rs soak: flanneld under continuous pod traffic while leases churn,
# etcd restarts and flanneld daemons restart (SIGTERM, now and then kill -9).
#
#   scripts/soak.sh [MINUTES]        # as root on Debian; default 10 minutes
#   SOAK_SEED=N scripts/soak.sh 10   # replay a schedule (the seed is printed)
#
# Not part of test.sh (it takes MINUTES by design). Installs what is missing
# (apt), builds flanneld, the flannel CNI plugin and the soak program in
# release mode, then runs benches/src/bin/soak.rs: 3 netns hosts with one pod
# each on a real etcd (vxlan), every pod pinging every other 5 times a
# second, one random disruption every 2-8 s. It stops by itself after
# MINUTES, checks that every host routes exactly the fake leases left in etcd
# and drops them once they are deleted, and that the pods still reach each
# other, prints a report and a table of figures (kind "reference") and
# writes the whole report to target/soak-report.json. Exit status 1 if the
# soak could not run or the check after it failed; lost pings are reported,
# not judged.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib.sh
ROOT=$(pwd)

case "${1:-}" in -h|--help) sed -n '2,18p' "$0"; exit 0 ;; esac
[ $# -le 1 ] || { echo "usage: $0 [MINUTES]  (see --help)" >&2; exit 2; }
MINUTES=${1:-10}
[ "$(id -u)" = 0 ] || { echo "soak.sh needs root (network namespaces)" >&2; exit 1; }

PACKAGES=(iproute2 iputils-ping etcd-server containernetworking-plugins iptables procps
          protobuf-compiler libprotobuf-dev)
ensure_packages "${PACKAGES[@]}" || exit 1
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

say "building flanneld, the flannel CNI plugin and the soak program (release)"
cargo build --release -q -p flanneld -p flannel-cni || exit 1
cargo build --release -q -p flannel-benches --bin soak || exit 1

say "soak for $MINUTES minutes"
SEED_ARGS=()
[ -n "${SOAK_SEED:-}" ] && SEED_ARGS=(--seed "$SOAK_SEED")
exec "$ROOT/target/release/soak" "$MINUTES" "${SEED_ARGS[@]}" --report "$ROOT/target/soak-report.json"
