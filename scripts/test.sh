#!/usr/bin/env bash
# Every test of the workspace, from a fresh Debian machine.
#
#   scripts/test.sh            # as root: installs missing Debian packages first
#   FUZZ_SECONDS=60 scripts/test.sh
#
# Steps: Debian build/test dependencies (apt-get, root only), rustfmt check,
# clippy with -D warnings, the feature builds (flanneld with no backend and
# with each backend alone, flannel-subnet without default features), rustdoc
# with -D warnings, the whole test suite
# (unit, property, integration tests against real etcd), the install paths
# (Debian package, OCI image, documentation site: scripts/test-packaging.sh),
# then a short bounded fuzz run of every parser.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# etcd-server: real etcd for the subnet manager tests; protobuf-compiler and
# libprotobuf-dev: etcd-client's build; containernetworking-plugins: the real
# bridge/host-local CNI plugins; iproute2/iputils-ping/iptables/nftables:
# datapath and end-to-end tests;
# curl: TLS checks against etcd; procps: kill(1), which tests use to signal
# the daemons they started. The install-path tests (scripts/test-packaging.sh):
# binutils (strip) for the Debian package, systemd (systemd-analyze verify of
# its units), debootstrap (the image's Debian minbase root, cached under
# /var/tmp), umoci (packs the OCI image), runc (runs it), jq (edits the
# runtime config).
# wireguard-tools (`wg show`/`wg set`) and tcpdump (the underlay carries no
# plaintext): the wireguard backend's tests.
# qemu-system-x86, busybox-static, kmod, xz-utils: scripts/vm-run.sh, the VM
# (Debian's kernel under qemu) in which the ipip/ESP/WireGuard tests run,
# since this kernel has none of them.
# strongswan-charon, strongswan-swanctl, libcharon-extra-plugins (kernel-libipsec),
# libstrongswan-standard-plugins, libstrongswan-extra-plugins: the ipsec
# backend's charon in its tests (host and VM); tcpdump: the ipsec test's
# underlay capture.
PACKAGES=(protobuf-compiler libprotobuf-dev etcd-server containernetworking-plugins
          iproute2 iputils-ping iptables nftables curl ca-certificates procps
          binutils systemd debootstrap umoci runc jq
          qemu-system-x86 busybox-static kmod xz-utils
          strongswan-charon strongswan-swanctl libcharon-extra-plugins
          libstrongswan-standard-plugins libstrongswan-extra-plugins tcpdump wireguard-tools)
# kubernetes-client: kubectl (1.20), a real client the fake Kubernetes API
# server is checked against (flannel-testutil/tests/kube_fake.rs). Another
# package's kubectl (e.g. Google Cloud SDK's, which owns /usr/bin/kubectl and
# so conflicts with this package) is used as it is.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)
ensure_packages "${PACKAGES[@]}"

step() { echo; echo "==> $*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# Each feature set the crates document must build on its own: flanneld with
# no backend and with each backend alone, flannel-subnet without its default
# store. clippy checks like `cargo check` (same artifacts, no codegen, so a
# few seconds each) and with -D warnings also fails on what only shows up in
# these builds: unused imports and dead code left by cfg gating.
step "feature builds (flanneld per backend, flannel-subnet without defaults)"
for features in "" vxlan host-gw alloc tencent-vpc udp ipip ipsec wireguard kube; do
    echo "  flanneld --no-default-features${features:+ --features $features}"
    cargo clippy -q -p flanneld --all-targets --no-default-features ${features:+--features "$features"} -- -D warnings
done
for features in "" etcd kube; do
    echo "  flannel-subnet --no-default-features${features:+ --features $features}"
    cargo clippy -q -p flannel-subnet --all-targets --no-default-features ${features:+--features "$features"} -- -D warnings
done

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet

step "cargo test"
cargo test --workspace --all-features --no-fail-fast

# The install paths from the debug binaries cargo test just built: the
# Debian package (systemd-analyze verify, dpkg -i into a fresh debootstrap
# root), the OCI image run with runc, and the documentation site.
step "install paths: Debian package, OCI image, documentation site"
scripts/test-packaging.sh --bin-dir "${CARGO_TARGET_DIR:-target}/debug"

step "fuzz (${FUZZ_SECONDS:-20} s per target)"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

echo
echo "==> all tests passed"
