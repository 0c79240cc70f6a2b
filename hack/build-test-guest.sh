#!/usr/bin/env bash
# Builds the vmgpu test guest: a Debian kernel and an initramfs with shim/guest/init.c as /init.
#
# Usage: hack/build-test-guest.sh [--arch x86_64|aarch64] [--out DIR] [--refresh] [--force]
#   --arch     guest architecture (default: the host's)
#   --out      output directory (default: build/test-guest/<arch>)
#   --refresh  update the private apt package lists now, not only when a day old
#   --force    rebuild even when the outputs are up to date
#
# Outputs in DIR:
#   kernel             x86_64: the uncompressed vmlinux (booted through its PVH entry),
#                      aarch64: the Debian Image
#   initramfs.cpio.gz  /init, busybox-static with its applet links, the guest's modules
#   kernel.info        KEY=VALUE lines: ARCH, KERNEL_PACKAGE, KERNEL_VERSION, KERNEL_RELEASE,
#                      KERNEL_FORMAT, BUSYBOX_VERSION, BIOS (empty: QEMU's default), CONSOLE,
#                      MODULES, INPUTS (hash of everything the outputs depend on)
#
# The kernel and busybox come from Debian's archive with `apt-get download` into a cache and are
# unpacked with dpkg-deb: nothing is installed for the guest, and a foreign architecture is
# reached through private package lists (APT::Architectures on the command line), so the host's
# dpkg architecture list and apt lists stay as they are. Host tools (cpio, kmod, a C compiler
# and static libc for the guest architecture) are installed with apt when missing.
# A second run with the same inputs exits at once.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prog=build-test-guest

arch=$(uname -m)
out=""
refresh=0
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs a value}; shift 2 ;;
    --arch=*) arch=${1#*=}; shift ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --refresh) refresh=1; shift ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "$prog: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }

# The guest's modules, loaded by init in this order. Keep in step with builtin_modules[] in
# shim/guest/init.c. x86: the ACPI power button is the "button" module and reaches user space
# only through evdev. aarch64 virt: the power button is a gpio-keys key on the PL061 (built in).
case "$arch" in
  x86_64|amd64)
    arch=x86_64 deb_arch=amd64 gnu=x86_64-linux-gnu console=ttyS0
    modules=(virtio_pci virtio_net virtio_console evdev button) ;;
  aarch64|arm64)
    arch=aarch64 deb_arch=arm64 gnu=aarch64-linux-gnu console=ttyAMA0
    modules=(virtio_pci virtio_net virtio_console evdev gpio_keys) ;;
  *) die "unsupported --arch '$arch' (x86_64 or aarch64)" ;;
esac
out=${out:-$root/build/test-guest/$arch}
cache=${VMGPU_GUEST_CACHE:-$root/build/test-guest/.cache}
init_src=$root/shim/guest/init.c
mkdir -p "$out" "$cache/apt/lists/partial" "$cache/debs"
out=$(cd "$out" && pwd)

# One build at a time per cache (the apt lists and downloads are shared by both arches).
exec 9>"$cache/.lock"
flock -w 900 9 || die "another build holds $cache/.lock for more than 15 minutes"

is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1

# --- private package lists: every arch we build for, the host's apt config untouched ---------
apt_opts=(-q -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache=$cache/apt"
          -o Dir::Cache::archives=debs -o Dir::Cache::pkgcache=pkgcache.bin
          -o Dir::Cache::srcpkgcache=srcpkgcache.bin -o Acquire::Languages=none
          -o APT::Architectures::=amd64 -o APT::Architectures::=arm64)
[ "$is_root" -eq 1 ] && apt_opts+=(-o APT::Sandbox::User=root)

have_lists() { compgen -G "$cache/apt/lists/*_binary-${deb_arch}_Packages*" >/dev/null; }
stale=$refresh
have_lists || stale=1
[ -n "$(find "$cache/apt/lists" -maxdepth 1 -name '*_InRelease' -mmin +1440 -print -quit)" ] \
  && stale=1
if [ "$stale" -eq 1 ]; then
  log "updating the package lists in $cache/apt/lists"
  if ! apt-get "${apt_opts[@]}" update >"$cache/apt/update.log" 2>&1; then
    have_lists || die "apt-get update failed (see $cache/apt/update.log)"
    log "warning: apt-get update failed, using the lists from before (see $cache/apt/update.log)"
  else
    touch "$cache/apt/lists/"*_InRelease
  fi
fi

candidate() {  # $1 = package:arch -> its candidate version, or nothing
  apt-cache "${apt_opts[@]}" policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" {print $2}'
}
kpkg=$(apt-cache "${apt_opts[@]}" depends "linux-image-$deb_arch:$deb_arch" 2>/dev/null |
       awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {sub(/:.*/, "", $2); print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-$deb_arch to a kernel package"
kver=${kpkg#linux-image-}
kpkg_ver=$(candidate "$kpkg:$deb_arch")
bb_ver=$(candidate "busybox-static:$deb_arch")
if [ -z "$kpkg_ver" ] || [ -z "$bb_ver" ]; then
  die "no candidate for $kpkg or busybox-static ($deb_arch)"
fi

# --- up to date? ---------------------------------------------------------------------------------
sources=("$0" "$init_src" "$root/hack/extract-vmlinux.py")
for h in "$root"/shim/guest/*.h; do [ -e "$h" ] && sources+=("$h"); done
inputs=$( {
  echo "arch=$arch kernel=$kpkg=$kpkg_ver busybox=$bb_ver modules=${modules[*]}"
  sha256sum "${sources[@]}" | awk '{print $1}'
} | sha256sum | awk '{print $1}')
if [ "$force" -eq 0 ] && [ -s "$out/kernel" ] && [ -s "$out/initramfs.cpio.gz" ] &&
   grep -qx "INPUTS=$inputs" "$out/kernel.info" 2>/dev/null; then
  log "$arch guest is up to date in $out ($kpkg $kpkg_ver)"
  exit 0
fi

# --- host tools ----------------------------------------------------------------------------------
if [ "$arch" = "$(uname -m)" ]; then
  cc=gcc
  host_pkgs=(gcc libc6-dev)
else
  cc=$gnu-gcc
  host_pkgs=("gcc-$gnu" "libc6-dev-$deb_arch-cross")
fi
host_pkgs+=(cpio kmod python3 gzip)
missing=()
for p in "${host_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$is_root" -eq 1 ] || die "missing packages ${missing[*]}: run as root or install them"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
fi

# --- downloads (cached per package version) ------------------------------------------------------
fetch() {  # $1 = package, $2 = version -> prints the path of the .deb
  local dir="$cache/debs/$1_${2//:/%3a}_$deb_arch" deb
  deb=$(compgen -G "$dir/*.deb" | head -1 || true)
  if [ -z "$deb" ]; then
    log "downloading $1 $2 ($deb_arch)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (cd "$dir.tmp" && apt-get "${apt_opts[@]}" download "$1:$deb_arch=$2" >/dev/null 2>&1) ||
      die "apt-get download $1:$deb_arch=$2 failed"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    deb=$(compgen -G "$dir/*.deb" | head -1)
  fi
  echo "$deb"
}
kdeb=$(fetch "$kpkg" "$kpkg_ver")
bbdeb=$(fetch busybox-static "$bb_ver")

work=$out/.work
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/kroot" "$work/bb" "$work/initramfs"
log "building the $arch guest from $kpkg $kpkg_ver"
dpkg-deb -x "$kdeb" "$work/kroot"
dpkg-deb -x "$bbdeb" "$work/bb"

# --- kernel ----------------------------------------------------------------------------------------
kimg=$work/kroot/boot/vmlinuz-$kver
[ -f "$kimg" ] || die "$kdeb has no boot/vmlinuz-$kver"
if [ "$arch" = x86_64 ]; then
  # The ELF vmlinux boots through PVH with no decompression; qboot starts it faster than SeaBIOS.
  /usr/bin/python3 "$root/hack/extract-vmlinux.py" "$kimg" "$work/kernel"
  kformat=vmlinux
  bios=/usr/share/qemu/qboot.rom
  [ -f "$bios" ] || { log "warning: no $bios (qemu-system-data): using QEMU's default BIOS"; bios=""; }
else
  cp "$kimg" "$work/kernel"  # Debian's arm64 vmlinuz is an uncompressed Image
  kformat=Image
  bios=""
fi

# --- initramfs -------------------------------------------------------------------------------------
ir=$work/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,run,etc,root,lib/modules/"$kver"}
ln -s bin "$ir/sbin"
mkdir -p "$ir/usr" && ln -s ../bin "$ir/usr/bin" && ln -s ../bin "$ir/usr/sbin"
[ "$is_root" -eq 1 ] && mknod -m 600 "$ir/dev/console" c 5 1

# busybox and one link per applet. Its applet names are one sorted NUL-separated table in the
# binary ("[", "[[", "acpid", ... ending in an empty name): read from there, so a foreign
# busybox needs no emulator; a native one is asked directly, and the two must agree.
bb=$work/bb/bin/busybox
[ -x "$bb" ] || die "$bbdeb has no bin/busybox"
cp "$bb" "$ir/bin/busybox"
applets=$(/usr/bin/python3 - "$bb" <<'EOF'
import re, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"[\0[[\0")
if start < 0 or data.find(b"[\0[[\0", start + 1) >= 0:
    sys.exit("busybox: the applet name table was not found exactly once")
names = []
for name in data[start:].split(b"\0"):
    if not name:
        break
    if not re.fullmatch(rb"[][a-z0-9_.-]+", name):
        sys.exit("busybox: unexpected applet name %r" % name)
    names.append(name.decode())
print("\n".join(names))
EOF
)
if [ "$arch" = "$(uname -m)" ]; then
  [ "$applets" = "$("$bb" --list)" ] || die "the applet table read from busybox differs from busybox --list"
fi
for a in sh modprobe insmod ip ping poweroff mount cat ls; do
  grep -qx -- "$a" <<<"$applets" || die "busybox-static $bb_ver has no '$a' applet"
done
while read -r a; do
  [ "$a" = busybox ] || ln -s busybox "$ir/bin/$a"
done <<<"$applets"

# Modules and their dependencies, with a modules.dep made for this initramfs.
kmods=$work/kroot/lib/modules/$kver
depmod -b "$work/kroot" "$kver"
for m in "${modules[@]}"; do
  deps=$(modprobe -d "$work/kroot" -S "$kver" --show-depends "$m" 2>&1) ||
    die "module $m is not in $kpkg: $deps"
  while read -r kind path _; do
    case "$kind" in
      insmod) rel=${path#"$kmods/"}
              mkdir -p "$ir/lib/modules/$kver/$(dirname "$rel")"
              cp "$path" "$ir/lib/modules/$kver/$rel" ;;
      builtin) ;;
      *) die "unexpected modprobe output for $m: $kind $path" ;;
    esac
  done <<<"$deps"
done
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$ir/lib/modules/$kver/"
depmod -b "$ir" "$kver"

# /init
warn=(-Wall -Wextra -Wshadow -Wformat=2 -Wwrite-strings -Wvla -Wmissing-prototypes
      -Wnull-dereference -Wimplicit-fallthrough -Wstrict-prototypes -Wpointer-arith -Wundef)
"$cc" -std=gnu17 -O2 -static -s "${warn[@]}" -Werror -o "$ir/init" "$init_src"

(cd "$ir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --quiet --reproducible) | gzip -9 -n >"$work/initramfs.cpio.gz"

# --- publish (kernel.info last: it carries INPUTS, which marks the set complete) -----------------
rm -f "$out/kernel.info"
mv -f "$work/kernel" "$out/kernel"
mv -f "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
old_ifs=$IFS; IFS=,; mods_csv="${modules[*]}"; IFS=$old_ifs
cat >"$out/kernel.info.tmp" <<EOF
ARCH=$arch
KERNEL_PACKAGE=$kpkg
KERNEL_VERSION=$kpkg_ver
KERNEL_RELEASE=$kver
KERNEL_FORMAT=$kformat
BUSYBOX_VERSION=$bb_ver
BIOS=$bios
CONSOLE=$console
MODULES=$mods_csv
INPUTS=$inputs
EOF
mv -f "$out/kernel.info.tmp" "$out/kernel.info"
log "$arch guest built in $out: kernel $(stat -c %s "$out/kernel") bytes ($kformat)," \
    "initramfs $(stat -c %s "$out/initramfs.cpio.gz") bytes"
