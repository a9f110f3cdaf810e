#!/usr/bin/env bash
# Builds what the test VM boots, into a cache directory (default .build/vm): an uncompressed
# ELF vmlinux extracted from Debian's /boot/vmlinuz-<kver> (qemu enters it through the PVH entry
# point, which skips the kernel's own XZ decompression: ~6 s under TCG), and an initramfs with a
# static busybox, the virtio/9p/overlay modules and scripts/vm/guest/init.
# busybox-static is fetched with `apt-get download` and unpacked, never installed: installing it
# would remove Debian's dynamic busybox.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CLAWPEN_VM_CACHE:-$here/../../.build/vm}
mkdir -p "$cache" && cache=$(cd "$cache" && pwd)
kver=${CLAWPEN_VM_KVER:-$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V | tail -n 1)}
[[ -n $kver && -r /boot/vmlinuz-$kver ]] || { echo "build-image: no /boot/vmlinuz-* (install linux-image-amd64: scripts/install-deps)" >&2; exit 1; }
stamp="$kver $(sha256sum "$here/guest/init" | cut -c1-16)"
if [[ -r $cache/vmlinux && -r $cache/initramfs.cpio.gz && "$(cat "$cache/stamp" 2>/dev/null)" == "$stamp" ]]; then
  exit 0
fi
if [[ ! -x $cache/busybox/bin/busybox ]]; then
  get() { (cd "$cache" && rm -f busybox-static_*.deb && apt-get -o APT::Sandbox::User=root download busybox-static >/dev/null); }
  get || { apt-get update -qq && get; } || { echo "build-image: cannot download busybox-static" >&2; exit 1; }
  rm -rf "$cache/busybox" && dpkg-deb -x "$cache"/busybox-static_*.deb "$cache/busybox"
fi
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay)
root=$cache/initramfs
rm -rf "$root" && mkdir -p "$root"/{bin,proc,sys,dev,mods}
cp "$cache/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"; done
for m in "${modules[@]}"; do
  f=$(modinfo -k "$kver" -F filename "$m" 2>/dev/null || true)
  case "$f" in
    *.ko) cp "$f" "$root/mods/$m.ko" ;;
    *.ko.xz) xz -dc "$f" > "$root/mods/$m.ko" ;;
    *) echo "build-image: kernel module $m not found for $kver" >&2; exit 1 ;;
  esac
done
printf '%s\n' "${modules[@]}" > "$root/mods/order"
install -m 0755 "$here/guest/init" "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$cache/initramfs.cpio.gz"
python3 - "/boot/vmlinuz-$kver" "$cache/vmlinux" <<'PY'
import lzma, sys
image = open(sys.argv[1], 'rb').read()
start = image.find(b'\xfd7zXZ\x00')
if start < 0:
    sys.exit("build-image: the kernel image holds no XZ stream")
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(image[start:])
if elf[:4] != b'\x7fELF':
    sys.exit("build-image: the XZ stream is not an ELF kernel")
open(sys.argv[2], 'wb').write(elf)
PY
echo "$stamp" > "$cache/stamp"
echo "build-image: $cache/vmlinux and initramfs.cpio.gz for $kver"
