#!/bin/sh
# The nested-VFIO rig's test driver, run by /init inside the outer guest. It drives the real
# vmgpu-agent, vmgpu-shim and vmgpuctl against the real kernel's VFIO and asserts on the
# kernel's state: the driver and driver_override of each function, /dev/vfio/N, the VFIO
# groups QEMU holds open, the processes, the network devices, and the PCI ids the inner guest
# reports on its console. Results go to /results/results.txt (the host's 9p share):
#   DEV bdf ids=... group=N type=... driver=... reserved=[...]   the outer guest's devices
#   CHECK <case> PASS|FAIL <what>                                  one per assertion
#   PHASE <name> <seconds>                                         time of each phase
#   RESULT PASS|FAIL                                               last line
# with the agent's log, each sandbox's shim.log, qemu.log, console.log and dmesg beside it.
. /rig/rig-lib.sh

OUT=/results
grep -q ' /results 9p ' /proc/mounts || OUT=/tmp/results
mkdir -p "$OUT"
RES=$OUT/results.txt
: >"$RES"
FAILS=0
T_ALL=$(now)
record() { echo "$*" >>"$RES"; echo "RIG: $*"; }
pass() { record "CHECK $1 PASS $2"; }
fail() { record "CHECK $1 FAIL $2"; FAILS=$((FAILS + 1)); }
check() {  # check CASE WHAT CMD...: PASS when CMD succeeds
  _c=$1 _w=$2; shift 2
  if "$@"; then pass "$_c" "$_w"; else fail "$_c" "$_w"; fi
}
phase() { PHASE=$1; T_PHASE=$(now); echo "RIG: --- $1 at uptime $(now)s"; }
phase_done() { record "PHASE $PHASE $(since "$T_PHASE")"; }
finish() {
  record "PHASE total-in-guest $(since "$T_ALL")"
  collect
  if [ "$FAILS" -eq 0 ]; then record "RESULT PASS"; else record "RESULT FAIL ($FAILS failed)"; fi
  sync
  exit 0
}
collect() {  # every sandbox's files (sockets left out), dmesg
  for f in $(find "$STATE_DIR" -type f 2>/dev/null); do
    mkdir -p "$OUT/state$(dirname "${f#"$STATE_DIR"}")"
    cp "$f" "$OUT/state${f#"$STATE_DIR"}"
  done
  dmesg >"$OUT/dmesg.txt"
}
eq() { [ "$1" = "$2" ]; }
has_word() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }

# --- the outer guest's devices, as the kernel sees them ------------------------------------------
phase outer
EDU="" EDU_BAD=""
for b in $(find_ids 1234:11e8); do
  if [ "$(ls "/sys/kernel/iommu_groups/$(group "$b")/devices" | wc -l)" -eq 1 ]; then
    EDU=$b
  else
    EDU_BAD=$b
  fi
done
NIC=$(find_ids 8086:10d3 | head -1)
RNG=$(find_ids 1af4:1044 | head -1)
PASSED="$EDU $NIC $RNG"
for b in $(ls /sys/bus/pci/devices); do
  g=$(group "$b")
  rr=$(tr '\n' ';' <"/sys/kernel/iommu_groups/$g/reserved_regions")
  record "DEV $b ids=$(sed 's/^0x//' "/sys/bus/pci/devices/$b/vendor"):$(sed 's/^0x//' "/sys/bus/pci/devices/$b/device") group=$g type=$(cat "/sys/kernel/iommu_groups/$g/type") driver=$(drv "$b") reserved=[$rr]"
done
check outer.devices "edu ($EDU), e1000e ($NIC), virtio-rng ($RNG) and an edu in a shared group ($EDU_BAD) are present" \
  test -n "$EDU" -a -n "$NIC" -a -n "$RNG" -a -n "$EDU_BAD"
[ "$FAILS" -eq 0 ] || finish
BAD_GROUP=$(group "$EDU_BAD")
NEIGHBOUR=""
for b in $(group_members "$BAD_GROUP"); do
  [ "$(drv "$b")" != none ] && NEIGHBOUR=$b
done
check outer.groups "edu, e1000e and virtio-rng each have their own IOMMU group" \
  test "$(group "$EDU")" != "$(group "$NIC")" -a "$(group "$NIC")" != "$(group "$RNG")" -a "$(group "$EDU")" != "$(group "$RNG")"
check outer.drivers "host drivers before the rig: edu none, e1000e e1000e, virtio-rng virtio-pci" \
  test "$(drv "$EDU") $(drv "$NIC") $(drv "$RNG")" = "none e1000e virtio-pci"
check outer.shared-group "group $BAD_GROUP ($(group_members "$BAD_GROUP")) holds $NEIGHBOUR on host driver $(drv "$NEIGHBOUR")" \
  test -n "$NEIGHBOUR"
BASELINE=$(snapshot)
ORIG="$EDU=none $NIC=e1000e $RNG=virtio-pci"
phase_done

# Leak check after a case: every function back on the driver and override it had at the start,
# no /dev/vfio/N left, no shim or QEMU running, no TAP left.
leak_check() {  # $1 = case
  now_state=$(snapshot)
  if [ "$now_state" = "$BASELINE" ]; then
    pass "$1.leaks" "every function's driver and driver_override are as before; /dev/vfio: $(vfio_nodes)"
  else
    fail "$1.leaks" "binding state differs from the start: $(echo "$now_state" | grep -vxF "$BASELINE" | tr '\n' ';')"
  fi
  procs="$(pids_of vmgpu-shim) $(pids_of qemu-system-x86_64)"
  check "$1.no-processes" "no vmgpu-shim or QEMU left running" test -z "$(echo $procs)"
  taps=$(ls /sys/class/net | grep '^vg-' | tr '\n' ' ')
  check "$1.no-taps" "no sandbox TAP left" test -z "$taps"
}
# The GPUs each on vfio-pci with its group node, and the one QEMU holding exactly those groups.
bound_and_held() {  # $1 = case, rest = BDFs
  c=$1; shift
  groups=""
  for b in "$@"; do
    g=$(group "$b")
    groups="$groups $g"
    check "$c.vfio-pci" "$b is bound to vfio-pci (driver_override $(override "$b"))" \
      test "$(drv "$b")" = vfio-pci -a "$(override "$b")" = vfio-pci
    check "$c.dev-vfio" "/dev/vfio/$g exists for $b" test -c "/dev/vfio/$g"
  done
  q=$(pids_of qemu-system-x86_64)
  want=$(echo $groups | tr ' ' '\n' | sort -n | tr '\n' ' ' | sed 's/ $//')
  check "$c.qemu-holds-groups" "one QEMU ($q) holds /dev/vfio/{$want} open (it holds {$(vfio_fds "$q")})" \
    test "$(echo $q | wc -w)" -eq 1 -a "$(vfio_fds "$q")" = "$want"
}
restored() {  # $1 = case: the three passed functions on their original drivers
  for e in $ORIG; do
    b=${e%=*} o=${e#*=}
    check "$1.driver-restored" "$b is back on ${o} (driver $(drv "$b"), override $(override "$b"))" \
      test "$(drv "$b")" = "$o" -a "$(override "$b")" = "(null)"
  done
}
all_back() {
  for e in $ORIG; do [ "$(drv "${e%=*}")" = "${e#*=}" ] || return 1; done
  [ -z "$(pids_of qemu-system-x86_64)" ]
}

# --- the agent and its inventory: real IOMMU groups, types and reserved regions ------------------
phase inventory
check agent.starts "vmgpu-agent answers on its socket" start_agent "$OUT/agent.log"
vmgpuctl get gpus -o wide | tee "$OUT/get-gpus.txt"
api=$(vmgpuctl get gpus -o json | jflat)
inv=$(vmgpu-agent --config "$CONFIG" --list-gpus -o json | jflat)
for b in $PASSED $EDU_BAD; do
  g=$(group "$b")
  i=$(echo "$api" | gpu_index "$b")
  j=$(echo "$inv" | gpu_index "$b")
  if [ -z "$i" ] || [ -z "$j" ]; then
    fail inventory.listed "$b is a GPU in the agent's inventory"
    continue
  fi
  check inventory.group "$b: the agent reports IOMMU group $(echo "$api" | jget "[$i].iommu_group"), the kernel $g" \
    eq "$(echo "$api" | jget "[$i].iommu_group")" "$g"
  ktype=$(cat "/sys/kernel/iommu_groups/$g/type")
  check inventory.type "$b: group type $(echo "$inv" | jget "[$j].iommu_group.type") (kernel: $ktype)" \
    eq "$(echo "$inv" | jget "[$j].iommu_group.type")" "$ktype"
  kregions=$(awk '{ print $1, $2, $3 }' "/sys/kernel/iommu_groups/$g/reserved_regions" | tr '\n' ';')
  aregions=$(echo "$inv" | awk -v p="[$j].iommu_group.reserved_regions[" '
    index($0, p) == 1 { split(substr($0, length(p) + 1), a, "]."); split(a[2], kv, "=")
                        r[a[1], kv[1]] = kv[2]; if (a[1] + 1 > n) n = a[1] + 1 }
    END { for (k = 0; k < n; k++) printf "%s %s %s;", r[k, "start"], r[k, "end"], r[k, "type"] }')
  check inventory.reserved-regions "$b: reserved regions [$aregions] (kernel: [$kregions])" \
    eq "$aregions" "$kregions"
  state=$(echo "$api" | jget "[$i].state")
  if [ "$b" = "$EDU_BAD" ]; then
    check inventory.state "$b (group shared with $NEIGHBOUR on $(drv "$NEIGHBOUR")) is unsupported: $state" eq "$state" unsupported
  else
    check inventory.state "$b is available: $state" eq "$state" available
  fi
done
phase_done

# --- a device whose group is not viable: refused, nothing changes -------------------------------
phase nonviable
out=$(vmgpuctl run rig-nonviable --gpu-device "$EDU_BAD" --timeout 60 2>&1)
rc=$?
record "INFO nonviable: vmgpuctl run exit $rc: $out"
check nonviable.refused "vmgpuctl run --gpu-device $EDU_BAD (group $BAD_GROUP, not viable) fails" test "$rc" -ne 0
leak_check nonviable
# The shim's own guard, against the real kernel: handed that device directly, it refuses before
# it writes anything.
mkdir -p /tmp/nv
cat >/tmp/nv/spec.json <<EOF
{"id": "rig-nonviable-shim", "accel": "tcg", "vcpus": 1, "memory_mib": 128,
 "kernel": "/rig/guest/kernel", "initrd": "/rig/guest/initramfs.cpio",
 "gpus": [{"bdf": "$EDU_BAD", "vendor_id": "0x1234", "device_id": "0x11e8",
           "iommu_group": $BAD_GROUP}],
 "ready_timeout_s": 30, "stop_timeout_s": 5}
EOF
out=$(timeout 60 /usr/local/libexec/vmgpu/vmgpu-shim --dir /tmp/nv --foreground 2>>"$OUT/shim-nonviable.log")
rc=$?
record "INFO nonviable: vmgpu-shim exit $rc: $out"
check nonviable.shim-refuses "vmgpu-shim given $EDU_BAD directly does not start" \
  test "$rc" -ne 0 -a -z "$(echo "$out" | grep '"started":true')"
leak_check nonviable-shim
phase_done

# --- a real sandbox: vfio-pci, /dev/vfio/N, the inner guest sees the devices, ready -------------
phase run
t=$(now)
ID=$(vmgpuctl run rig-main --gpu-device "$EDU" --gpu-device "$NIC" --gpu-device "$RNG" \
  --annotation "vmgpu.io/cmdline=$INNER_CMDLINE" --timeout 300 2>"$OUT/run-main.err")
rc=$?
record "INFO run: vmgpuctl run exit $rc after $(since "$t") s: id=$ID $(tr '\n' ' ' <"$OUT/run-main.err")"
check run.ready "vmgpuctl run --gpu-device $EDU --gpu-device $NIC --gpu-device $RNG returns a ready sandbox" \
  test "$rc" -eq 0 -a -n "$ID"
if [ "$rc" -eq 0 ]; then
  bound_and_held run $PASSED
  vmgpuctl get sandboxes -o wide | tee "$OUT/get-sandboxes.txt"
  desc=$(vmgpuctl describe sandbox "$ID")
  console=$(echo "$desc" | sed -n 's/^ *Console Log: *//p')
  ready=$(grep -a '^VMGPU-READY' "$console" | tail -1)
  record "INFO run: the inner guest said: $ready"
  pci=$(echo "$ready" | sed -n 's/.* pci=\([^ ]*\).*/\1/p' | tr ',' ' ')
  for id in 1234:11e8 8086:10d3 1af4:1044; do
    check run.guest-sees "the inner guest lists $id on its PCI bus" has_word "$pci" "$id"
  done
fi
phase_done

# --- kill -9 the agent and start it again: it adopts the live sandbox ---------------------------
phase adopt
if [ "$rc" -eq 0 ]; then
  SHIM=$(pids_of vmgpu-shim)
  QEMU=$(pids_of qemu-system-x86_64)
  kill -9 "$AGENT_PID"
  wait "$AGENT_PID" 2>/dev/null
  check adopt.agent-dead "the agent ($AGENT_PID) is gone" test ! -d "/proc/$AGENT_PID"
  check adopt.vm-survives "the shim ($SHIM) and QEMU ($QEMU) outlive the agent" alive "$SHIM"
  check adopt.vm-survives "QEMU ($QEMU) outlives the agent" alive "$QEMU"
  bound_and_held adopt-agentless $PASSED
  check adopt.agent-restarts "a new vmgpu-agent answers" start_agent "$OUT/agent.log"
  desc=$(vmgpuctl describe sandbox "$ID")
  check adopt.same-shim "the new agent reports sandbox $ID ready with shim $SHIM: $(echo "$desc" | sed -n 's/^ *\(State\|Shim PID\): *//p' | tr '\n' ' ')" \
    test -n "$(echo "$desc" | grep -E "^ *Shim PID: *$SHIM\$")" -a -n "$(echo "$desc" | grep -E '^ *State: *ready$')"
  check adopt.same-processes "shim $SHIM and QEMU $QEMU still run, unchanged" \
    test "$(pids_of vmgpu-shim) $(pids_of qemu-system-x86_64)" = "$SHIM $QEMU"
  api=$(vmgpuctl get gpus -o json | jflat)
  for b in $PASSED; do
    i=$(echo "$api" | gpu_index "$b")
    check adopt.gpus-held "$b is allocated to $ID: $(echo "$api" | jget "[$i].state") $(echo "$api" | jget "[$i].sandbox_id")" \
      test "$(echo "$api" | jget "[$i].state") $(echo "$api" | jget "[$i].sandbox_id")" = "allocated $ID"
  done
  bound_and_held adopt $PASSED
else
  fail adopt.skipped "no ready sandbox to adopt"
fi
phase_done

# --- vmgpuctl stop through the new agent: the original drivers come back -------------------------
phase stop
if [ "$rc" -eq 0 ]; then
  out=$(vmgpuctl stop "$ID" 2>&1)
  src=$?
  record "INFO stop: vmgpuctl stop exit $src: $out"
  check stop.ok "vmgpuctl stop $ID succeeds" test "$src" -eq 0
  wait_until 30 all_back
  restored stop
  check stop.group-nodes-gone "no /dev/vfio/N is left (/dev/vfio: $(vfio_nodes))" test "$(vfio_nodes)" = vfio
  check stop.e1000e-netdev "e1000e registered its network interface again: $(ls "/sys/bus/pci/devices/$NIC/net" 2>/dev/null)" \
    test -n "$(ls "/sys/bus/pci/devices/$NIC/net" 2>/dev/null)"
  leak_check stop
  vmgpuctl get gpus -o wide | tee "$OUT/get-gpus-after.txt"
  collect  # before rm deletes the sandbox's directory
  vmgpuctl rm "$ID" >/dev/null 2>&1
fi
phase_done

# --- kill -9 the shim while its VM runs: the agent restores the devices ---------------------------
phase shim-kill
vmgpuctl run rig-shimkill --gpu-device "$EDU" --gpu-device "$NIC" \
  --annotation "vmgpu.io/cmdline=$INNER_CMDLINE" --timeout 300 \
  >"$OUT/run-shimkill.txt" 2>&1 &
RUN_PID=$!
qemu_holds_two() {
  q=$(pids_of qemu-system-x86_64)
  [ -n "$q" ] && [ "$(vfio_fds "$q" | wc -w)" -eq 2 ]
}
if wait_until 120 qemu_holds_two; then
  bound_and_held shimkill "$EDU" "$NIC"
  SHIM=$(pids_of vmgpu-shim)
  QEMU=$(pids_of qemu-system-x86_64)
  record "INFO shim-kill: kill -9 shim $SHIM (QEMU $QEMU)"
  kill -9 $SHIM
  check shimkill.restored-in-time "QEMU gone and the devices back within 60 s" wait_until 60 all_back
  restored shimkill
else
  fail shimkill.qemu-started "QEMU opened both VFIO groups within 120 s"
  kill "$RUN_PID" 2>/dev/null
  for id in $(vmgpuctl get sandboxes -o json | jflat | sed -n 's/^\[[0-9]*\]\.status\.id=//p'); do
    vmgpuctl rm "$id" >/dev/null 2>&1
  done
fi
wait_until 60 sh -c "! kill -0 $RUN_PID 2>/dev/null" || kill "$RUN_PID" 2>/dev/null
wait "$RUN_PID"
rc=$?
record "INFO shim-kill: vmgpuctl run exit $rc: $(tr '\n' ' ' <"$OUT/run-shimkill.txt")"
check shimkill.run-fails "vmgpuctl run reports the failure (exit $rc)" test "$rc" -ne 0
leak_check shimkill
phase_done

# --- the agent ends cleanly; nothing is left --------------------------------------------------------
phase end
kill -TERM "$AGENT_PID"
check end.agent-exits "the agent exits on SIGTERM within 20 s" wait_until 20 sh -c "! kill -0 $AGENT_PID 2>/dev/null"
leak_check end
phase_done
finish
