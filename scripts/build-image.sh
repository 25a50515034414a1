#!/usr/bin/env bash
# Builds the flanneld OCI image offline from Debian packages (no registry
# pull): a `debootstrap --variant=minbase` root of Debian bookworm with
# iptables, nftables, iproute2, ca-certificates, strongSwan's charon (the
# ipsec backend) and wireguard-tools (`wg`), our Debian package
# installed into it with dpkg, upstream's paths (/opt/bin/flanneld,
# /opt/bin/mk-docker-opts.sh, /opt/cni/bin/flannel, /flannel), packed as an
# OCI image layout with umoci.
#
#   scripts/build-image.sh                        # package-deb.sh (release) first
#   scripts/build-image.sh --deb FILE             # an existing .deb
#   scripts/build-image.sh --out DIR              # the layout's parent (target/oci)
#   scripts/build-image.sh --rootfs-cache         # only make the cached root; print its path
#
# Result: DIR/flanneld (OCI layout, tag <version>, reference name
# ghcr.io/flannel-rs/flanneld:<version>) and DIR/flanneld-<version>.oci.tar
# (the same layout as one archive: `podman load -i`, `skopeo copy
# oci-archive:...`). The debootstrap root is cached as a tarball under
# ${FLANNEL_IMAGE_CACHE:-/var/tmp/flannel-rs-image}, keyed by the suite and
# the package list, so only the first build downloads (about 30 s).
#
# Needs root, debootstrap and umoci (Debian packages of the same names).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the image carries besides minbase, as upstream's image does: the
# tools flanneld drives, the CA bundle for etcd/Kubernetes/cloud TLS,
# strongSwan's charon for the ipsec backend and wg(8) for the wireguard one.
# debootstrap follows Depends only (no Recommends). charon: Debian installs
# it at /usr/lib/ipsec/charon, on flanneld's search list; only the plugin
# packages the ipsec backend's IKEv2/PSK connections need:
#   strongswan-charon               charon; pulls strongswan-libcharon
#                                   (socket-default), libstrongswan (aes,
#                                   sha2, hmac, gmp for modp4096, kdf, nonce,
#                                   random, kernel-netlink) and
#                                   strongswan-starter (a hard dependency);
#   strongswan-swanctl              the vici plugin flanneld talks to, and
#                                   swanctl to look at charon;
#   libstrongswan-standard-plugins  openssl (ecp256 of the default ESP
#                                   proposal) and gcm; 0.4 MB, its libssl3
#                                   and libip4tc2 are already in the root.
# Left out: libcharon-extra-plugins (kernel-libipsec, EAP, ...) and
# libstrongswan-extra-plugins (curve25519, curl, ldap, tpm, ...): not used by
# flannel's proposals, and the latter pulls curl, ldap and tpm libraries.
IMAGE_PACKAGES=(iptables nftables iproute2 ca-certificates
                strongswan-charon strongswan-swanctl libstrongswan-standard-plugins
                wireguard-tools)
IMAGE_NAME=ghcr.io/flannel-rs/flanneld
CACHE=${FLANNEL_IMAGE_CACHE:-/var/tmp/flannel-rs-image}

deb=""
out=target/oci
cache_only=false
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) deb=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --rootfs-cache) cache_only=true; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

need() {
    command -v "$1" >/dev/null || { echo "build-image.sh: $1 is missing (Debian package $2)" >&2; exit 1; }
}
[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (debootstrap, chroot, umoci)" >&2; exit 1; }
need debootstrap debootstrap

# The cached minbase root: made once, trimmed of what an image does not need
# (apt lists and archives, manuals, translations; copyright files stay).
key=$(printf '%s\n' "$SUITE" "${IMAGE_PACKAGES[@]}" | sha256sum | cut -c1-12)
rootfs_tar=$CACHE/rootfs-$SUITE-minbase-$key.tar
if [ ! -s "$rootfs_tar" ]; then
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "==> debootstrap --variant=minbase $SUITE (+ ${IMAGE_PACKAGES[*]}), cached in $rootfs_tar" >&2
    pkgs=$(IFS=,; echo "${IMAGE_PACKAGES[*]}")
    debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$tmp/root" "$MIRROR" > "$tmp/log" 2>&1 \
        || { tail -20 "$tmp/log" >&2; echo "build-image.sh: debootstrap failed (log above)" >&2; exit 1; }
    r=$tmp/root
    rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/var/log/* \
           "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/*
    find "$r/usr/share/doc" -type f ! -name copyright -delete
    find "$r/usr/share/doc" -type d -empty -delete
    tar -C "$r" --numeric-owner -cf "$tmp/rootfs.tar" .
    mv "$tmp/rootfs.tar" "$rootfs_tar"
    rm -rf "$tmp"
    trap - EXIT
fi
if $cache_only; then
    echo "$rootfs_tar"
    exit 0
fi

need umoci umoci
need chroot coreutils
if [ -z "$deb" ]; then
    deb=$(scripts/package-deb.sh | tail -1)
fi
[ -f "$deb" ] || { echo "build-image.sh: no package at $deb" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)

work=$out/work
layout=$out/flanneld
rm -rf "$work" "$layout"
mkdir -p "$work/root"
tar -C "$work/root" --numeric-owner -xf "$rootfs_tar"

# Our package, installed the way a Debian host installs it.
cp "$deb" "$work/root/tmp/flanneld.deb"
chroot "$work/root" dpkg -i /tmp/flanneld.deb >&2
rm -f "$work/root/tmp/flanneld.deb"
rm -rf "$work/root"/var/log/* "$work/root"/var/cache/debconf/*-old
# Upstream image paths: the entrypoint and the Docker helper in /opt/bin,
# the CNI plugin where upstream's install-cni-plugin init container copies
# it from (/flannel) and /opt/cni/bin (from the package).
mkdir -p "$work/root/opt/bin"
ln -s /usr/bin/flanneld "$work/root/opt/bin/flanneld"
install -m 0755 dist/mk-docker-opts.sh "$work/root/opt/bin/mk-docker-opts.sh"
ln -s /usr/lib/cni/flannel "$work/root/flannel"
chroot "$work/root" /opt/bin/flanneld --version >&2

# Pack: umoci diffs the bundle's rootfs against the empty base image, so
# the root becomes one layer.
tag=$version
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
rmdir "$work/bundle/rootfs"
mv "$work/root" "$work/bundle/rootfs"
umoci repack --image "$layout:$tag" "$work/bundle"
commit=$(chroot "$work/bundle/rootfs" flanneld --version | sed -n 's/^git commit: //p')
umoci config --image "$layout:$tag" \
    --config.entrypoint /opt/bin/flanneld \
    --config.env PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=flanneld" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$commit" \
    --config.label "org.opencontainers.image.source=https://github.com/flannel-rs/flannel" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.ref.name=$IMAGE_NAME:$version" \
    --history.created_by "scripts/build-image.sh (debootstrap $SUITE minbase + $(basename "$deb"))" \
    --manifest.annotation "org.opencontainers.image.ref.name=$IMAGE_NAME:$version"
umoci gc --layout "$layout"
rm -rf "$work"
archive=$out/flanneld-$version.oci.tar
tar -C "$layout" -cf "$archive" .
echo "==> $IMAGE_NAME:$version: layout $layout (tag $tag), archive $archive ($(du -h "$archive" | cut -f1))" >&2
echo "$layout:$tag"
