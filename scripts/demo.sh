#!/usr/bin/env bash
# flannel-rs demo: three "hosts" (network namespaces on one bridge), one
# flanneld per host, one "pod" per host attached through our `flannel` CNI
# plugin (which delegates to Debian's real `bridge` and `host-local`), and
# pod-to-pod pings across every pair of hosts.
#
#   scripts/demo.sh                     # vxlan on the embedded local store
#   scripts/demo.sh --backend host-gw   # host-gw instead; also udp or wireguard
#                                       # (userspace WireGuard: this kernel has none)
#   scripts/demo.sh --etcd              # a real etcd instead of the local store
#   scripts/demo.sh --kube              # Kubernetes mode (--kube-subnet-mgr) on the test
#                                       # suite's fake API server (no kube-apiserver here)
#   scripts/demo.sh --keep              # leave everything running (Ctrl-C cleans up)
#
# Run as root on Debian; it installs what it needs and builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. scripts/lib-bench.sh
ROOT=$(pwd)

BACKEND=vxlan
USE_ETCD=0
USE_KUBE=0
KEEP=0
HOSTS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) BACKEND="$2"; shift 2 ;;
        --backend=*) BACKEND="${1#*=}"; shift ;;
        --etcd) USE_ETCD=1; shift ;;
        --kube) USE_KUBE=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
# ipip and ipsec need kernel support this machine lacks (their tests run in a VM).
case "$BACKEND" in vxlan|host-gw|udp|wireguard) ;; *) echo "--backend must be vxlan, host-gw, udp or wireguard" >&2; exit 2 ;; esac
[ "$USE_ETCD$USE_KUBE" = 11 ] && { echo "--etcd and --kube exclude each other" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root (network namespaces)" >&2; exit 1; }

START=$(date +%s.%N)

PACKAGES=(iproute2 iputils-ping iptables containernetworking-plugins protobuf-compiler libprotobuf-dev)
[ "$USE_ETCD" = 1 ] && PACKAGES+=(etcd-server etcd-client)
# kubectl shows the Nodes' annotations in Kubernetes mode.
[ "$USE_KUBE" = 1 ] && ! command -v kubectl >/dev/null && PACKAGES+=(kubernetes-client)
ensure_packages "${PACKAGES[@]}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

say "building flanneld and the flannel CNI plugin (release)"
cargo build --release -q -p flanneld -p flannel-cni
if [ "$USE_KUBE" = 1 ]; then
    say "building the fake Kubernetes API server (release)"
    cargo build --release -q -p flannel-benches --bin fake_kube_apiserver
fi
BIN="$ROOT/target/release"
CNI_BIN=/usr/lib/cni

WORK=$(mktemp -d /tmp/flannel-demo.XXXXXX)
TAG="fd$$"
SW="${TAG}-sw"
PIDS=()
cleanup() {
    set +e
    # CNI DEL first, so host-local releases its reservations.
    for i in $(seq 1 $HOSTS); do
        [ -f "$WORK/h$i/cni.conf" ] || continue
        ip netns exec "${TAG}-h$i" env CNI_COMMAND=DEL CNI_CONTAINERID="pod$i" CNI_NETNS="/run/netns/${TAG}-p$i" \
            CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" "$BIN/flannel" <"$WORK/h$i/cni.conf" >/dev/null 2>&1
    done
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for i in $(seq 1 $HOSTS); do
        ip netns del "${TAG}-p$i" 2>/dev/null
        ip netns del "${TAG}-h$i" 2>/dev/null
    done
    ip netns del "$SW" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "topology: $HOSTS hosts on bridge br0 (192.168.100.0/24)"
hosts "$TAG" "$HOSTS"
ip -n "$SW" addr add 192.168.100.254/24 dev br0
for i in $(seq 1 $HOSTS); do mkdir -p "$WORK/h$i"; done

NETCONF="{\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"$BACKEND\"}}"
STORE_ARGS=()
NODE_ENV=0
if [ "$USE_KUBE" = 1 ]; then
    say "starting the fake Kubernetes API server on https://192.168.100.254:6443 (in the switch namespace)"
    NODE_ARGS=()
    for i in $(seq 1 $HOSTS); do
        NODE_ARGS+=(--node "h$i=10.244.$i.0/24" --internal-ip "h$i=192.168.100.$i")
    done
    ip netns exec "$SW" "$BIN/fake_kube_apiserver" --listen 192.168.100.254:6443 \
        --kubeconfig "$WORK/kubeconfig" "${NODE_ARGS[@]}" >"$WORK/apiserver.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do grep -q '^ready' "$WORK/apiserver.log" 2>/dev/null && break; sleep 0.05; done
    grep -q '^ready' "$WORK/apiserver.log" || { echo "the fake API server did not start:"; cat "$WORK/apiserver.log"; exit 1; }
    echo "  Nodes h1..h$HOSTS with podCIDRs 10.244.<i>.0/24; kubeconfig $WORK/kubeconfig"
    echo "$NETCONF" >"$WORK/net-conf.json"
    STORE_ARGS=(--kube-subnet-mgr "--kubeconfig-file=$WORK/kubeconfig" "--net-config-path=$WORK/net-conf.json")
    NODE_ENV=1
elif [ "$USE_ETCD" = 1 ]; then
    say "starting etcd on 192.168.100.254:2379 (in the switch namespace)"
    ip netns exec "$SW" etcd --data-dir "$WORK/etcd" --name demo \
        --listen-client-urls http://192.168.100.254:2379 --advertise-client-urls http://192.168.100.254:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster demo=http://127.0.0.1:2380 --logger=zap --log-outputs=stderr --log-level=error \
        >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        ip netns exec "$SW" etcdctl --endpoints=http://192.168.100.254:2379 endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
    ETCDCTL_API=3 ip netns exec "$SW" etcdctl --endpoints=http://192.168.100.254:2379 \
        put /coreos.com/network/config "$NETCONF" >/dev/null
    STORE_ARGS=(--etcd-endpoints=http://192.168.100.254:2379)
else
    say "embedded local store in $WORK/store"
    mkdir -p "$WORK/store"
    echo "$NETCONF" >"$WORK/store/config"
    STORE_ARGS=(--subnet-manager=local "--local-store-dir=$WORK/store")
fi

say "starting flanneld ($BACKEND) on every host"
T0=$(date +%s.%N)
for i in $(seq 1 $HOSTS); do
    # In Kubernetes mode each flanneld acts for its Node (NODE_NAME, as the
    # DaemonSet's downward API would set it).
    NODE_NAME_ENV=()
    [ "$NODE_ENV" = 1 ] && NODE_NAME_ENV=("NODE_NAME=h$i")
    # The hosts share one filesystem: each WireGuard host keeps its own key
    # file and its own control-socket directory (`wg` would look in
    # /var/run/wireguard, which all of them would share).
    [ "$BACKEND" = wireguard ] && NODE_NAME_ENV+=("WIREGUARD_KEY_FILE=$WORK/h$i/wgkey"
        "FLANNEL_WIREGUARD_SOCKET_DIR=$WORK/h$i/wg")
    ip netns exec "${TAG}-h$i" env "${NODE_NAME_ENV[@]}" "$BIN/flanneld" --iface=eth0 "--subnet-file=$WORK/h$i/subnet.env" "${STORE_ARGS[@]}" \
        >"$WORK/h$i/flanneld.log" 2>&1 &
    PIDS+=($!)
done
for i in $(seq 1 $HOSTS); do
    for _ in $(seq 1 300); do [ -s "$WORK/h$i/subnet.env" ] && break; sleep 0.05; done
    [ -s "$WORK/h$i/subnet.env" ] || { echo "host $i: no subnet.env; log:"; cat "$WORK/h$i/flanneld.log"; exit 1; }
done
T1=$(date +%s.%N)

say "attaching one pod per host through the flannel CNI plugin"
declare -a POD_IP
for i in $(seq 1 $HOSTS); do
    p="${TAG}-p$i"
    ip netns add "$p"
    cat >"$WORK/h$i/cni.conf" <<EOF
{"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
 "subnetFile": "$WORK/h$i/subnet.env", "dataDir": "$WORK/h$i/cni",
 "delegate": {"hairpinMode": true, "isDefaultGateway": true}}
EOF
    out=$(ip netns exec "${TAG}-h$i" env CNI_COMMAND=ADD CNI_CONTAINERID="pod$i" CNI_NETNS="/run/netns/$p" \
        CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" "$BIN/flannel" <"$WORK/h$i/cni.conf") \
        || { echo "CNI ADD failed on host $i: $out"; exit 1; }
    POD_IP[$i]=$(ip -n "$p" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
    echo "  host $i pod: ${POD_IP[$i]}"
done

say "pod-to-pod pings across all hosts"
FAILED=0
for i in $(seq 1 $HOSTS); do
    for j in $(seq 1 $HOSTS); do
        [ "$i" = "$j" ] && continue
        if ip netns exec "${TAG}-p$i" ping -c 2 -i 0.2 -W 2 -q "${POD_IP[$j]}" >/dev/null 2>&1; then
            echo "  pod $i (${POD_IP[$i]}) -> pod $j (${POD_IP[$j]}): ok"
        else
            echo "  pod $i (${POD_IP[$i]}) -> pod $j (${POD_IP[$j]}): FAILED"
            FAILED=1
        fi
    done
done

for i in $(seq 1 $HOSTS); do
    say "host $i subnet.env"
    cat "$WORK/h$i/subnet.env"
done
say "host 1 kernel state"
ip -n "${TAG}-h1" route show | sed 's/^/  /'
if [ "$BACKEND" = vxlan ]; then
    ip -n "${TAG}-h1" -d link show flannel.1 | sed 's/^/  /' | head -3
    ip -n "${TAG}-h1" neigh show dev flannel.1 | sed 's/^/  /'
fi
if [ "$USE_KUBE" = 1 ]; then
    say "the Nodes' flannel annotations (kubectl against the fake API server)"
    for i in $(seq 1 $HOSTS); do
        echo "  h$i:"
        ip netns exec "$SW" kubectl --kubeconfig "$WORK/kubeconfig" --cache-dir "$WORK/kubectl-cache" \
            get node "h$i" -o go-template='{{range $k, $v := .metadata.annotations}}    {{$k}}={{$v}}{{"\n"}}{{end}}' \
            || echo "    (kubectl failed)"
        ip netns exec "$SW" kubectl --kubeconfig "$WORK/kubeconfig" --cache-dir "$WORK/kubectl-cache" \
            get node "h$i" -o go-template='{{range .status.conditions}}{{if eq .type "NetworkUnavailable"}}    condition NetworkUnavailable={{.status}} ({{.reason}}: {{.message}}){{"\n"}}{{end}}{{end}}' \
            || true
    done
fi
RSS=$(ps -o rss= -p "${PIDS[-1]}" 2>/dev/null | tr -d ' ')
END=$(date +%s.%N)
say "summary"
STORE_NAME="local store"
[ "$USE_ETCD" = 1 ] && STORE_NAME=etcd
[ "$USE_KUBE" = 1 ] && STORE_NAME="Kubernetes API (fake API server)"
echo "  backend:              $BACKEND ($STORE_NAME)"
awk -v a="$T0" -v b="$T1" 'BEGIN { printf "  flanneld start -> all subnet.env: %.0f ms\n", (b - a) * 1000 }'
echo "  flanneld RSS (host $HOSTS): ${RSS:-?} KiB"
awk -v a="$START" -v b="$END" 'BEGIN { printf "  demo wall time:       %.1f s\n", b - a }'
if [ "$FAILED" = 0 ]; then echo "  result:               all pods reach each other"; else echo "  result:               SOME PINGS FAILED"; fi
if [ "$KEEP" = 1 ]; then
    say "--keep: namespaces ${TAG}-* stay up; press Ctrl-C to clean up"
    while true; do sleep 3600; done
fi
exit "$FAILED"
