#!/usr/bin/python3
"""Agent benchmarks, printed (never asserted): RunPodSandbox-to-shim-spawn overhead, Inventory
ListDevices and PodSandboxStatus latency over the socket (p50/p99, one persistent grpcio
channel), and the agent's RSS idle and after the runs. Usage: bench_agent.py BIN_DIR [CALLS]"""
import os
import re
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
BIN = sys.argv[1] if len(sys.argv) > 1 else None
CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
if BIN:
    os.environ["VMGPU_BIN_DIR"] = os.path.abspath(BIN)

import vgproto as p  # noqa: E402
from agentlib import Agent  # noqa: E402
from shimlib import read_json  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn, n):
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def main():
    agent = Agent("hgx8")
    try:
        agent.start()
        time.sleep(1)
        idle = rss_kib(agent.proc.pid)
        spawn = []
        ids = []
        for i in range(8):
            t0 = time.time_ns()
            sid = agent.run(f"bench{i}", {"vmgpu.io/network": "none", "vmgpu.io/gpu": "any"})
            status = read_json(os.path.join(agent.state, "sandboxes", sid, "status.json"))
            spawn.append((status["created_ns"] - t0) / 1e6)
            ids.append(sid)
        list_req = p.inventory.ListDevicesRequest()
        status_req = p.cri.PodSandboxStatusRequest(pod_sandbox_id=ids[0])
        timed(lambda: agent.inventory.ListDevices(list_req), 200)  # warm-up
        inventory = timed(lambda: agent.inventory.ListDevices(list_req), CALLS)
        status = timed(lambda: agent.runtime.PodSandboxStatus(status_req), CALLS)
        version = timed(lambda: agent.runtime.Version(p.cri.VersionRequest()), CALLS)
        busy = rss_kib(agent.proc.pid)
        print(f"RunPodSandbox -> shim running: median {statistics.median(spawn):.2f} ms, "
              f"max {max(spawn):.2f} ms over {len(spawn)} sandboxes")
        for name, samples in (("Inventory/ListDevices (8 GPUs)", inventory),
                              ("PodSandboxStatus", status), ("Version", version)):
            print(f"{name}: p50 {percentile(samples, 0.5):.0f} us, "
                  f"p99 {percentile(samples, 0.99):.0f} us over {len(samples)} calls")
        print(f"agent RSS: idle {idle} KiB, after {len(spawn)} sandboxes and "
              f"{3 * CALLS} calls {busy} KiB")
        for sid in ids:
            agent.runtime.StopPodSandbox(p.cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    finally:
        agent.stop()
        shutil.rmtree(agent.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
