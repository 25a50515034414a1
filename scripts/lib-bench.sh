# Shared by the datapath benchmarks bench-datapath.sh, bench-wireguard.sh
# and bench-ipsec.sh (sourced after lib.sh, not run): two-host topologies of
# network namespaces, our flanneld and CNI plugin on them, and one iperf3
# run with the CPU it cost. The sourcing script sets WORK (its scratch
# directory) and SECS (iperf3's -t), and for flanneld and the CNI plugin
# NETNAME (the CNI network name), BIN (flanneld and flannel) and CNI_BIN
# (Debian's CNI plugins).

# bench_args ARG...: the benchmarks' command line, [SECONDS]: -h/--help
# prints the script's header comment (after the #! line); SECS becomes
# iperf3's -t (default 5, a positive integer); the script must run as root
# (network namespaces).
bench_args() {
    case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;; esac
    [ $# -le 1 ] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
    SECS=${1:-5}
    [[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]  (a positive integer)" >&2; exit 2; }
    [ "$(id -u)" = 0 ] || { echo "$(basename "$0") needs root (network namespaces)" >&2; exit 1; }
}

NAMESPACES=()
PIDS=()
FLANNELD_PIDS=()

# teardown: stops the processes the current topology started and deletes
# its namespaces (the scratch directory stays).
teardown() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    PIDS=()
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
    NAMESPACES=()
}

newns() { ip netns add "$1"; NAMESPACES+=("$1"); ip -n "$1" link set lo up; }

# hosts PREFIX [COUNT]: switch namespace PREFIX-sw with bridge br0, hosts
# PREFIX-h1 ... PREFIX-hCOUNT (default 2) with eth0 = 192.168.100.<i>/24 on
# it, forwarding on.
hosts() {
    local P=$1 n=${2:-2} i h
    newns "$P-sw"
    ip -n "$P-sw" link add br0 type bridge
    ip -n "$P-sw" link set br0 up
    for i in $(seq 1 "$n"); do
        h="$P-h$i"
        newns "$h"
        ip link add "${P}v$i" type veth peer name eth0 netns "$h"
        ip link set "${P}v$i" netns "$P-sw"
        ip -n "$P-sw" link set "${P}v$i" master br0 up
        ip -n "$h" addr add "192.168.100.$i/24" dev eth0
        ip -n "$h" link set eth0 up
        ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
    done
}

podip() { ip -n "$1" -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]}'; }

# start_flanneld PREFIX I [VAR=VALUE...]: flanneld on host I of topology
# PREFIX, on the local store $WORK/PREFIX/store (its `config` written by the
# caller), subnet file and log in $WORK/PREFIX/hI, VAR=VALUE added to its
# environment. Its pid goes to PIDS and FLANNELD_PIDS.
start_flanneld() {
    local P=$1 i=$2 d="$WORK/$1/h$2"
    shift 2
    mkdir -p "$d"
    ip netns exec "$P-h$i" env "$@" "$BIN/flanneld" --iface=eth0 "--subnet-file=$d/subnet.env" \
        --subnet-manager=local "--local-store-dir=$WORK/$P/store" >"$d/flanneld.log" 2>&1 &
    PIDS+=($!)
    FLANNELD_PIDS+=($!)
}

# cni_pods PREFIX LABEL CONTAINER [HOOK]: on each host of topology PREFIX,
# waits for flanneld's subnet.env (exits naming LABEL, with the log, when
# none comes), runs `HOOK PREFIX I` when given, then attaches the pod
# namespace PREFIX-pI through our CNI plugin (container id CONTAINER<I>).
cni_pods() {
    local P=$1 label=$2 cid=$3 hook=${4:-} i d out
    for i in 1 2; do
        d="$WORK/$P/h$i"
        for _ in $(seq 1 300); do [ -s "$d/subnet.env" ] && break; sleep 0.05; done
        [ -s "$d/subnet.env" ] || { echo "$label host $i: no subnet.env; log:"; cat "$d/flanneld.log"; exit 1; }
        [ -z "$hook" ] || "$hook" "$P" "$i"
        newns "$P-p$i"
        cat >"$d/cni.conf" <<CONF
{"cniVersion": "0.3.1", "name": "$NETNAME", "type": "flannel",
 "subnetFile": "$d/subnet.env", "dataDir": "$d/cni",
 "delegate": {"hairpinMode": true, "isDefaultGateway": true}}
CONF
        out=$(ip netns exec "$P-h$i" env CNI_COMMAND=ADD CNI_CONTAINERID="$cid$i" CNI_NETNS="/run/netns/$P-p$i" \
            CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" "$BIN/flannel" <"$d/cni.conf" 2>"$d/cni.log") \
            || { echo "CNI ADD failed on host $i: $out"; exit 1; }
    done
}

# lease_net OURS I: the network address of host I's lease in topology OURS
# (FLANNEL_SUBNET=10.244.33.1/24 -> 10.244.33.0).
lease_net() {
    local first
    first=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/$1/h$2/subnet.env")
    first=${first%/*}
    echo "${first%.*}.0"
}

# server PREFIX: iperf3 server in pod 2 (tracked in PIDS, so not in a subshell).
server() {
    local P=$1
    ip netns exec "$P-p2" iperf3 -s -B "$(podip "$P-p2")" >"$WORK/$P-iperf3-server.log" 2>&1 &
    PIDS+=($!)
}

# ready PREFIX: iperf3 listens in pod 2 and pod 1 reaches it; prints pod 2's IP.
ready() {
    local P=$1 dst
    dst=$(podip "$P-p2")
    for _ in $(seq 1 100); do
        [ -n "$(ip netns exec "$P-p2" ss -Htln 'sport = :5201')" ] && break
        sleep 0.1
    done
    for _ in $(seq 1 50); do
        ip netns exec "$P-p1" ping -c 1 -W 1 -q "$dst" >/dev/null 2>&1 && { echo "$dst"; return 0; }
        sleep 0.2
    done
    echo "$P: pod 1 cannot reach pod 2 ($dst)" >&2
    return 1
}

# cpu_ticks PID...: the processes' user + system CPU time, in clock ticks.
cpu_ticks() {
    local pid t=0 f
    for pid in "$@"; do
        f=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || f=0
        t=$((t + ${f:-0}))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)

# busy: the machine's busy and total CPU time so far, in jiffies (/proc/stat).
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

# measure PREFIX DST STREAMS [PID...]: one iperf3 run pod 1 -> DST with
# STREAMS streams (up to 3 tries). Prints, separated by spaces: the received
# Gbit/s; the CPU it cost in % of one core (iperf3 at both ends, from its
# own report, plus the processes PID..., e.g. flanneld); and the whole
# machine's busy cores during the run (busy over all CPU time of /proc/stat,
# times the core count, so every process counts, iperf3 included).
measure() {
    local P=$1 dst=$2 n=$3 f="$WORK/$1-iperf3.json" try v c0 c1 t0 t1 b0 a0 b1 a1 cpu cores
    shift 3
    for try in 1 2 3; do
        c0=$(cpu_ticks "$@")
        t0=$(date +%s.%N)
        read -r b0 a0 < <(busy)
        if ip netns exec "$P-p1" iperf3 -c "$dst" -t "$SECS" -P "$n" -J >"$f" 2>&1 &&
            v=$(jq -er '.end.sum_received.bits_per_second / 1e9' "$f" 2>/dev/null); then
            read -r b1 a1 < <(busy)
            c1=$(cpu_ticks "$@")
            t1=$(date +%s.%N)
            cpu=$(jq -r '.end.cpu_utilization_percent | .host_total + .remote_total' "$f")
            cpu=$(awk -v i="$cpu" -v a="$c0" -v b="$c1" -v hz="$HZ" -v s="$t0" -v e="$t1" \
                'BEGIN {printf "%.1f", i + (b - a) / hz / (e - s) * 100}')
            cores=$(awk -v b="$((b1 - b0))" -v t="$((a1 - a0))" -v n="$(nproc)" \
                'BEGIN {printf "%.3f", (t > 0 ? b / t * n : 0)}')
            echo "$v $cpu $cores"
            return 0
        fi
        echo "  iperf3 failed (try $try): $(jq -r '.error // empty' "$f" 2>/dev/null || head -c 200 "$f")" >&2
        sleep 1
    done
    exit 1
}

# handmade_pod PREFIX I MTU GW POD: the baselines' pod by hand on host I of
# topology PREFIX, as the bridge plugin would make it: bridge cni0 (GW/24,
# MTU), pod namespace PREFIX-pI with eth0 = POD/24 on a veth into cni0,
# default route via GW.
handmade_pod() {
    local P=$1 i=$2 mtu=$3 gw=$4 pod=$5 h="$1-h$2"
    ip -n "$h" link add cni0 type bridge
    ip -n "$h" link set cni0 mtu "$mtu" up
    ip -n "$h" addr add "$gw/24" dev cni0
    newns "$P-p$i"
    ip -n "$h" link add "veth$i" mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$P-p$i"
    ip -n "$h" link set "veth$i" master cni0 up
    ip -n "$P-p$i" addr add "$pod/24" dev eth0
    ip -n "$P-p$i" link set eth0 up
    ip -n "$P-p$i" route add default via "$gw"
}
