#!/usr/bin/env bash
# libvirtd + QEMU by hand, for machines without systemd (dev boxes, CI): the hypervisor mode's
# qemu:///system. Idempotent; run as root.
#
#   deploy/libvirtd.sh install   the Debian packages, the libvirt-qemu user, /dev/kvm's group
#   deploy/libvirtd.sh start     install, then start virtlogd + libvirtd in the background (pid
#                                files in $CLOUDLAND_LIBVIRT_RUN) and wait until qemu:///system answers
#   deploy/libvirtd.sh stop      stop the daemons this script started, by the PIDs in its pid files
#   deploy/libvirtd.sh status    exit 0 if qemu:///system answers
#
# install, start and stop take turns on an exclusive lock ($CLOUDLAND_LIBVIRT_LOCK), as parallel
# test sessions call them: a second start finds the daemons the first one started, and a stop
# waits for a start in progress (a start for a stop too). status takes no lock.
#
# QEMU runs as Debian's default user libvirt-qemu with dynamic_ownership (libvirt chowns a
# domain's disks to it), so a domain's files must sit in directories that user can traverse.
set -euo pipefail

RUN_DIR=${CLOUDLAND_LIBVIRT_RUN:-/run/cloudland-libvirt}
URI=qemu:///system
START_TIMEOUT_S=${CLOUDLAND_LIBVIRT_START_TIMEOUT:-120}
# Not in $RUN_DIR: callers with different pid-file directories still share one qemu:///system.
LOCK=${CLOUDLAND_LIBVIRT_LOCK:-/run/cloudland-libvirtd.lock}
LOCK_TIMEOUT_S=${CLOUDLAND_LIBVIRT_LOCK_TIMEOUT:-900}  # a start may install packages first
# The minimal set on Debian 12, without Recommends:
#   libvirt-daemon              libvirtd, virtlogd (and pulls libvirt-daemon-driver-qemu)
#   libvirt-clients             virsh, for the readiness check and by-hand debugging
#   qemu-system-x86             qemu-system-x86_64 (Debian has no smaller x86 variant)
#   qemu-utils                  qemu-img: the image cache's overlays and captures (agents/images.py)
#   busybox-static, linux-image-cloud-amd64, kmod
#                               the test guest (deploy/guest/build.sh)
#   dosfstools, mtools, syslinux, syslinux-common
#                               its bootable disk (mkfs.vfat, mcopy, the syslinux installer
#                               and mbr.bin), built without mounting anything
# Not libvirt-daemon-system: it brings polkit, iptables, a default NAT network and init
# scripts; what it would add that we need (the libvirt-qemu user, the log directories) is below.
DEBS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
      busybox-static linux-image-cloud-amd64 kmod dosfstools mtools syslinux syslinux-common"

say() { echo "libvirtd.sh: $*"; }
die() { echo "libvirtd.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root"; }

# Hold the lock on fd 9 until this script exits (the kernel drops it with the last copy of the
# fd, so a killed caller cannot leave it held). The daemons must not inherit fd 9: start_daemon
# closes it for them, else they would hold the lock for as long as they run.
lock() {
    local t0
    exec 9>"$LOCK"
    flock -n 9 && return 0
    t0=$(now)
    say "waiting for another libvirtd.sh install/start/stop to finish (lock $LOCK)"
    flock -w "$LOCK_TIMEOUT_S" 9 || die "$LOCK still held after ${LOCK_TIMEOUT_S}s (fuser -v $LOCK shows by whom)"
    say "got the lock after $(since "$t0")s"
}

install_packages() {
    local missing="" pkg
    for pkg in $DEBS; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        say "installing Debian packages:$missing"
        # Without the lock's fd: a maintainer script could start a daemon that would keep it.
        apt-get update -qq 9>&-
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null 9>&-
    fi
    # libvirtd resolves its built-in QEMU user and group (both libvirt-qemu on Debian) before it
    # reads qemu.conf, and its QEMU driver refuses to start without them. libvirt-daemon-system's
    # postinst would create them; we do it ourselves.
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    if ! getent passwd libvirt-qemu >/dev/null; then
        useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt \
            --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
    fi
    if getent group kvm >/dev/null; then
        id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm || usermod -a -G kvm libvirt-qemu
    fi
    # The daemons exit at once when their log directory is missing (the -system package makes it).
    mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu /run/libvirt
}

# libvirt keeps QEMU's capabilities cache only while /dev/kvm looks the same; a device
# readable by root alone makes it re-probe QEMU on every start (~52 s instead of ~0.1 s).
# Guests are TCG here all the same: <domain type='qemu'>.
fix_kvm() {
    if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
        chgrp kvm /dev/kvm
        chmod 660 /dev/kvm
    fi
}

answers() { virsh -c "$URI" version >/dev/null 2>&1; }

# The PID in pid file $1 if that process is alive and is program $2, else nothing.
live_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$2" ] && echo "$pid"
}

start_daemon() {  # program, then its readiness test
    local prog=$1 pidfile="$RUN_DIR/$1.pid" pid
    if pid=$(live_pid "$pidfile" "$prog"); then
        say "$prog already running (pid $pid)"
        return 0
    fi
    rm -f "$pidfile"
    "/usr/sbin/$prog" --daemon --pid-file "$pidfile" 9>&-
}

start() {
    need_root
    lock
    install_packages
    fix_kvm
    mkdir -p "$RUN_DIR"
    local pid t0
    if answers && ! live_pid "$RUN_DIR/libvirtd.pid" libvirtd >/dev/null; then
        say "$URI already answers from a libvirtd this script did not start; leaving it alone"
        return 0
    fi
    t0=$(now)
    start_daemon virtlogd
    # libvirtd connects to virtlogd's socket when a domain starts (QEMU's log, <serial><log/>).
    until [ -S /run/libvirt/virtlogd-sock ]; do
        live_pid "$RUN_DIR/virtlogd.pid" virtlogd >/dev/null || die "virtlogd exited; see /var/log/libvirt/virtlogd.log"
        sleep 0.05
    done
    start_daemon libvirtd
    until answers; do
        if ! live_pid "$RUN_DIR/libvirtd.pid" libvirtd >/dev/null; then
            tail -n 5 /var/log/libvirt/libvirtd.log >&2 || true
            die "libvirtd exited before answering; see /var/log/libvirt/libvirtd.log"
        fi
        awk -v a="$t0" -v b="$(now)" -v t="$START_TIMEOUT_S" 'BEGIN { exit !(b - a > t) }' \
            && die "$URI did not answer within ${START_TIMEOUT_S}s"
        sleep 0.05
    done
    pid=$(live_pid "$RUN_DIR/libvirtd.pid" libvirtd) || true
    say "libvirtd (pid $pid) answers on $URI after $(since "$t0")s"
}

stop_daemon() {
    local prog=$1 pidfile="$RUN_DIR/$1.pid" pid i
    if ! pid=$(live_pid "$pidfile" "$prog"); then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for i in $(seq 1 150); do  # libvirtd takes ~2 s to wind down
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$prog (pid $pid) ignored SIGTERM for 15 s; killing it"
        kill -KILL "$pid"
    fi
    rm -f "$pidfile"
    say "stopped $prog (pid $pid)"
}

stop() {
    need_root
    lock
    local running
    if live_pid "$RUN_DIR/libvirtd.pid" libvirtd >/dev/null; then
        # QEMU processes outlive libvirtd (the next libvirtd reattaches to them): say so.
        running=$(virsh -c "$URI" list --name 2>/dev/null | sed '/^$/d' | tr '\n' ' ')
        [ -z "$running" ] || say "warning: domains still running (destroy them to end their QEMU): $running"
    fi
    stop_daemon libvirtd
    stop_daemon virtlogd
}

case "${1:-start}" in
    install) need_root; lock; install_packages; fix_kvm ;;
    start) start ;;
    stop) stop ;;
    status) answers ;;
    *) die "usage: $0 install|start|stop|status" ;;
esac
