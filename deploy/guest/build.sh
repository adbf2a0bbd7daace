#!/usr/bin/env bash
# Build the CloudLand test guest offline from installed Debian packages: the cloud kernel
# (linux-image-cloud-amd64) and an initramfs of busybox-static, the few kernel modules a
# config drive needs and deploy/guest/init. It boots by direct kernel boot (no disk image).
#
#   deploy/guest/build.sh OUTDIR     writes OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/kernel-version
#
# Packages: deploy/libvirtd.sh install. KERNEL=/boot/vmlinuz-... picks a kernel other than
# the newest cloud one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: deploy/guest/build.sh OUTDIR}

die() { echo "guest/build: $*" >&2; exit 1; }

kernel=${KERNEL:-$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)}
[ -n "$kernel" ] && [ -r "$kernel" ] \
    || die "no cloud kernel in /boot (apt-get install linux-image-cloud-amd64, or deploy/libvirtd.sh install)"
kver=${kernel#/boot/vmlinuz-}
[ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver for $kernel"
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx findfs \
    || die "no static busybox (apt-get install busybox-static)"
command -v modprobe >/dev/null || die "no modprobe (apt-get install kmod)"

# What the guest needs that the cloud kernel builds as modules (CONFIG_...=m in
# /boot/config-$kver): virtio PCI + virtio-blk (config drive as a disk), ata_piix +
# sr_mod (as an IDE CD-ROM on the i440fx "pc" machine; the cloud kernel has no AHCI, so no
# SATA CD-ROM on q35), isofs (ISO 9660), button + evdev (ACPI power button).
MODULES="virtio_pci virtio_blk ata_piix sr_mod isofs button evdev"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,root,mnt/config,lib/modules}

cp /bin/busybox "$stage/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done

# modprobe --show-depends lists each module after its dependencies; keep the first of each.
: >"$stage/lib/modules/load.list"
for module in $MODULES; do
    modprobe --show-depends --set-version "$kver" "$module" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r path; do
    name=$(basename "$path")
    case "$name" in  # busybox insmod takes plain .ko only (trixie's kernels compress them)
        *.ko.xz) xz -dc "$path" >"$stage/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$path" >"$stage/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *) cp "$path" "$stage/lib/modules/$name" ;;
    esac
    echo "$name" >>"$stage/lib/modules/load.list"
done

install -m 0755 "$here/init" "$stage/init"

mkdir -p "$out"
# Sorted names, owner root, gzip without a timestamp: the same inputs give the same archive bytes
# except for file mtimes, which busybox cpio keeps.
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | /bin/busybox cpio -o -H newc -R 0:0 2>/dev/null) \
    | gzip -9n >"$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
cp "$kernel" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$kver" >"$out/kernel-version"
echo "guest/build: $out/vmlinuz ($kver), $out/initrd.img ($(wc -l <"$stage/lib/modules/load.list") modules)"
