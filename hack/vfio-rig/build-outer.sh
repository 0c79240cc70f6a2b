#!/usr/bin/env bash
# Builds the nested-VFIO rig's outer guest: an initramfs made of two cpio layers.
#
# Usage: hack/vfio-rig/build-outer.sh --bin-dir BUILD_DIR [--out DIR] [--force]
#   --bin-dir  a configured and built vmgpu tree (agent/vmgpu-agent, shim/vmgpu-shim,
#              cli/vmgpuctl are taken from it, with the libraries ldd names)
#   --out      where outer.cpio and outer.info go (default: BUILD_DIR/vfio-rig)
#   --force    rebuild the base layer even when it is up to date
#
# The base layer (cached in ${VMGPU_RIG_CACHE:-build/vfio-rig}, rebuilt only when an input
# changes) holds what does not depend on our code: busybox-static and the kernel modules of the
# test guest's Debian kernel (vfio, vfio_iommu_type1, vfio-pci, e1000e, virtio_pci, tun, 9p),
# QEMU with its ldd libraries, TCG module and firmware, and the inner guest (the test guest of
# hack/build-test-guest.sh: vmlinux plus shim/guest/init.c as /init). The Debian packages come
# from that script's private apt cache; nothing is installed for the guest.
#
# The project layer is made on every run: vmgpu-agent, vmgpu-shim and vmgpuctl with their
# libraries, /etc/vmgpu/config.yaml, and the rig's /init and test driver. The kernel unpacks
# the two archives one after the other, so outer.cpio is simply their concatenation.
#
# outer.info gets KERNEL=<the outer kernel to boot> (the same vmlinux as the inner guest).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
prog=vfio-rig/build-outer

bin_dir=""
out=""
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=${2:?--bin-dir needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "$prog: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }

[ -n "$bin_dir" ] || die "--bin-dir is required"
bin_dir=$(cd "$bin_dir" && pwd)
agent=$bin_dir/agent/vmgpu-agent
shim=$bin_dir/shim/vmgpu-shim
ctl=$bin_dir/cli/vmgpuctl
for b in "$agent" "$shim" "$ctl"; do
  [ -x "$b" ] || die "$b is missing: build the tree first (cmake --build $bin_dir)"
done
out=${out:-$bin_dir/vfio-rig}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${VMGPU_RIG_CACHE:-$root/build/vfio-rig}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

for t in cpio depmod modprobe ldd dpkg-deb python3; do
  command -v "$t" >/dev/null || die "$t is missing (hack/install-deps.sh test)"
done
qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 is missing (apt install qemu-system-x86)"
qemu=$(readlink -f "$qemu")

# --- the inner guest (and, through its cache, the kernel and busybox packages) -----------------
guest=${VMGPU_RIG_GUEST:-$root/build/test-guest/x86_64}
"$root/hack/build-test-guest.sh" --arch x86_64 --out "$guest" >&2
info() { sed -n "s/^$1=//p" "$guest/kernel.info"; }
kpkg=$(info KERNEL_PACKAGE) kver_pkg=$(info KERNEL_VERSION) kver=$(info KERNEL_RELEASE)
bb_ver=$(info BUSYBOX_VERSION) guest_inputs=$(info INPUTS)
[ "$(info KERNEL_FORMAT)" = vmlinux ] || die "$guest/kernel is not an x86 vmlinux"
guest_cache=${VMGPU_GUEST_CACHE:-$root/build/test-guest/.cache}
deb_of() {  # the .deb that build-test-guest.sh downloaded: $1 = package, $2 = version
  compgen -G "$guest_cache/debs/$1_${2//:/%3a}_amd64/*.deb" | head -1 || true
}
kdeb=$(deb_of "$kpkg" "$kver_pkg")
bbdeb=$(deb_of busybox-static "$bb_ver")
[ -n "$kdeb" ] && [ -n "$bbdeb" ] ||
  die "the kernel or busybox package is not in $guest_cache/debs (run hack/build-test-guest.sh --force)"

# Modules of the outer guest. The PCI drivers are loaded first so that the rig sees a device
# move from its host driver to vfio-pci and back.
modules=(virtio_pci e1000e vfio vfio_iommu_type1 vfio_pci tun 9pnet_virtio 9p)
qemu_ver=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || "$qemu" --version | head -1)
tcg_mod=/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
# Firmware the inner QEMU reads: SeaBIOS (qboot hangs with VFIO devices present), the PVH and
# linuxboot option ROMs for -kernel, kvmvapic.
firmware=(/usr/share/seabios/bios-256k.bin /usr/share/qemu/pvh.bin
          /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/linuxboot.bin
          /usr/share/qemu/kvmvapic.bin)
for f in "$tcg_mod" "${firmware[@]}"; do [ -f "$f" ] || die "$f is missing (qemu-system-x86)"; done

base_inputs=$( {
  echo "kernel=$kpkg=$kver_pkg busybox=$bb_ver qemu=$qemu_ver guest=$guest_inputs"
  echo "modules=${modules[*]} firmware=${firmware[*]}"
  sha256sum "$0" "$qemu" | awk '{print $1}'
} | sha256sum | awk '{print $1}')

# --- helpers -----------------------------------------------------------------------------------
copy_elf() {  # $1 = root, $2.. = ELF files: each at its own path, with its libraries
  local r=$1 b l; shift
  for b in "$@"; do
    mkdir -p "$r$(dirname "$b")"
    cp -L "$b" "$r$b"
    for l in $(ldd "$b" | grep -oE '/[^ ]+'); do
      [ -e "$r$l" ] && continue
      mkdir -p "$r$(dirname "$l")"
      cp -L "$l" "$r$l"
    done
  done
}
mkcpio() {  # $1 = directory, $2 = output (uncompressed newc: the kernel reads it fastest)
  (cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --quiet --reproducible) >"$2.tmp"
  mv -f "$2.tmp" "$2"
}

# --- base layer --------------------------------------------------------------------------------
exec 9>"$cache/.lock"
flock -w 900 9 || die "another build holds $cache/.lock for more than 15 minutes"
if [ "$force" -eq 1 ] || [ ! -s "$cache/base.cpio" ] ||
   ! grep -qx "INPUTS=$base_inputs" "$cache/base.info" 2>/dev/null; then
  log "building the base layer ($kpkg, QEMU $qemu_ver)"
  work=$cache/.work
  rm -rf "$work"
  trap 'rm -rf "$work"' EXIT
  r=$work/root
  mkdir -p "$work/kroot" "$work/bb" "$r"/{bin,dev,proc,sys,tmp,run,etc,root,var/lib,mnt}
  ln -s bin "$r/sbin"
  mkdir -p "$r/usr"
  # usr/bin and usr/sbin stay real directories: QEMU and the project's binaries live there.
  dpkg-deb -x "$bbdeb" "$work/bb"
  cp "$work/bb/bin/busybox" "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
  done

  log "unpacking $kpkg for its modules"
  dpkg-deb -x "$kdeb" "$work/kroot"
  kmods=$work/kroot/lib/modules/$kver
  depmod -b "$work/kroot" "$kver"
  for m in "${modules[@]}"; do
    deps=$(modprobe -d "$work/kroot" -S "$kver" --show-depends "$m" 2>&1) ||
      die "module $m is not in $kpkg: $deps"
    while read -r kind path _; do
      case "$kind" in
        insmod) rel=${path#"$kmods/"}
                mkdir -p "$r/lib/modules/$kver/$(dirname "$rel")"
                cp "$path" "$r/lib/modules/$kver/$rel" ;;
        builtin) ;;
        *) die "unexpected modprobe output for $m: $kind $path" ;;
      esac
    done <<<"$deps"
  done
  cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$r/lib/modules/$kver/"
  depmod -b "$r" "$kver"
  rm -rf "$work/kroot"

  copy_elf "$r" "$qemu" "$tcg_mod"
  [ "$qemu" = /usr/bin/qemu-system-x86_64 ] || ln -sf "$qemu" "$r/usr/bin/qemu-system-x86_64"
  for f in "${firmware[@]}"; do
    mkdir -p "$r$(dirname "$f")"
    cp -L "$f" "$r$f"
  done
  if [ -f /usr/share/misc/pci.ids ]; then
    mkdir -p "$r/usr/share/misc" && cp -L /usr/share/misc/pci.ids "$r/usr/share/misc/"
  fi
  mkdir -p "$r/rig/guest"
  cp "$guest/kernel" "$r/rig/guest/kernel"
  # Uncompressed: gunzip inside the nested guest costs seconds.
  gzip -dc "$guest/initramfs.cpio.gz" >"$r/rig/guest/initramfs.cpio"
  echo "root:x:0:0:root:/root:/bin/sh" >"$r/etc/passwd"
  echo "root:x:0:" >"$r/etc/group"

  mkcpio "$r" "$cache/base.cpio"
  cat >"$cache/base.info" <<EOF
KERNEL_RELEASE=$kver
KERNEL_PACKAGE=$kpkg=$kver_pkg
QEMU=$qemu_ver
INPUTS=$base_inputs
EOF
  rm -rf "$work"
  trap - EXIT
  log "base layer: $(stat -c %s "$cache/base.cpio") bytes"
fi
flock -u 9

# --- project layer -----------------------------------------------------------------------------
p=$out/.project
rm -rf "$p"
mkdir -p "$p/usr/local/bin" "$p/usr/local/libexec/vmgpu" "$p/etc/vmgpu" "$p/rig"
cp "$agent" "$p/usr/local/bin/vmgpu-agent"
cp "$ctl" "$p/usr/local/bin/vmgpuctl"
# The agent's default shim path: ../libexec/vmgpu/vmgpu-shim next to vmgpu-agent.
cp "$shim" "$p/usr/local/libexec/vmgpu/vmgpu-shim"
for b in "$agent" "$shim" "$ctl"; do
  for l in $(ldd "$b" | grep -oE '/[^ ]+'); do
    mkdir -p "$p$(dirname "$l")"
    cp -Ln "$l" "$p$l"
  done
done
cp "$here/config.yaml" "$p/etc/vmgpu/config.yaml"
cp "$here/init.sh" "$p/init"
cp "$here/rig-test.sh" "$here/rig-lib.sh" "$here/rig-demo.sh" "$p/rig/"
chmod 755 "$p/init" "$p/rig/"*.sh
mkcpio "$p" "$out/project.cpio"
rm -rf "$p"

cat "$cache/base.cpio" "$out/project.cpio" >"$out/outer.cpio.tmp"
mv -f "$out/outer.cpio.tmp" "$out/outer.cpio"
rm -f "$out/project.cpio"
cat >"$out/outer.info" <<EOF
KERNEL=$guest/kernel
KERNEL_RELEASE=$kver
BIN_DIR=$bin_dir
EOF
log "outer initramfs: $out/outer.cpio ($(stat -c %s "$out/outer.cpio") bytes)"
