#!/usr/bin/env bash
# The README's main command. It builds vmgpu and the test guest, checks this host with
# `vmgpuctl doctor`, starts vmgpu-agent with its default config, runs one sandbox (the test guest,
# booted under TCG with TAP networking), shows it as a user sees it, and stops it. It ends with
# the inventory and reasons on fixture nodes (an 8-GPU HGX board and hosts with typical problems).
#
# hack/demo.sh --vfio runs one real passthrough sandbox instead, in the nested-VFIO rig (a TCG VM
# with an emulated IOMMU, see docs/testing.md): vmgpuctl get gpus, run, get sandboxes, the
# guest's view of the passed device, stop, and the host driver back (about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- --vfio: the nested-VFIO rig's demo mode ------------------------------------------------------
vfio_demo() {
  hack/install-deps.sh demo
  cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build-release -j"$(nproc)" --target vmgpuctl vmgpu-agent vmgpu-shim >/dev/null
  printf '\n\033[1m== real VFIO passthrough, in the nested-VFIO rig\033[0m\n'
  hack/vfio-rig/run.sh --bin-dir build-release --mode demo
}
for arg in "$@"; do
  case "$arg" in
    --vfio) vfio_demo; exit ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$arg' (the only option is --vfio)" >&2; exit 2 ;;
  esac
done

hack/install-deps.sh demo
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)" --target vmgpuctl vmgpu-agent vmgpu-shim >/dev/null
hack/build-test-guest.sh --arch x86_64 --out build/test-guest/x86_64
bin=$PWD/build-release
guest=$PWD/build/test-guest/x86_64
vmgpuctl="$bin/cli/vmgpuctl"

section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*" >&2; "$@"; }

work=$(mktemp -d /tmp/vmgpu-demo.XXXXXX)
agent_pid=""
sandbox=""
cleanup() {
  if [ -n "$sandbox" ]; then "$vmgpuctl" rm "$sandbox" >/dev/null 2>&1 || true; fi
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid"
    wait "$agent_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

section "vmgpuctl doctor on this host"
run "$vmgpuctl" doctor || echo "(doctor exited $?: passthrough cannot work on this host, see the reasons above)"

section "vmgpu-agent, default config (socket /run/vmgpu/vmgpu.sock, state /var/lib/vmgpu)"
"$bin/agent/vmgpu-agent" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
  "$vmgpuctl" version >/dev/null 2>&1 && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; exit 1; }
  sleep 0.1
done
run "$vmgpuctl" version
cat "$work/agent.log"

section "this host's GPUs, as the agent advertises them"
run "$vmgpuctl" get gpus -o wide

section "a sandbox: the test guest under TCG, with a TAP"
sandbox=$(run "$vmgpuctl" run demo --kernel "$guest/kernel" --initrd "$guest/initramfs.cpio.gz" \
  --vcpus 1 --memory 256 --annotation vmgpu.io/accel=tcg --timeout 180)
echo "$sandbox"
run "$vmgpuctl" get sandboxes -o wide
guest_ip=$("$vmgpuctl" get sandboxes -o json | SANDBOX="$sandbox" /usr/bin/python3 -c \
  'import json,os,sys; print([s["info"]["vmgpu"]["guest_ip"] for s in json.load(sys.stdin)
                             if s["status"]["id"] == os.environ["SANDBOX"]][0])' 2>/dev/null || true)
if [ -n "$guest_ip" ]; then run ping -c 2 -W 2 "$guest_ip" || true; fi
run "$vmgpuctl" logs "$sandbox" | grep -E "vmgpu-init|VMGPU-READY" | tail -n 6

section "stop and remove: QEMU, TAP and the sandbox's GPUs are gone"
run "$vmgpuctl" stop "$sandbox"
run "$vmgpuctl" get sandboxes
run "$vmgpuctl" rm "$sandbox"
sandbox=""
run "$vmgpuctl" get sandboxes

tmp="$work/fixtures"
/usr/bin/python3 tests/fixtures/build_fixtures.py "$tmp" hgx8 shared-nic gb10 boot-vga >/dev/null
empty="$work/empty"
mkdir -p "$empty"
printf '# demo: defaults only\n' >"$work/config.yaml"

section "vmgpu-agent --list-gpus on an 8-GPU HGX fixture (two NUMA nodes, PCIe switches)"
"$bin/agent/vmgpu-agent" --config "$work/config.yaml" --sysfs-root "$tmp/hgx8" --list-gpus -o table

for node in shared-nic gb10 boot-vga; do
  section "vmgpuctl doctor -o wide on the '$node' fixture (GPU rows)"
  "$vmgpuctl" doctor -o wide --config "$work/config.yaml" --sysfs-root "$tmp/$node" \
    --dev-root "$empty" --modules-dir "$empty" | sed -n '/^INDEX/,$p' || true
done
section "done"
echo "Troubleshooting for each reason: docs/troubleshooting.md"
