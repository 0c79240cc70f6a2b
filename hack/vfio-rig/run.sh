#!/usr/bin/env bash
# Runs the nested-VFIO rig: real VFIO on a host without an IOMMU, KVM or GPU.
#
# Usage: hack/vfio-rig/run.sh [--bin-dir BUILD_DIR] [--out DIR] [--mode test|demo|shell]
#                             [--timeout SECONDS]
#   --bin-dir  the built vmgpu tree whose agent, shim and CLI go into the outer guest
#              (default: build, the dev preset)
#   --out      where the outer initramfs, console.log and results/ go (default BUILD_DIR/vfio-rig)
#   --mode     test (default): every case, results in OUT/results/results.txt, exit 0 only
#                when it ends in RESULT PASS;
#              demo: one passthrough sandbox shown as a user sees it (hack/demo.sh --vfio);
#              shell: a shell on the outer guest's console, for debugging;
#              script: runs the file named by $RIG_SCRIPT in the outer guest (experiments)
#   --timeout  wall-clock limit of the outer VM (default 540)
# Environment: RIG_OUTER_CPU (the outer VM's -cpu, default max), RIG_SCRIPT (--mode script).
#
# The outer guest is the Debian kernel under TCG on q35 with an emulated Intel IOMMU
# (intremap=on, caching-mode=on, kernel-irqchip=split) and these devices, each behind its own
# PCIe root port: edu (1234:11e8, no host driver), e1000e (8086:10d3, host driver e1000e) and
# virtio-rng (1af4:1044, DMA through the vIOMMU). A fourth root port holds a PCIe-to-PCI bridge
# with a second edu and a virtio-balloon behind it: one IOMMU group in which the balloon is on a
# host driver, so that edu's group is not viable. OUT/results is shared with the guest over 9p.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
prog=vfio-rig

bin_dir=$root/build
out=""
mode=test
limit=540
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=${2:?--bin-dir needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --mode) mode=${2:?--mode needs a value}; shift 2 ;;
    --timeout) limit=${2:?--timeout needs a value}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "$prog: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$mode" in test|demo|shell|script) ;; *) echo "$prog: --mode is test, demo, shell or script" >&2; exit 2 ;; esac
out=${out:-$bin_dir/vfio-rig}
mkdir -p "$out"
out=$(cd "$out" && pwd)

t0=$EPOCHREALTIME
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

"$here/build-outer.sh" --bin-dir "$bin_dir" --out "$out"
kernel=$(sed -n 's/^KERNEL=//p' "$out/outer.info")
t_build=$(secs "$t0")

results=$out/results
script=""
[ "$mode" = script ] && script=${RIG_SCRIPT:?--mode script runs the file named by RIG_SCRIPT}
rm -rf "$results"
mkdir -p "$results"
[ -z "$script" ] || install -m 755 "$script" "$results/rig-script.sh"
cmdline="console=ttyS0 intel_iommu=on iommu=pt mitigations=off panic=-1 loglevel=4 rig.mode=$mode"
qemu=(qemu-system-x86_64
  -accel tcg,thread=multi -machine q35,kernel-irqchip=split -cpu "${RIG_OUTER_CPU:-max}" -smp 2 -m 2G
  -device intel-iommu,intremap=on,caching-mode=on
  -nodefaults -no-user-config -display none -no-reboot
  -kernel "$kernel" -initrd "$out/outer.cpio" -append "$cmdline"
  -device pcie-root-port,id=rp1,chassis=1,slot=1
  -device edu,bus=rp1
  -device pcie-root-port,id=rp2,chassis=2,slot=2
  -device e1000e,bus=rp2,romfile=
  -device pcie-root-port,id=rp3,chassis=3,slot=3
  -device virtio-rng-pci,bus=rp3,disable-legacy=on,iommu_platform=on
  -device pcie-root-port,id=rp4,chassis=4,slot=4
  -device pcie-pci-bridge,id=br4,bus=rp4
  -device edu,bus=br4,addr=1.0
  -device virtio-balloon-pci,bus=br4,addr=2.0
  -virtfs "local,path=$results,mount_tag=vmgpurig,security_model=none,id=rig")

if [ "$mode" = shell ]; then
  exec timeout --foreground "$limit" "${qemu[@]}" -serial stdio
fi

# The console goes to OUT/console.log; the rig's own lines are shown as they come (RIG: in test
# mode, the DEMO| lines without their prefix in demo mode).
t_boot=$EPOCHREALTIME
t_init=""
set +e
timeout -k 10 "$limit" "${qemu[@]}" -serial stdio </dev/null 2>&1 |
  while IFS= read -r line; do
    line=${line%$'\r'}
    printf '[%6.1f] %s\n' "$(secs "$t_boot")" "$line" >>"$out/console.log.tmp"
    case "$mode:$line" in
      test:RIG:*|script:*) printf '[%6.1f] %s\n' "$(secs "$t_boot")" "$line" ;;
      demo:DEMO\|*) printf '%s\n' "${line#DEMO| }" ;;
    esac
  done
qemu_rc=${PIPESTATUS[0]}
set -e
mv -f "$out/console.log.tmp" "$out/console.log"
t_vm=$(secs "$t_boot")
t_init=$(sed -n 's/^\[ *\([0-9.]*\)\] RIG: init at uptime.*/\1/p' "$out/console.log" | head -1)

total=$(secs "$t0")
summary=$results/summary.txt
{
  echo "PHASE host-build $t_build"
  echo "PHASE outer-boot-to-init ${t_init:-?}"
  grep '^PHASE ' "$results/results.txt" 2>/dev/null || true
  echo "PHASE outer-vm $t_vm"
  echo "PHASE total $total"
} >"$summary"
if [ "$mode" = demo ]; then
  if grep -q '] DEMO-RESULT PASS' "$out/console.log"; then
    echo "($prog: done in ${total} s; the outer guest's console is in $out/console.log)"
    exit 0
  fi
  echo "$prog: the demo did not finish (QEMU exit $qemu_rc); see $out/console.log" >&2
  exit 1
fi
echo "$prog: times (s): $(awk '{ printf "%s=%s ", $2, $3 }' "$summary")"
grep ' FAIL ' "$results/results.txt" 2>/dev/null | sed "s/^/$prog: /" || true
if [ "$qemu_rc" -ne 0 ]; then
  echo "$prog: the outer VM exited with $qemu_rc (124: it ran past ${limit}s); see $out/console.log" >&2
fi
if tail -1 "$results/results.txt" 2>/dev/null | grep -qx 'RESULT PASS'; then
  echo "$prog: PASS ($(grep -c '^CHECK .* PASS ' "$results/results.txt") checks) in ${total}s"
  exit 0
fi
echo "$prog: FAIL: see $results/results.txt and $out/console.log" >&2
exit 1
