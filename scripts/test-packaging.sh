#!/usr/bin/env bash
# Tests of the install paths, run by scripts/test.sh after `cargo test` (whose
# debug binaries it packages, so nothing is compiled again):
#
#   1. the Debian package: built, its files and control fields checked;
#   2. its systemd units pass `systemd-analyze verify` (flanneld.service, and
#      docker.service with the package's drop-in) in a root holding the
#      package's files and the host's systemd units;
#   3. `dpkg -i` into a fresh Debian minbase root (the image's cached
#      debootstrap root): the installed flanneld, the CNI plugin and
#      mk-docker-opts.sh run; `dpkg -r` and `--purge` remove them;
#   4. the OCI image: built from that package, unpacked by umoci and run with
#      runc in a new network namespace: `flanneld --version`,
#      `iptables -t nat -L`, `nft list ruleset`, `mk-docker-opts.sh`,
#      `wg --version`, charon where flanneld looks for it, and flanneld with
#      the ipsec backend (local store) starting the image's charon, loading
#      its PSK over VICI and writing subnet.env;
#   5. the documentation site: built and checked (flannel-docs).
#
#   scripts/test-packaging.sh [--bin-dir target/debug]
#
# Needs root, dpkg, systemd (systemd-analyze), debootstrap, umoci, runc, jq.
# A missing one fails its check naming it. Prints the package and image
# sizes and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

bin_dir=${CARGO_TARGET_DIR:-target}/debug
[ "${1:-}" = --bin-dir ] && bin_dir=$2
work=$(mktemp -d /var/tmp/flannel-rs-pkgtest.XXXXXX)
cid=flannel-rs-pkgtest-$$
cleanup() {
    runc delete -f "$cid" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
ok() { echo "  ok: $*"; passed=$((passed + 1)); }
fail() { echo "  FAILED: $*" >&2; failed=$((failed + 1)); }
# check DESCRIPTION COMMAND...: passes when COMMAND exits 0.
check() {
    local what=$1; shift
    if out=$("$@" 2>&1); then ok "$what"; else fail "$what"; echo "$out" | tail -20 | sed 's/^/    /' >&2; fi
}
need() {
    for t in "$@"; do
        command -v "$t" >/dev/null || { fail "$t is missing (install its Debian package)"; return 1; }
    done
}
finish() {
    echo
    echo "packaging: $passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit $?
}

echo "==> Debian package"
need dpkg-deb || finish
deb=$(scripts/package-deb.sh --bin-dir "$bin_dir" --out "$work/deb" --compress gzip 2>"$work/deb.log" | tail -1)
if [ ! -f "$deb" ]; then
    fail "package-deb.sh built no package"; cat "$work/deb.log" >&2; finish
fi
ok "built $(basename "$deb")"
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/bin/flanneld ./usr/lib/cni/flannel ./opt/cni/bin/flannel ./lib/systemd/system/flanneld.service \
         ./etc/default/flanneld ./usr/libexec/flanneld/mk-docker-opts.sh \
         ./usr/share/doc/flanneld/examples/docker.service.d/flannel.conf ./usr/share/man/man8/flanneld.8.gz \
         ./usr/share/doc/flanneld/copyright; do
    grep -qx -- "$f" <<<"$contents" || fail "the package lacks $f"
done
ok "the package has every file"
check "conffiles lists /etc/default/flanneld" sh -c "dpkg-deb --ctrl-tarfile '$deb' | tar -xO ./conffiles | grep -qx /etc/default/flanneld"
check "Depends: libc6 (>= 2.x), libgcc-s1, iproute2, iptables" sh -c \
    "dpkg-deb -f '$deb' Depends | grep -Eqx 'libc6 \\(>= 2\\.[0-9]+\\), libgcc-s1, iproute2, iptables'"

echo "==> systemd-analyze verify"
if need systemd-analyze; then
    root=$work/units
    dpkg-deb -x "$deb" "$root"
    # The host's units (sysinit.target, network-online.target, ...) that
    # ours refer to, a docker.service like Docker's own, and the drop-in.
    cp -a /lib/systemd/system/. "$root/lib/systemd/system/"
    printf '[Unit]\nDescription=Docker Application Container Engine\n[Service]\nExecStart=/usr/bin/dockerd -H fd://\n' \
        > "$root/lib/systemd/system/docker.service"
    install -D -m 0755 /bin/true "$root/usr/bin/dockerd"
    install -D -m 0644 "$root/usr/share/doc/flanneld/examples/docker.service.d/flannel.conf" \
        "$root/etc/systemd/system/docker.service.d/flannel.conf"
    for unit in flanneld.service docker.service; do
        # --man=no: the Documentation=man: page is in the package, not on the host.
        out=$(systemd-analyze verify --man=no --root="$root" "$unit" 2>&1); rc=$?
        # Any message (an unknown key is only a warning) counts as a failure.
        if [ $rc = 0 ] && [ -z "$out" ]; then ok "systemd-analyze verify $unit"; else fail "systemd-analyze verify $unit: $out"; fi
    done
    unit=$root/lib/systemd/system/flanneld.service
    for line in Type=notify EnvironmentFile=-/etc/default/flanneld After=network-online.target \
                Wants=network-online.target Restart=on-failure KillMode=process; do
        grep -qx "$line" "$unit" || fail "flanneld.service lacks $line"
    done
    ok "flanneld.service has Type=notify, the environment file, network-online, Restart and KillMode"
fi

echo "==> dpkg -i into a fresh Debian root"
if need debootstrap chroot; then
    rootfs_tar=$(scripts/build-image.sh --rootfs-cache 2>"$work/rootfs.log" | tail -1)
    if [ ! -f "$rootfs_tar" ]; then
        fail "no debootstrap root"; cat "$work/rootfs.log" >&2
    else
        fresh=$work/fresh
        mkdir -p "$fresh"
        tar -C "$fresh" --numeric-owner -xf "$rootfs_tar"
        cp "$deb" "$fresh/tmp/flanneld.deb"
        check "dpkg -i flanneld.deb in the fresh root" chroot "$fresh" dpkg -i /tmp/flanneld.deb
        version=$(chroot "$fresh" flanneld --version 2>&1)
        if [ "$(sed -n 1p <<<"$version")" = "flanneld $(dpkg-deb -f "$deb" Version)" ] \
           && grep -q '^backends: vxlan host-gw' <<<"$version"; then
            ok "the installed flanneld --version: $(tr '\n' ';' <<<"$version")"
        else
            fail "the installed flanneld --version printed: $version"
        fi
        check "the installed CNI plugin answers VERSION" sh -c \
            "chroot '$fresh' env CNI_COMMAND=VERSION /opt/cni/bin/flannel </dev/null | grep -q cniVersion"
        printf 'FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n' > "$fresh/tmp/subnet.env"
        # No `ip route` here: the chroot shares the host's network, so the
        # route check runs against the host's table (no 10.1.74.0/24 route).
        check "the installed mk-docker-opts.sh writes Docker options" sh -c \
            "chroot '$fresh' /usr/libexec/flanneld/mk-docker-opts.sh -f /tmp/subnet.env -d /tmp/docker_opts.env -c \
             && grep -qx 'DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"' '$fresh/tmp/docker_opts.env'"
        check "man flanneld is installed" test -s "$fresh/usr/share/man/man8/flanneld.8.gz"
        check "dpkg -r removes flanneld, keeps the conffile" sh -c \
            "chroot '$fresh' dpkg -r flanneld >/dev/null && ! test -e '$fresh/usr/bin/flanneld' \
             && ! test -e '$fresh/opt/cni/bin/flannel' && test -f '$fresh/etc/default/flanneld'"
        check "dpkg --purge removes /etc/default/flanneld" sh -c \
            "chroot '$fresh' dpkg --purge flanneld >/dev/null && ! test -e '$fresh/etc/default/flanneld'"
        rm -rf "$fresh"
    fi
fi

echo "==> OCI image"
if need umoci runc jq; then
    ref=$(scripts/build-image.sh --deb "$deb" --out "$work/oci" 2>"$work/image.log" | tail -1)
    layout=${ref%:*}
    if [ ! -f "$layout/index.json" ]; then
        fail "build-image.sh made no image"; tail -20 "$work/image.log" >&2
    else
        ok "built the image $ref"
        check "the image is labelled ghcr.io/flannel-rs/flanneld:<version>" \
            grep -rq "ghcr.io/flannel-rs/flanneld:$(dpkg-deb -f "$deb" Version)" "$layout/blobs"
        bundle=$work/bundle
        umoci unpack --image "$ref" "$bundle" >/dev/null 2>"$work/unpack.log" || { fail "umoci unpack"; cat "$work/unpack.log" >&2; }
        check "the image's entrypoint is /opt/bin/flanneld" \
            sh -c "jq -e '.process.args[0] == \"/opt/bin/flanneld\"' '$bundle/config.json'"
        # run ARGS...: the image's default runtime config (new pid, network,
        # ipc, uts and mount namespaces) with ARGS as the process (each one
        # a JSON string, so a multi-line `sh -c` script stays one argument)
        # and the capabilities iptables and charon need.
        run() {
            local args
            args=$(for a in "$@"; do jq -n --arg a "$a" '$a'; done | jq -sc .)
            jq --argjson args "$args" '
                .process.args = $args | .process.terminal = false
                | .process.capabilities |= with_entries(.value = (.value + ["CAP_NET_ADMIN", "CAP_NET_RAW"] | unique))' \
                "$bundle/config.json" > "$bundle/config.json.new" && mv "$bundle/config.json.new" "$bundle/config.json"
            runc run --bundle "$bundle" "$cid" </dev/null
        }
        check "the image runs in a network namespace of its own" \
            sh -c "jq -e '[.linux.namespaces[].type] | index(\"network\")' '$bundle/config.json'"
        out=$(run /opt/bin/flanneld --version 2>&1)
        if grep -q '^flanneld ' <<<"$out" && grep -q '^backends: ' <<<"$out"; then ok "runc: flanneld --version"; else fail "runc: flanneld --version: $out"; fi
        out=$(run sh -c 'test -x /flannel && test -x /opt/cni/bin/flannel && CNI_COMMAND=VERSION /flannel' 2>&1)
        if grep -q cniVersion <<<"$out"; then ok "runc: the CNI plugin at /flannel and /opt/cni/bin/flannel"; else fail "runc: /flannel: $out"; fi
        out=$(run iptables -t nat -L 2>&1)
        if grep -q '^Chain POSTROUTING' <<<"$out"; then ok "runc: iptables -t nat -L"; else fail "runc: iptables -t nat -L: $out"; fi
        out=$(run sh -c 'nft add table ip probe && nft list ruleset' 2>&1)
        if grep -q 'table ip probe' <<<"$out"; then ok "runc: nft list ruleset"; else fail "runc: nft: $out"; fi
        out=$(run sh -c 'printf "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\n" >/tmp/s.env && /opt/bin/mk-docker-opts.sh -f /tmp/s.env -d /tmp/o.env -i && cat /tmp/o.env' 2>&1)
        if grep -qx 'DOCKER_OPT_BIP="--bip=10.1.74.1/24"' <<<"$out"; then ok "runc: /opt/bin/mk-docker-opts.sh"; else fail "runc: mk-docker-opts.sh: $out"; fi
        out=$(run wg --version 2>&1)
        if grep -q '^wireguard-tools v' <<<"$out"; then ok "runc: wg --version"; else fail "runc: wg --version: $out"; fi
        # Debian's charon is where flanneld's search list (after $PATH) has it.
        charon=/usr/lib/ipsec/charon
        if grep -q "\"$charon\"" flannel-backend-ipsec/src/charon.rs \
           && run test -x "$charon" >/dev/null 2>&1; then
            ok "runc: charon at $charon, on flanneld's search list"
        else
            fail "runc: no charon at $charon, or flannel-backend-ipsec's SEARCH_PATHS lacks it"
        fi
        # flanneld with the ipsec backend on the local store, on a veth of
        # the container's own network namespace (CAP_NET_ADMIN and
        # CAP_NET_RAW only): it finds and starts the image's charon (no
        # --charon-executable-path), loads its PSK over the VICI socket and
        # writes subnet.env; swanctl then lists charon's plugins.
        psk=$(printf 'k%.0s' $(seq 1 96))
        out=$(run sh -c '
            ip link add flannel-probe type veth peer name flannel-peer && ip link set flannel-peer up \
                && ip addr add 192.0.2.10/24 dev flannel-probe && ip link set flannel-probe up || exit 1
            mkdir -p /run/flannel/store
            printf "{\"Network\": \"10.5.0.0/16\", \"Backend\": {\"Type\": \"ipsec\", \"PSK\": \"%s\"}}" "$1" \
                >/run/flannel/store/config
            /opt/bin/flanneld --iface=flannel-probe --subnet-manager=local --local-store-dir=/run/flannel/store \
                --subnet-file=/run/flannel/subnet.env >/tmp/flanneld.log 2>&1 &
            for _ in $(seq 1 150); do [ -s /run/flannel/subnet.env ] && break; sleep 0.1; done
            test -S /run/charon.vici && echo "vici socket: yes"
            swanctl --stats 2>/dev/null | grep "^loaded plugins:"
            kill $!; wait
            cat /run/flannel/subnet.env /tmp/flanneld.log' probe "$psk" 2>&1)
        missing=""
        for want in "starting charon: $charon" "vici socket: yes" "loaded IKE shared key with id 'flannel-192.0.2.10'" \
                    "FLANNEL_NETWORK=10.5.0.0/16" "charon stopped"; do
            grep -qF -- "$want" <<<"$out" || missing+=" [$want]"
        done
        plugins=$(sed -n 's/^loaded plugins: //p' <<<"$out" | head -1)
        for p in vici kernel-netlink socket-default openssl gmp aes sha2; do
            grep -qw -- "$p" <<<"$plugins" || missing+=" [plugin $p]"
        done
        if [ -z "$missing" ]; then
            ok "runc: flanneld (ipsec) starts the image's charon, loads its PSK over VICI, writes subnet.env"
        else
            fail "runc: flanneld with the ipsec backend: missing$missing in:"; sed 's/^/    /' <<<"$out" >&2
        fi
        image_size=$(du -b "$layout"/blobs/sha256/* | sort -n | tail -1 | cut -f1)
        rootfs_size=$(du -sb "$bundle/rootfs" | cut -f1)
    fi
fi

echo "==> documentation site"
if [ -x "$bin_dir/flannel-docs" ]; then
    check "flannel-docs build (checked, rendered to target/docs-site)" "$bin_dir/flannel-docs" build docs/src "${CARGO_TARGET_DIR:-target}/docs-site"
else
    fail "$bin_dir/flannel-docs is missing (cargo build -p flannel-docs)"
fi

echo
echo "sizes: package $(basename "$deb") $(du -b "$deb" | cut -f1) bytes (gzip; debug build, stripped)"
[ -n "${image_size:-}" ] && echo "       image layer ${image_size} bytes compressed, root file system ${rootfs_size} bytes"
finish
