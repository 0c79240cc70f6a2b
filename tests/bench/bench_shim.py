#!/usr/bin/python3
"""Shim benchmarks, printed as numbers and ratios (never asserted):
  1. spawn-to-exec: from starting vmgpu-shim to QEMU's successful exec (status qemu_exec_ns);
  2. time to ready through the shim vs the same QEMU command run by hand, side by side;
  3. the shim's own RSS while its sandbox is ready.
Usage: bench_shim.py BIN_DIR [RUNS]   (root; builds the x86_64 test guest if needed)"""
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import shimlib  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else shimlib.BIN
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
SHIM = os.path.join(BIN, "shim", "vmgpu-shim")


def make_sandbox(root, name, spec):
    sandbox = shimlib.Sandbox(root, name, spec)
    return sandbox


def start_shim(sandbox, netns):
    t0 = time.time_ns()
    argv = ["ip", "netns", "exec", netns.name, SHIM, "--dir", sandbox.dir] if netns else \
        [SHIM, "--dir", sandbox.dir]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    sandbox.started = json.loads(out.strip().splitlines()[-1])
    return t0


def stop(sandbox):
    pid = sandbox.shim_pid()
    os.kill(pid, signal.SIGTERM)
    shimlib.wait_for(sandbox.exit_record, 30)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def bench_spawn_to_exec(root):
    samples = []
    for i in range(max(RUNS * 4, 20)):
        sandbox = make_sandbox(root, f"exec-{i}", {
            "arch": "x86_64", "accel": "tcg", "kernel": "/boot/none",
            "qemu_binary": shimlib.FAKE_QEMU, "ready_timeout_s": 30, "stop_timeout_s": 5})
        t0 = start_shim(sandbox, None)
        status = shimlib.wait_for(lambda: sandbox.status().get("qemu_exec_ns") and
                                  sandbox.status(), 10)
        samples.append((status["qemu_exec_ns"] - t0) / 1e6)
        sandbox.wait_state(("ready",), 10)
        stop(sandbox)
    return samples


def read_ready_line(path, deadline):
    sock = None
    while time.monotonic() < deadline:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            break
        except OSError:
            sock.close()
            sock = None
            time.sleep(0.005)
    if sock is None:
        return ""
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1024)
        if not chunk:
            break
        buf += chunk
    return buf.decode().strip()


def qemu_argv_from_log(sandbox):
    with open(sandbox.path("shim.log")) as f:
        line = next(l for l in f if "starting " in l)
    return shlex.split(line.split("starting ", 1)[1])


def bench_ready(root, guest, netns):
    shim_times, hand_times, rss = [], [], []
    template = None
    for i in range(RUNS):
        # Alternate the two ways so machine load hits both alike.
        sandbox = make_sandbox(root, f"ready-{i}", {
            "arch": "x86_64", "accel": "tcg", "vcpus": 1, "memory_mib": 256,
            "kernel": os.path.join(guest, "kernel"),
            "initrd": os.path.join(guest, "initramfs.cpio.gz"),
            "network": {"host_cidr": "10.88.0.1/30", "guest_addr": "10.88.0.2"},
            "ready_timeout_s": 120, "stop_timeout_s": 10})
        t0 = start_shim(sandbox, netns)
        status = sandbox.wait_state(("ready", "failed"), 120)
        shim_times.append((status["ready_ns"] - t0) / 1e9)
        rss.append(rss_kib(status["shim_pid"]))
        template = qemu_argv_from_log(sandbox)
        stop(sandbox)

        hand_dir = tempfile.mkdtemp(dir=root, prefix="hand-")
        argv = []
        for arg in template:
            arg = arg.replace(sandbox.dir, hand_dir)
            arg = re.sub(r"tap,id=net0,fd=\d+", "tap,id=net0,ifname=vghand0,script=no,downscript=no",
                         arg)
            argv.append(arg)
        netns.run("ip", "tuntap", "add", "vghand0", "mode", "tap", "vnet_hdr", check=True)
        netns.run("ip", "addr", "add", "10.88.0.1/30", "dev", "vghand0", check=True)
        netns.run("ip", "link", "set", "vghand0", "up", check=True)
        t0 = time.monotonic()
        with open(os.path.join(hand_dir, "qemu.log"), "w") as log:
            qemu = subprocess.Popen(["ip", "netns", "exec", netns.name] + argv,
                                    stdout=log, stderr=log)
        line = read_ready_line(os.path.join(hand_dir, "ready.sock"), t0 + 120)
        hand_times.append(time.monotonic() - t0)
        if not line.startswith("VMGPU-READY"):
            with open(os.path.join(hand_dir, "qemu.log")) as log:
                raise RuntimeError(f"QEMU by hand did not get ready after "
                                   f"{time.monotonic() - t0:.1f} s: {line!r} {log.read()} "
                                   f"exit={qemu.poll()}")
        qemu.kill()
        qemu.wait()
        netns.run("ip", "link", "del", "vghand0")
    return shim_times, hand_times, rss


def main():
    if shimlib.missing_privileges():
        print("bench_shim: skipped:", shimlib.missing_privileges())
        return 0
    guest = shimlib.build_guest("x86_64")
    root = tempfile.mkdtemp(prefix="vmgpu-bench-")
    netns = shimlib.Netns(f"vgbench-{os.getpid()}")
    try:
        exec_ms = bench_spawn_to_exec(root)
        shim_ready, hand_ready, rss = bench_ready(root, guest, netns)
    finally:
        netns.delete()
    print(f"shim spawn -> QEMU exec: median {statistics.median(exec_ms):.2f} ms, "
          f"max {max(exec_ms):.2f} ms over {len(exec_ms)} runs")
    s, h = statistics.median(shim_ready), statistics.median(hand_ready)
    print(f"time to ready: shim median {s:.2f} s, QEMU by hand median {h:.2f} s, "
          f"ratio {s / h:.3f} over {RUNS} alternating runs")
    print(f"shim RSS while ready: median {statistics.median(rss)} KiB, max {max(rss)} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
