#!/usr/bin/env bash
# Host-side ipsec throughput, labelled as such: userspace ESP (strongSwan's
# kernel-libipsec) next to kernel vxlan, measured in the same run.
#
#   scripts/bench-ipsec.sh [SECONDS]     # iperf3 -t SECONDS per run (default 5)
#
# This machine's kernel has no ESP (and the VM that has one emulates its CPU,
# so its numbers mean nothing), so flannel's ipsec datapath (kernel ESP with
# the XFRM policies flanneld installs) cannot be measured here. What is
# measured instead, on two netns hosts joined by a bridge with one pod
# namespace each (10.60.1.0/24, 10.60.2.0/24):
#   ipsec-libipsec  charon on each host with kernel-libipsec, one IKEv2
#                   connection with flannel's parameters (aes256-sha256-modp4096,
#                   ESP aes128gcm16-sha256-prfsha256-ecp256, tunnel, reqid 11)
#                   but policies=yes so libipsec routes the pods' traffic
#                   through its TUN device: ESP done in userspace;
#   vxlan-kernel    the same pods over a hand-made kernel vxlan (id 1, port
#                   8472, MTU 1450): the reference.
# iperf3 pod 1 -> pod 2, 1 stream, 3 runs each, median. One JSON line per
# figure in target/bench-ipsec.jsonl (kind "reference": a different datapath).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. scripts/lib-bench.sh
ROOT=$(pwd)

bench_args "$@"
PACKAGES=(iproute2 iperf3 jq strongswan-charon strongswan-swanctl libcharon-extra-plugins
          libstrongswan-standard-plugins libstrongswan-extra-plugins)
ensure_packages "${PACKAGES[@]}"
CHARON=/usr/lib/ipsec/charon
OUT="$ROOT/target/bench-ipsec.jsonl"
mkdir -p "$ROOT/target"
WORK=$(mktemp -d /tmp/flannel-bench-ipsec.XXXXXX)
P="fbi$$"
cleanup() {
    teardown
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# topology: switch + 2 hosts (192.168.100.i, lib-bench.sh's `hosts`) + a pod
# behind each (10.60.i.2, gateway 10.60.i.1 on the host).
hosts "$P"
for i in 1 2; do
    h="$P-h$i"; p="$P-p$i"
    newns "$p"
    ip -n "$h" link add pod type veth peer name eth0 netns "$p"
    ip -n "$h" addr add "10.60.$i.1/24" dev pod
    ip -n "$h" link set pod up
    ip -n "$p" addr add "10.60.$i.2/24" dev eth0
    ip -n "$p" link set eth0 up
    ip -n "$p" route add default via "10.60.$i.1"
done

iperf() { # prints Gbit/s, median of 3
    local r vals=()
    for r in 1 2 3; do
        sleep 0.3
        ip netns exec "$P-p2" iperf3 -s -1 -D -p $((5201 + r)) >/dev/null
        vals+=("$(ip netns exec "$P-p1" iperf3 -c 10.60.2.2 -p $((5201 + r)) -t "$SECS" -J |
            jq '.end.sum_received.bits_per_second / 1e9')")
    done
    printf '%s\n' "${vals[@]}" | sort -g | sed -n 2p
}

say "kernel vxlan (reference)"
for i in 1 2; do
    o=$((3 - i))
    ip -n "$P-h$i" link add vx0 mtu 1450 type vxlan id 1 dstport 8472 local "192.168.100.$i" nolearning
    ip -n "$P-h$i" link set vx0 address "02:00:00:00:00:0$i" up
    ip -n "$P-h$i" addr add "10.60.$i.0/32" dev vx0
    ip -n "$P-h$i" neigh replace "10.60.$o.0" lladdr "02:00:00:00:00:0$o" dev vx0 nud permanent
    ip netns exec "$P-h$i" bridge fdb replace "02:00:00:00:00:0$o" dev vx0 dst "192.168.100.$o" self permanent
    ip -n "$P-h$i" route replace "10.60.$o.0/24" via "10.60.$o.0" dev vx0 onlink
done
ip netns exec "$P-p1" ping -c 1 -W 2 10.60.2.2 >/dev/null || { echo "vxlan: no ping" >&2; exit 1; }
VXLAN=$(iperf)
echo "  kernel vxlan: $VXLAN Gbit/s"
for i in 1 2; do ip -n "$P-h$i" link del vx0; done

say "ipsec, userspace ESP (kernel-libipsec)"
PSK=$(head -c 72 /dev/urandom | base64 -w0)
for i in 1 2; do
    o=$((3 - i)); d="$WORK/h$i"; mkdir -p "$d"
    cat >"$d/strongswan.conf" <<EOF
charon {
    load_modular = yes
    plugins {
        include /etc/strongswan.d/charon/*.conf
        kernel-libipsec {
            load = yes
        }
        vici {
            socket = unix://$d/charon.vici
        }
    }
}
EOF
    cat >"$d/swanctl.conf" <<EOF
connections {
    flannel {
        local_addrs = 192.168.100.$i
        remote_addrs = 192.168.100.$o
        proposals = aes256-sha256-modp4096
        version = 2
        local { auth = psk }
        remote { auth = psk }
        children {
            pods {
                local_ts = 10.60.$i.0/24
                remote_ts = 10.60.$o.0/24
                esp_proposals = aes128gcm16-sha256-prfsha256-ecp256
                mode = tunnel
                reqid = 11
                start_action = start
            }
        }
    }
}
secrets {
    ike-flannel {
        secret = "$PSK"
    }
}
EOF
    STRONGSWAN_CONF="$d/strongswan.conf" ip netns exec "$P-h$i" \
        unshare -m sh -c "mount -t tmpfs tmpfs /run && exec $CHARON" >"$d/charon.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2; do
    d="$WORK/h$i"
    for _ in $(seq 1 100); do [ -S "$d/charon.vici" ] && break; sleep 0.1; done
    swanctl --load-all --file "$d/swanctl.conf" --uri "unix://$d/charon.vici" >/dev/null 2>&1
done
for _ in $(seq 1 100); do
    ip netns exec "$P-p1" ping -c 1 -W 1 10.60.2.2 >/dev/null 2>&1 && break
done
ip netns exec "$P-p1" ping -c 1 -W 2 10.60.2.2 >/dev/null ||
    { echo "ipsec: no ping through libipsec" >&2; swanctl --list-sas --uri "unix://$WORK/h1/charon.vici" >&2; exit 1; }
IPSEC=$(iperf)
echo "  ipsec (kernel-libipsec, userspace ESP): $IPSEC Gbit/s"

jq -nc --argjson v "$IPSEC" --argjson b "$VXLAN" \
    '{name: "ipsec pod-to-pod, userspace ESP (kernel-libipsec; not flannel kernel-ESP datapath), 1 stream",
      kind: "reference", value: $v, unit: "Gbit/s", baseline_name: "kernel vxlan, same run",
      baseline_value: $b, ratio: (if $b > 0 then $v / $b else 0 end)}' >"$OUT"
cat "$OUT"
