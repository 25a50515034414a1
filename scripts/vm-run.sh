#!/usr/bin/env bash
# Runs a command as root inside a throwaway QEMU VM booting Debian's stock
# kernel, for the tests that need kernel features this machine's kernel lacks
# (ipip, ESP, kernel WireGuard). The VM sees the host's whole root file system
# read-only over virtio-9p, under a tmpfs overlay: the same binaries at the same
# paths (cargo test binaries, etcd, ip, charon), writes thrown away at power-off.
# It has no network card: nothing inside can reach the outside.
#
#   scripts/vm-run.sh 'shell command'      # run by bash in the caller's $PWD
#   scripts/vm-run.sh -- prog arg...       # argv run as given (usable as a cargo runner)
#
# Exit status: the command's; 124 when VM_TIMEOUT expires; 125 when the VM
# could not run the command (missing prerequisite, boot failure: the console
# tail is printed).
#
# Environment:
#   VM_HOME     cache directory (default /var/tmp/flannel-vm): the kernel package
#               unpacked, the initramfs, one directory per run
#   VM_KPKG     kernel package (default: what linux-image-amd64 depends on)
#   VM_SMP      vCPUs (default 2)      VM_MEM   MiB of guest memory (default 1024)
#   VM_TIMEOUT  seconds before the VM is killed (default 900)
#   VM_CONSOLE  1: print the guest kernel console at the end
#
# The caller's exported environment is passed into the VM (that is how tests
# tell their inner run apart: FLANNEL_IN_VM=1). /tmp and /run are fresh tmpfs
# inside (the host's are not visible), except the /tmp/<dir> the caller works
# in (a checkout under /tmp), which stays visible.
#
# Host packages: qemu-system-x86 busybox-static kmod xz-utils (and apt-get's
# access to Debian's archive the first time, to download the kernel).
#
# Why it is built this way (each point was found by a failure):
# * KVM is unusable on this machine (a PVM host), so the guest runs under TCG
#   software emulation; booting the uncompressed ELF vmlinux through its PVH
#   note skips the firmware and in-guest decompression (seconds under TCG).
# * The kernel's request_module() runs the modprobe helper in PID 1's root,
#   the initramfs, not the chroot the command runs in: /proc/sys/kernel/modprobe
#   points at a wrapper that chroots first, so `ip link add type ipip` and
#   `rfc4106(gcm(aes))` load their modules on demand.
# * devtmpfs lacks /dev/fd & co. and the static nodes (/dev/net/tun) udev and
#   kmod would make; /init makes them.
# * virtio-serial ports appear asynchronously after the driver binds: /init
#   polls for them. The command's stdout and stderr travel over them (a UART is
#   ~15x slower) and stay pipes, not ttys.
# * The command runs in its own cgroup, killed when it exits, so a daemon it
#   left behind cannot keep the VM (and the output relays) alive.
set -euo pipefail

VM_HOME=${VM_HOME:-/var/tmp/flannel-vm}
VM_SMP=${VM_SMP:-2}
VM_MEM=${VM_MEM:-1024}
VM_TIMEOUT=${VM_TIMEOUT:-900}

fail() { echo "vm-run: $*" >&2; exit 125; }

[ $# -ge 1 ] || { echo "usage: $0 'command' | $0 -- prog arg..." >&2; exit 2; }
for tool in qemu-system-x86_64:qemu-system-x86 depmod:kmod modprobe:kmod xz:xz-utils dpkg:dpkg; do
    command -v "${tool%%:*}" >/dev/null ||
        fail "${tool%%:*} is missing: install the Debian package ${tool#*:}"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 ||
    fail "a static $BUSYBOX is needed for the initramfs: install the Debian package busybox-static"

# The guest's PID 1. Kept here so the repository carries all of the harness.
guest_init() {
    cat <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "[vm-init] $*" > /dev/ttyS0; }
die() { say "FATAL: $*"; poweroff -f; }
RUN=; KMODS=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmrun.dir=*) RUN=${arg#*=} ;;
        vmrun.kmods=*) KMODS=${arg#*=} ;;
    esac
done
[ -n "$RUN" ] || die "no vmrun.dir on the kernel command line"
for m in virtio_pci 9pnet_virtio 9p overlay virtio_console; do
    modprobe $m || die "cannot load $m"
done
OUT=; ERR=; i=0
while [ $i -lt 400 ]; do
    for port in /sys/class/virtio-ports/*; do
        case "$(cat $port/name 2>/dev/null)" in
            vmrun.out) OUT=/dev/${port##*/} ;;
            vmrun.err) ERR=/dev/${port##*/} ;;
        esac
    done
    [ -c "$OUT" ] && [ -c "$ERR" ] && break
    i=$((i + 1)); sleep 0.05
done
[ -c "$OUT" ] && [ -c "$ERR" ] || die "the virtio-serial ports never appeared"
NINEP="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /host /scratch /root
mount -t 9p -o $NINEP,ro,cache=loose hostroot /host || die "cannot mount the host root"
mount -t tmpfs -o mode=755 tmpfs /scratch && mkdir -p /scratch/upper /scratch/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/scratch/upper,workdir=/scratch/work /root ||
    die "cannot mount the overlay"
R=/root
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
# /tmp is a fresh tmpfs, but a caller working in a tree under /tmp (a CI
# checkout in /tmp/<dir>) must still see it: keep /tmp/<dir> of the caller's
# directory, as the overlay shows it (host files, writes thrown away).
mkdir -p /early && mount -t 9p -o $NINEP rundir /early || die "cannot mount the run directory"
KEEP=$(sed -n 's|^\(/tmp/[^/][^/]*\).*|\1|p' /early/cwd)
umount /early
if [ -n "$KEEP" ] && [ -d "$R$KEEP" ]; then
    mkdir -p /keep && mount --bind "$R$KEEP" /keep
fi
mount -t tmpfs tmpfs $R/tmp
if [ -n "$KEEP" ] && [ -d /keep ]; then
    mkdir -p "$R$KEEP" && mount --move /keep "$R$KEEP"
fi
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
K=$(uname -r)
mkdir -p $R/lib/modules/$K
mount --bind $R$KMODS/$K $R/lib/modules/$K || die "cannot bind the module tree"
grep -v '^#' $R/lib/modules/$K/modules.devname 2>/dev/null | while read -r mod node spec; do
    [ -e $R/dev/$node ] && continue
    case $node in */*) mkdir -p $R/dev/${node%/*} ;; esac
    kind=${spec%${spec#?}}; nums=${spec#?}
    mknod -m 0666 $R/dev/$node $kind ${nums%:*} ${nums#*:}
done
mkdir -p $R$RUN
mount -t 9p -o $NINEP rundir $R$RUN || die "cannot mount the run directory"
printf '#!/bin/busybox sh\nexec /bin/busybox chroot /root /sbin/modprobe "$@"\n' > /bin/modprobe-in-root
chmod 755 /bin/modprobe-in-root
echo /bin/modprobe-in-root > /proc/sys/kernel/modprobe
hostname vm
ip link set lo up
say "ready after $(cut -d' ' -f1 /proc/uptime) s"
mkfifo /out /err
cat /out > $OUT &
RELAY1=$!
cat /err > $ERR &
RELAY2=$!
mkdir -p /cg && mount -t cgroup2 cgroup2 /cg && mkdir /cg/job
cat > /job.sh <<EOF
echo \$\$ > /cg/job/cgroup.procs
exec chroot $R /bin/bash -c 'cd "\$(cat $RUN/cwd)" 2>/dev/null || cd /; . $RUN/env; exec /bin/bash $RUN/cmd'
EOF
sh /job.sh < /dev/null > /out 2> /err
rc=$?
echo 1 > /cg/job/cgroup.kill
wait $RELAY1 $RELAY2
echo $rc > $R$RUN/rc
say "the command exited with $rc after $(cut -d' ' -f1 /proc/uptime) s"
sync
umount $R$RUN
poweroff -f
INIT
}

mkdir -p "$VM_HOME"
exec 9>"$VM_HOME/.lock"
flock 9

# One-time: the kernel package, unpacked (never installed into /boot).
if [ ! -s "$VM_HOME/kernel/version" ]; then
    kpkg=${VM_KPKG:-}
    resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    [ -n "$kpkg" ] || kpkg=$(resolve)
    if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 || true; kpkg=$(resolve); fi
    [ -n "$kpkg" ] || fail "cannot resolve the package behind linux-image-amd64 (run apt-get update)"
    echo "vm-run: unpacking $kpkg into $VM_HOME/kernel (once)" >&2
    rm -rf "$VM_HOME/kernel" "$VM_HOME/download"
    mkdir -p "$VM_HOME/kernel" "$VM_HOME/download"
    (cd "$VM_HOME/download" && apt-get download "$kpkg" >&2 2>/dev/null) ||
        fail "apt-get download $kpkg failed"
    dpkg -x "$VM_HOME/download/${kpkg}"_*.deb "$VM_HOME/kernel/root"
    rm -rf "$VM_HOME/download"
    kver=$(ls "$VM_HOME/kernel/root/lib/modules")
    depmod -b "$VM_HOME/kernel/root" "$kver"
    # The bzImage carries the kernel as an xz stream; the ELF inside boots via PVH.
    bz="$VM_HOME/kernel/root/boot/vmlinuz-$kver"
    offset=$(LC_ALL=C grep -m1 -obUaP '\xfd7zXZ\x00' "$bz" | cut -d: -f1 || true)
    if [ -n "$offset" ] && tail -c +$((offset + 1)) "$bz" | xz -dc --single-stream \
            > "$VM_HOME/kernel/vmlinux" 2>/dev/null &&
       [ "$(head -c 4 "$VM_HOME/kernel/vmlinux" | tail -c 3)" = ELF ]; then
        :
    else
        cp "$bz" "$VM_HOME/kernel/vmlinux"
    fi
    echo "$kver" > "$VM_HOME/kernel/version"
fi
KVER=$(cat "$VM_HOME/kernel/version")
KROOT=$VM_HOME/kernel/root

# The initramfs: static busybox, the modules that reach the host root, /init.
# Named after a hash of /init so a changed script rebuilds it.
INIT_HASH=$(guest_init | md5sum | cut -c1-12)
INITRD=$VM_HOME/kernel/initrd-$KVER-$INIT_HASH.gz
if [ ! -s "$INITRD" ]; then
    tree=$(mktemp -d "$VM_HOME/initrd.XXXXXX")
    mkdir -p "$tree/bin" "$tree/lib/modules/$KVER"
    cp "$BUSYBOX" "$tree/bin/busybox"
    for m in virtio_pci 9pnet_virtio 9p overlay virtio_console; do
        modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
    done | sort -u | while read -r ko; do
        rel=${ko#"$KROOT"/}
        mkdir -p "$tree/$(dirname "$rel")" && cp "$ko" "$tree/$rel"
    done
    cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$tree/lib/modules/$KVER/"
    depmod -b "$tree" "$KVER"
    guest_init > "$tree/init" && chmod 755 "$tree/init"
    (cd "$tree" && find . | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) > "$INITRD.part"
    mv "$INITRD.part" "$INITRD"
    rm -rf "$tree"
fi
flock -u 9

# One run: a directory shared read-write with the guest at the same path.
mkdir -p "$VM_HOME/runs"
RUN=$(mktemp -d "$VM_HOME/runs/run.XXXXXX")
RELAYS=()
cleanup() {
    for pid in "${RELAYS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT
if [ "$1" = "--" ]; then
    shift
    printf '%q ' exec "$@" > "$RUN/cmd"
    echo >> "$RUN/cmd"
else
    printf '%s\n' "$*" > "$RUN/cmd"
fi
pwd > "$RUN/cwd"
export -p | grep -vE '^declare -x (HOSTNAME|OLDPWD|PWD|SHLVL|TERM|_)=' > "$RUN/env" || true

# qemu's "pipe" chardev writes <path>.out and reads <path>.in.
mkfifo "$RUN/o.in" "$RUN/o.out" "$RUN/e.in" "$RUN/e.out"
cat "$RUN/o.out" & RELAYS+=($!)
cat "$RUN/e.out" >&2 & RELAYS+=($!)
set +e
timeout -k 5 "$VM_TIMEOUT" qemu-system-x86_64 \
    -nodefaults -no-user-config -display none -no-reboot -M pc \
    -accel tcg,thread=multi,tb-size=256 -cpu max -smp "$VM_SMP" -m "$VM_MEM" \
    -kernel "$VM_HOME/kernel/vmlinux" -initrd "$INITRD" \
    -append "console=ttyS0 loglevel=4 panic=-1 mitigations=off vmrun.dir=$RUN vmrun.kmods=$KROOT/lib/modules" \
    -serial "file:$RUN/console.log" \
    -device virtio-serial-pci,id=ser \
    -chardev "pipe,id=o,path=$RUN/o" -device virtserialport,bus=ser.0,chardev=o,name=vmrun.out \
    -chardev "pipe,id=e,path=$RUN/e" -device virtserialport,bus=ser.0,chardev=e,name=vmrun.err \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$RUN,mount_tag=rundir,security_model=none,multidevs=remap" \
    < /dev/null
qemu_rc=$?
# Opening a FIFO read-write never blocks: this ends a relay whose writer never came.
for f in "$RUN/o.out" "$RUN/e.out"; do exec 8<>"$f"; exec 8>&-; done
wait "${RELAYS[@]}"
RELAYS=()
set -e
if [ "${VM_CONSOLE:-0}" = 1 ]; then
    echo "----- guest console -----" >&2
    cat "$RUN/console.log" >&2
fi
if [ -s "$RUN/rc" ]; then
    exit "$(cat "$RUN/rc")"
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    echo "vm-run: the VM was killed after VM_TIMEOUT=${VM_TIMEOUT}s" >&2
    exit 124
fi
echo "vm-run: the VM stopped (qemu exit status $qemu_rc) before the command finished; console tail:" >&2
tail -n 30 "$RUN/console.log" >&2 || true
exit 125
