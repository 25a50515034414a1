#!/usr/bin/env bash
# Builds the Debian package flanneld_<version>_<arch>.deb with dpkg-deb from
# a staged tree (nothing beyond dpkg and binutils' strip is needed).
#
#   scripts/package-deb.sh                          # release build, then package
#   scripts/package-deb.sh --bin-dir target/debug   # package binaries already built
#   scripts/package-deb.sh --out DIR                # where the .deb goes (target/deb)
#   scripts/package-deb.sh --compress gzip          # xz (default, smallest), gzip (fast), none
#
# Releases use the default (a release build of flanneld, the flannel CNI
# plugin and flannel-docs, which generates the man page and
# /etc/default/flanneld). The tests package the debug binaries that
# `cargo test` already built (--bin-dir target/debug), which keeps CI from
# compiling the workspace a second time; binaries are stripped either way.
#
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
out=target/deb
compress=xz
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --compress) compress=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "package-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ -z "$bin_dir" ]; then
    cargo build --release -p flanneld -p flannel-cni -p flannel-docs >&2
    bin_dir=${CARGO_TARGET_DIR:-target}/release
fi
for b in flanneld flannel flannel-docs; do
    [ -x "$bin_dir/$b" ] || { echo "package-deb.sh: $bin_dir/$b is missing (build it first, or omit --bin-dir)" >&2; exit 1; }
done
for tool in dpkg-deb strip objdump gzip; do
    command -v "$tool" >/dev/null || { echo "package-deb.sh: $tool is missing (Debian packages dpkg, binutils, gzip)" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

# install MODE SRC DEST (DEST relative to the package root)
put() { install -D -m "$1" "$2" "$stage/$3"; }

put 0755 "$bin_dir/flanneld" usr/bin/flanneld
# Debian's CNI plugins live in /usr/lib/cni (containernetworking-plugins);
# most runtimes look in /opt/cni/bin.
put 0755 "$bin_dir/flannel" usr/lib/cni/flannel
mkdir -p "$stage/opt/cni/bin"
ln -s ../../../usr/lib/cni/flannel "$stage/opt/cni/bin/flannel"
strip --strip-unneeded "$stage/usr/bin/flanneld" "$stage/usr/lib/cni/flannel"

put 0644 dist/systemd/flanneld.service lib/systemd/system/flanneld.service
put 0644 dist/systemd/docker.service.d/flannel.conf usr/share/doc/flanneld/examples/docker.service.d/flannel.conf
put 0755 dist/mk-docker-opts.sh usr/libexec/flanneld/mk-docker-opts.sh
mkdir -p "$stage/etc/default" "$stage/usr/share/man/man8"
"$bin_dir/flannel-docs" default-env > "$stage/etc/default/flanneld"
"$bin_dir/flannel-docs" man | gzip -9n > "$stage/usr/share/man/man8/flanneld.8.gz"
cat > "$stage/usr/share/doc/flanneld/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: flannel-rs
Source: https://github.com/flannel-rs/flannel

Files: *
Copyright: flannel-rs developers
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

size_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
# The newest glibc symbol version the binaries use (what dpkg-shlibdeps
# would compute); libgcc_s is for Rust's unwinder.
glibc=$(objdump -T "$stage/usr/bin/flanneld" "$stage/usr/lib/cni/flannel" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
cat > "$stage/DEBIAN/control" <<EOF
Package: flanneld
Version: $version
Architecture: $arch
Maintainer: flannel-rs developers <flannel-rs@users.noreply.github.com>
Installed-Size: $size_kib
Depends: libc6 (>= $glibc), libgcc-s1, iproute2, iptables
Recommends: nftables, containernetworking-plugins
Suggests: etcd-server
Section: net
Priority: optional
Homepage: https://github.com/flannel-rs/flannel
Description: flannel overlay network daemon (Rust reimplementation)
 flanneld gives each host a subnet of a container overlay network, leased
 from etcd, the Kubernetes API or a local store, programs the datapath of
 the configured backend (vxlan, host-gw, ...) and writes the subnet to
 /run/flannel/subnet.env for the flannel CNI plugin or Docker. It is wire
 compatible with Go flanneld (same etcd keys, net-conf.json, subnet.env,
 flags and FLANNELD_* variables).
 .
 This package contains flanneld with a systemd unit (Type=notify), the
 flannel CNI plugin, mk-docker-opts.sh and a docker.service drop-in example.
EOF
echo /etc/default/flanneld > "$stage/DEBIAN/conffiles"
# The unit is neither enabled nor started: flanneld needs a datastore and a
# network configuration first. systemd only has to see the new unit file.
cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Stopping leaves the datapath in place (flanneld never tears it down).
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop flanneld.service || true
fi
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

deb=$out/flanneld_${version}_${arch}.deb
dpkg-deb --root-owner-group "-Z$compress" --build "$stage" "$deb" >&2
echo "$deb"
