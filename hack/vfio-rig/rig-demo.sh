#!/bin/sh
# The nested-VFIO rig's demo (hack/demo.sh --vfio): one real passthrough sandbox, shown as a
# user sees it. Lines for the user start with "DEMO| " (run.sh prints them without it); the
# last one is DEMO-RESULT PASS or FAIL.
. /rig/rig-lib.sh
OUT=/results
grep -q ' /results 9p ' /proc/mounts || OUT=/tmp/results
mkdir -p "$OUT"

say() { echo "DEMO| $*"; }
show() {  # show CMD...: print the command as typed, then its output
  say "\$ $*"
  "$@" 2>&1 | sed 's/^/DEMO| /'
}
result() { echo "DEMO-RESULT $1"; exit 0; }

NIC=$(find_ids 8086:10d3 | head -1)
say "Inside the rig: a TCG VM with an emulated Intel IOMMU. vmgpu-agent runs there with a"
say "gpu_filter that makes its emulated edu, e1000e and virtio-rng devices its \"GPUs\"."
start_agent "$OUT/agent.log" || { say "the agent did not start"; result FAIL; }
say ""
show vmgpuctl get gpus
say ""
say "The e1000e NIC at $NIC is on its host driver:"
show ls -l "/sys/bus/pci/devices/$NIC/driver"
say ""
say "Start a sandbox VM with it (nested TCG: the guest takes a minute or two to boot):"
say "\$ vmgpuctl run demo --gpu-device $NIC"
t=$(now)
ID=$(vmgpuctl run demo --gpu-device "$NIC" --annotation "vmgpu.io/cmdline=$INNER_CMDLINE" \
  --timeout 300 2>"$OUT/run-demo.err")
rc=$?
sed 's/^/DEMO| /' "$OUT/run-demo.err"
[ "$rc" -eq 0 ] || result FAIL
say "$ID"
say "(ready after $(since "$t") s)"
say ""
show vmgpuctl get sandboxes
say ""
say "The host side: the NIC is on vfio-pci now, and QEMU holds its VFIO group open:"
show ls -l "/sys/bus/pci/devices/$NIC/driver"
show ls /dev/vfio
say ""
say "The guest's view, from its console (vmgpuctl logs $ID):"
vmgpuctl logs "$ID" 2>&1 | grep -E 'gpu [0-9a-f]{4}:|^VMGPU-READY' | sed 's/^/DEMO|   /'
say ""
show vmgpuctl stop "$ID"
say ""
say "The NIC is back on its host driver:"
show ls -l "/sys/bus/pci/devices/$NIC/driver"
drv=$(drv "$NIC")
vmgpuctl rm "$ID" >/dev/null 2>&1
kill -TERM "$AGENT_PID"
wait_until 20 sh -c "! kill -0 $AGENT_PID 2>/dev/null"
[ "$drv" = e1000e ] && result PASS
result FAIL
