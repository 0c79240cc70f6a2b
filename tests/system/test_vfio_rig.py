#!/usr/bin/python3
"""System test: real VFIO in the nested rig (hack/vfio-rig/). The real vmgpu-agent, vmgpu-shim
and vmgpuctl of VMGPU_BIN_DIR run inside a TCG guest that has an emulated Intel IOMMU, bind
emulated PCI devices to vfio-pci through that guest's real kernel and pass them into an inner
QEMU guest. The rig writes results.txt into a 9p share; this test reads it.

Every assertion is made inside the guest on the kernel's state (driver links, driver_override,
/dev/vfio/N, the groups QEMU holds open, processes, network devices) or on the inner guest's
own PCI list; this test checks that the rig ran every case and that each one passed.

Needs qemu-system-x86_64 and the test guest (hack/build-test-guest.sh downloads Debian's kernel
and busybox on first use); exits 77 (skip) with the reason when QEMU is missing.
"""
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("VMGPU_BIN_DIR", os.path.join(SOURCE, "build"))
RUN = os.path.join(SOURCE, "hack", "vfio-rig", "run.sh")
OUT = os.path.join(BIN, "vfio-rig")
RESULTS = os.path.join(OUT, "results", "results.txt")
VM_LIMIT_S = 520  # the outer VM's own limit; ctest's TIMEOUT is 600

# Every check the rig must have made (each at least once, all PASS). A case that silently
# stopped running fails here.
REQUIRED = """
outer.devices outer.groups outer.drivers outer.shared-group
agent.starts inventory.group inventory.type inventory.reserved-regions inventory.state
nonviable.refused nonviable.leaks nonviable.no-processes nonviable.no-taps
nonviable.shim-refuses nonviable-shim.leaks
shimkill.vfio-pci shimkill.dev-vfio shimkill.qemu-holds-groups shimkill.restored-in-time
shimkill.driver-restored shimkill.run-fails shimkill.leaks shimkill.no-processes shimkill.no-taps
run.ready run.vfio-pci run.dev-vfio run.qemu-holds-groups run.guest-sees
adopt.agent-dead adopt.vm-survives adopt-agentless.vfio-pci adopt-agentless.qemu-holds-groups
adopt.agent-restarts adopt.same-shim adopt.same-processes adopt.gpus-held adopt.qemu-holds-groups
stop.ok stop.driver-restored stop.group-nodes-gone stop.e1000e-netdev stop.leaks
stop.no-processes stop.no-taps end.agent-exits end.leaks end.no-processes
""".split()
CHECK_RE = re.compile(r"^CHECK (\S+) (PASS|FAIL) (.*)$")


def main():
    if shutil.which("qemu-system-x86_64") is None:
        print("SKIP: needs qemu-system-x86_64 (apt install qemu-system-x86)")
        return 77
    for name in ("agent/vmgpu-agent", "shim/vmgpu-shim", "cli/vmgpuctl"):
        if not os.access(os.path.join(BIN, name), os.X_OK):
            print(f"FAIL: {BIN}/{name} is not built")
            return 1
    start = time.monotonic()
    if os.path.exists(RESULTS):
        os.unlink(RESULTS)
    proc = subprocess.run([RUN, "--bin-dir", BIN, "--out", OUT, "--timeout", str(VM_LIMIT_S)],
                          stdin=subprocess.DEVNULL, timeout=VM_LIMIT_S + 60)
    elapsed = time.monotonic() - start
    if not os.path.exists(RESULTS):
        print(f"FAIL: the rig wrote no {RESULTS} (run.sh exit {proc.returncode}); "
              f"see {OUT}/console.log")
        return 1
    with open(RESULTS) as f:
        lines = f.read().splitlines()

    failures = []
    seen = {}
    for line in lines:
        m = CHECK_RE.match(line)
        if m:
            seen.setdefault(m.group(1), []).append(m.group(2))
            if m.group(2) != "PASS":
                failures.append(f"{m.group(1)}: {m.group(3)}")
    for name in REQUIRED:
        if name not in seen:
            failures.append(f"{name}: the rig never made this check")
    if not lines or lines[-1] != "RESULT PASS":
        failures.append(f"the rig's last line is {lines[-1] if lines else 'missing'!r}, "
                        "not 'RESULT PASS'")
    if proc.returncode != 0:
        failures.append(f"hack/vfio-rig/run.sh exited {proc.returncode}")

    # summary.txt (run.sh) adds the host's build and boot times to the rig's own phases.
    summary = os.path.join(os.path.dirname(RESULTS), "summary.txt")
    timing = lines
    if os.path.exists(summary):
        with open(summary) as f:
            timing = f.read().splitlines()
    phases = [l.split()[1:] for l in timing if l.startswith("PHASE ")]
    print("rig phases (s): " + " ".join(f"{p[0]}={p[1]}" for p in phases if len(p) == 2))
    print(f"rig total, build included: {elapsed:.1f} s; "
          f"{sum(len(v) for v in seen.values())} checks in {len(seen)} kinds")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        print(f"logs: {os.path.dirname(RESULTS)} (agent.log, state/sandboxes/*/shim.log, "
              f"console.log, dmesg.txt) and {OUT}/console.log")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
