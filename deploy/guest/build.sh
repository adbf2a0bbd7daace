#!/usr/bin/env bash
# Build the CloudLand test guest offline from installed Debian packages: the cloud kernel
# (linux-image-cloud-amd64) and an initramfs of busybox-static, the few kernel modules a
# config drive needs and deploy/guest/init. The same kernel and initramfs boot two ways:
#   - by direct kernel boot (libvirt's <kernel>/<initrd>): OUTDIR/vmlinuz + OUTDIR/initrd.img;
#   - from a bootable disk, as a VM made from an uploaded image does: OUTDIR/guest.raw, and
#     the same disk as OUTDIR/guest.qcow2. SeaBIOS runs the MBR (syslinux's mbr.bin), which
#     chains to the active partition's boot sector: syslinux, on a FAT16 file system holding
#     vmlinuz, initrd.img and syslinux.cfg. Nothing is mounted: the partition table is
#     written with printf, the file system by mkfs.vfat --offset, the files copied in with
#     mtools, the boot sector and ldlinux.sys written by syslinux's mtools-based installer.
#
#   deploy/guest/build.sh OUTDIR     writes OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/kernel-version,
#                                    OUTDIR/guest.raw, OUTDIR/guest.qcow2
#
# Packages: deploy/libvirtd.sh install. KERNEL=/boot/vmlinuz-... picks a kernel other than
# the newest cloud one; CMDLINE=... the kernel command line the disk boots with (by default
# the one tests/realvm/test_boot.py gives its direct kernel boot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: deploy/guest/build.sh OUTDIR}
PATH=$PATH:/usr/sbin:/sbin  # mkfs.vfat, from a root shell without sbin in its PATH
CMDLINE=${CMDLINE:-console=ttyS0 quiet}
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
# The disk: a 1 MiB gap before the partition (as partitioning tools leave), then one FAT16
# partition with room to spare; the disk grows past MIN_DISK_MIB if the kernel needs it.
PART_START=2048  # in 512-byte sectors
MIN_DISK_MIB=32

die() { echo "guest/build: $*" >&2; exit 1; }

kernel=${KERNEL:-$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)}
[ -n "$kernel" ] && [ -r "$kernel" ] \
    || die "no cloud kernel in /boot (apt-get install linux-image-cloud-amd64, or deploy/libvirtd.sh install)"
kver=${kernel#/boot/vmlinuz-}
[ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver for $kernel"
# Not grep -q: under pipefail its early exit can kill busybox with SIGPIPE, failing the check.
[ -x /bin/busybox ] && /bin/busybox --list | grep -x findfs >/dev/null \
    || die "no static busybox (apt-get install busybox-static)"
command -v modprobe >/dev/null || die "no modprobe (apt-get install kmod)"
# The disk's tools, checked before anything is built.
command -v mkfs.vfat >/dev/null || die "no mkfs.vfat (apt-get install dosfstools)"
command -v mcopy >/dev/null || die "no mcopy (apt-get install mtools)"
command -v syslinux >/dev/null || die "no syslinux installer (apt-get install syslinux)"
[ -r "$SYSLINUX_MBR" ] || die "no $SYSLINUX_MBR (apt-get install syslinux-common)"
command -v qemu-img >/dev/null || die "no qemu-img (apt-get install qemu-utils)"

# What the guest needs that the cloud kernel builds as modules (CONFIG_...=m in
# /boot/config-$kver): virtio PCI + virtio-blk (config drive as a disk), ata_piix +
# sr_mod (as an IDE CD-ROM on the i440fx "pc" machine; the cloud kernel has no AHCI, so no
# SATA CD-ROM on q35), isofs (ISO 9660), button + evdev (ACPI power button), virtio_net
# (its NICs: a DHCP client on eth0 prints its lease on the console, issue 11).
MODULES="virtio_pci virtio_blk ata_piix sr_mod isofs button evdev virtio_net"

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

# -- the bootable disk ---------------------------------------------------------------------

# Bytes for printf, little-endian: one byte, a 32-bit number, the CHS triple of an LBA
# (255 heads, 63 sectors a track; FE FF FF past cylinder 1023, where only LBA counts).
byte() { printf "\\x$(printf %02x $(($1 & 255)))"; }
le32() { byte "$1"; byte $(($1 >> 8)); byte $(($1 >> 16)); byte $(($1 >> 24)); }
chs() {
    local c=$(($1 / (255 * 63))) h=$((($1 / 63) % 255)) s=$(($1 % 63 + 1))
    if [ "$c" -gt 1023 ]; then byte 0xfe; byte 0xff; byte 0xff; return; fi
    byte "$h"; byte $((s | (c >> 8) << 6)); byte "$c"
}

payload=$(($(stat -c %s "$out/vmlinuz") + $(stat -c %s "$out/initrd.img")))
disk_mib=$(((payload >> 20) + 8))  # + ldlinux.sys/.c32 (~180 KiB), the FATs, slack
[ "$disk_mib" -ge "$MIN_DISK_MIB" ] || disk_mib=$MIN_DISK_MIB
sectors=$((disk_mib * 2048))
part_sectors=$((sectors - PART_START))
offset=$((PART_START * 512))  # bytes, for mtools and syslinux
raw="$out/guest.raw.tmp"
export MTOOLS_SKIP_CHECK=1  # mtools would complain about an image file's geometry

rm -f "$raw" "$out/guest.qcow2.tmp"
truncate -s "${disk_mib}M" "$raw"
# The MBR: syslinux's boot code (440 bytes), one active partition of type 0x0e (FAT16 LBA), 55 AA.
dd if="$SYSLINUX_MBR" of="$raw" bs=440 count=1 conv=notrunc status=none
{ byte 0x80; chs "$PART_START"; byte 0x0e; chs $((sectors - 1)); le32 "$PART_START"; le32 "$part_sectors"; } \
    | dd of="$raw" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none
# Labelled CLOUDLAND, not config-2: the guest's /init takes only an ISO 9660 config-2 volume.
mkfs.vfat -F 16 -n CLOUDLAND -h "$PART_START" --offset "$PART_START" --invariant "$raw" \
    $((part_sectors / 2)) >/dev/null || die "mkfs.vfat failed on $raw"
printf '%s\n' "SERIAL 0 115200" "PROMPT 0" "TIMEOUT 0" "DEFAULT linux" "LABEL linux" \
    "  KERNEL vmlinuz" "  APPEND initrd=initrd.img $CMDLINE" >"$stage/syslinux.cfg"
mcopy -m -i "$raw@@$offset" "$out/vmlinuz" "$out/initrd.img" "$stage/syslinux.cfg" :: \
    || die "mcopy could not copy the kernel and initramfs into $raw"
syslinux --install --offset "$offset" "$raw" || die "syslinux could not install its boot sector in $raw"
qemu-img convert -f raw -O qcow2 "$raw" "$out/guest.qcow2.tmp" || die "qemu-img convert failed on $raw"
mv "$raw" "$out/guest.raw"
mv "$out/guest.qcow2.tmp" "$out/guest.qcow2"
echo "guest/build: $out/guest.raw, $out/guest.qcow2 (${disk_mib} MiB disk: MBR, FAT16 partition, syslinux)"
