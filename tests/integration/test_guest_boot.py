#!/usr/bin/python3
"""The vmgpu test guest boots under TCG with plain QEMU, reports READY, answers a ping and powers
off on system_powerdown: for x86_64 and for aarch64.

No vmgpu shim is involved: this proves the guest (hack/build-test-guest.sh, shim/guest/init.c)
that the shim's own tests boot. Each boot runs QEMU inside a network namespace made for it, with
a TAP whose host side is 10.88.0.1/30; the guest gets 10.88.0.2 through vmgpu.ip=.

Needs root, /dev/net/tun, `ip netns`, and qemu-system-x86_64 / qemu-system-aarch64; skips with
the reason when one is missing. setUpClass runs hack/build-test-guest.sh (cached: a no-op when
the guest is up to date); a guest that cannot be built skips with the build's last words.
Environment: VMGPU_TEST_GUEST_DIR (default build/test-guest) holds <arch>/{kernel,...}.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
BUILD_SCRIPT = os.path.join(SOURCE, "hack", "build-test-guest.sh")
GUEST_DIR = os.environ.get("VMGPU_TEST_GUEST_DIR", os.path.join(SOURCE, "build", "test-guest"))

HOST_ADDR = "10.88.0.1"
GUEST_ADDR = "10.88.0.2"
PREFIX = 30
TAP = "vgtap0"  # lives in the test's own namespace, so the name cannot clash

BUILD_TIMEOUT_S = 900
SOCKET_WAIT_S = 15       # QEMU creates its sockets
READY_TIMEOUT_S = 60     # QEMU start to the ready line
PING_TIMEOUT_S = 5
POWERDOWN_RETRY_S = 1    # a powerdown sent before the guest listens is lost: repeat it
POWERDOWN_TIMEOUT_S = 10  # first system_powerdown to QEMU's own exit

READY_RE = re.compile(r"^VMGPU-READY id=(?P<id>\S+) pci=(?P<pci>\S*) net=(?P<net>ok|fail|none)$")

ARCHES = {
    "x86_64": {
        "qemu": "qemu-system-x86_64",
        "machine": ["-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"],
    },
    "aarch64": {
        "qemu": "qemu-system-aarch64",
        "machine": ["-machine", "virt,gic-version=3", "-accel", "tcg,thread=multi",
                    "-cpu", "max,pauth-impdef=on"],
    },
}

# ICMP echo from inside the namespace, so the test needs no ping binary on the host.
PING = r"""
import os, select, socket, struct, sys, time
dst, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, seq = os.getpid() & 0xffff, 0
while time.monotonic() < deadline:
    seq += 1
    pkt = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"vmgpu-test"
    pkt = pkt[:2] + struct.pack("!H", checksum(pkt)) + pkt[4:]
    sock.sendto(pkt, (dst, 0))
    end = min(deadline, time.monotonic() + 0.5)
    while end > time.monotonic():
        if not select.select([sock], [], [], end - time.monotonic())[0]:
            break
        data, addr = sock.recvfrom(2048)
        ihl = (data[0] & 0x0f) * 4
        typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
        if addr[0] == dst and typ == 0 and rid == ident:
            print("reply from %s seq %d" % (dst, rseq))
            sys.exit(0)
sys.exit(1)
"""


def host_skip_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "ip netns is unavailable: " + (probe.stderr.strip() or "exit %d" % probe.returncode)
    return None


def read_info(path):
    info = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                info[key] = value
    return info


def run(argv, timeout=30, check=True):
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(argv), res.returncode,
                                                      res.stderr.strip()))
    return res


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return "(%s)" % e


class GuestBoot(unittest.TestCase):
    timings = {}
    guests = {}         # arch -> kernel.info dict
    build_errors = {}   # arch -> why the guest is missing
    host_reason = None

    @classmethod
    def setUpClass(cls):
        cls.host_reason = host_skip_reason()
        if cls.host_reason:
            return
        for arch, spec in ARCHES.items():
            if shutil.which(spec["qemu"]) is None:
                cls.build_errors[arch] = "%s is not installed" % spec["qemu"]
                continue
            out = os.path.join(GUEST_DIR, arch)
            try:
                res = subprocess.run([BUILD_SCRIPT, "--arch", arch, "--out", out],
                                     capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                cls.build_errors[arch] = "hack/build-test-guest.sh took over %d s" % BUILD_TIMEOUT_S
                continue
            info_path = os.path.join(out, "kernel.info")
            if res.returncode != 0 or not os.path.exists(info_path):
                cls.build_errors[arch] = "hack/build-test-guest.sh --arch %s failed: %s" % (
                    arch, res.stderr.strip()[-600:])
                continue
            cls.guests[arch] = read_info(info_path)

    @classmethod
    def tearDownClass(cls):
        for arch, (ready, down) in sorted(cls.timings.items()):
            sys.stderr.write("\nguest %-7s time to READY %.2f s, powerdown to exit %.2f s"
                             % (arch, ready, down))
        if cls.timings:
            sys.stderr.write("\n")

    def setUp(self):
        if self.host_reason:
            self.skipTest(self.host_reason)

    # ---- helpers --------------------------------------------------------------------------

    def make_namespace(self, arch):
        ns = "vgtest-%d-%s" % (os.getpid(), arch)
        run(["ip", "netns", "add", ns])
        self.addCleanup(self.delete_namespace, ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap"])
        run(["ip", "-n", ns, "addr", "add", "%s/%d" % (HOST_ADDR, PREFIX), "dev", TAP])
        run(["ip", "-n", ns, "link", "set", TAP, "up"])
        return ns

    def delete_namespace(self, ns):
        run(["ip", "netns", "del", ns], check=False)
        left = run(["ip", "netns", "list"], check=False).stdout.split()
        self.assertNotIn(ns, left, "network namespace %s was not deleted" % ns)

    def kill_if_running(self, proc):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def qemu_argv(self, arch, info, tmp, guest_id):
        guest = os.path.join(GUEST_DIR, arch)
        append = " ".join([
            "console=" + info["CONSOLE"], "panic=-1", "quiet", "mitigations=off",
            "vmgpu.id=" + guest_id,
            "vmgpu.ip=%s/%d,%s" % (GUEST_ADDR, PREFIX, HOST_ADDR),
        ])
        argv = [ARCHES[arch]["qemu"], "-nodefaults", "-no-user-config", "-display", "none"]
        argv += ARCHES[arch]["machine"]
        argv += ["-smp", "2", "-m", "256M", "-no-reboot"]
        if info.get("BIOS"):
            argv += ["-bios", info["BIOS"]]
        argv += [
            "-kernel", os.path.join(guest, "kernel"),
            "-initrd", os.path.join(guest, "initramfs.cpio.gz"),
            "-append", append,
            "-serial", "file:" + os.path.join(tmp, "console.log"),
            "-chardev", "socket,id=qmp,path=%s,server=on,wait=off" % os.path.join(tmp, "qmp.sock"),
            "-mon", "chardev=qmp,mode=control",
            "-device", "pcie-root-port,id=rp0,chassis=1,slot=0",
            "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % TAP,
            "-device", "virtio-net-pci,netdev=n0,bus=rp0,romfile=,mac=52:54:00:88:00:02",
            "-device", "pcie-root-port,id=rp1,chassis=2,slot=0",
            "-device", "virtio-serial-pci,id=vser0,bus=rp1",
            "-chardev", "socket,id=ready,path=%s,server=on,wait=off" % os.path.join(tmp, "ready.sock"),
            "-device", "virtserialport,bus=vser0.0,chardev=ready,name=io.vmgpu.ready",
        ]
        return argv

    def connect(self, path, proc, deadline, what, console):
        while True:
            if proc.poll() is not None:
                self.fail("QEMU exited (%d) before its %s socket appeared; console:\n%s"
                          % (proc.returncode, what, tail(console)))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except OSError:
                s.close()
            if time.monotonic() > deadline:
                self.fail("no %s socket at %s after %d s" % (what, path, SOCKET_WAIT_S))
            time.sleep(0.02)

    def read_ready_line(self, sock, proc, deadline, console, qemu_log):
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("no ready line within %d s; console:\n%s\nqemu:\n%s"
                          % (READY_TIMEOUT_S, tail(console), tail(qemu_log)))
            sock.settimeout(min(left, 0.5))
            try:
                data = sock.recv(4096)
            except socket.timeout:
                if proc.poll() is not None:
                    self.fail("QEMU exited (%d) before the ready line; console:\n%s\nqemu:\n%s"
                              % (proc.returncode, tail(console), tail(qemu_log)))
                continue
            if not data:
                self.fail("the ready port closed before a whole line; got %r; console:\n%s"
                          % (buf, tail(console)))
            buf += data
        line, _, rest = buf.partition(b"\n")
        return line.decode(errors="replace"), rest

    def qmp_open(self, path, proc, console):
        sock = self.connect(path, proc, time.monotonic() + SOCKET_WAIT_S, "QMP", console)
        sock.settimeout(10)
        f = sock.makefile("rw")
        greeting = json.loads(f.readline())
        self.assertIn("QMP", greeting)
        f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
        f.flush()
        while True:  # skip events until the command's answer
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                self.assertIn("return", msg, msg)
                break
        return sock, f

    # ---- the test -------------------------------------------------------------------------

    def boot(self, arch):
        if arch not in self.guests:
            self.skipTest("the %s test guest is not built: %s"
                          % (arch, self.build_errors.get(arch, "unknown reason")))
        info = self.guests[arch]
        tmp = tempfile.mkdtemp(prefix="vgtest-")
        self.addCleanup(shutil.rmtree, tmp, True)
        console = os.path.join(tmp, "console.log")
        qemu_log = os.path.join(tmp, "qemu.log")
        guest_id = "vgtest-" + arch.replace("_", "-")
        ns = self.make_namespace(arch)

        argv = self.qemu_argv(arch, info, tmp, guest_id)
        start = time.monotonic()
        with open(qemu_log, "wb") as log:
            # ip netns exec enters the namespace and execs QEMU: proc.pid is QEMU's pid.
            proc = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(self.kill_if_running, proc)

        ready_sock = self.connect(os.path.join(tmp, "ready.sock"), proc,
                                  start + SOCKET_WAIT_S, "ready port", console)
        self.addCleanup(ready_sock.close)
        line, rest = self.read_ready_line(ready_sock, proc, start + READY_TIMEOUT_S, console,
                                          qemu_log)
        t_ready = time.monotonic() - start

        m = READY_RE.match(line)
        self.assertIsNotNone(m, "not a ready line: %r; console:\n%s" % (line, tail(console)))
        self.assertEqual(m["id"], guest_id)
        self.assertEqual(m["net"], "ok", "guest could not ping %s; console:\n%s"
                         % (HOST_ADDR, tail(console)))
        pci = m["pci"].split(",")
        self.assertIn("1af4:1041", pci, "virtio-net-pci missing from pci=%s" % m["pci"])
        self.assertIn("1af4:1043", pci, "virtio-serial-pci missing from pci=%s" % m["pci"])
        self.assertEqual(pci, sorted(pci), "pci list is not sorted")
        self.assertEqual(rest, b"", "more than one line on the ready port")

        ping = run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", PING, GUEST_ADDR,
                    str(PING_TIMEOUT_S)], timeout=PING_TIMEOUT_S + 10, check=False)
        self.assertEqual(ping.returncode, 0, "host cannot ping %s from %s: %s%s"
                         % (GUEST_ADDR, ns, ping.stdout, ping.stderr))

        qmp_sock, _ = self.qmp_open(os.path.join(tmp, "qmp.sock"), proc, console)
        self.addCleanup(qmp_sock.close)
        t_down = time.monotonic()
        sends = 0
        while proc.poll() is None and time.monotonic() - t_down < POWERDOWN_TIMEOUT_S:
            if sends < POWERDOWN_TIMEOUT_S // POWERDOWN_RETRY_S:
                try:
                    qmp_sock.sendall(b'{"execute": "system_powerdown"}\n')
                    sends += 1
                except OSError:
                    pass  # QEMU is already going away
            try:
                proc.wait(timeout=POWERDOWN_RETRY_S)
            except subprocess.TimeoutExpired:
                pass
        self.assertIsNotNone(proc.poll(), "QEMU still runs %d s after system_powerdown (%d sent);"
                             " console:\n%s" % (POWERDOWN_TIMEOUT_S, sends, tail(console)))
        t_exit = time.monotonic() - t_down
        self.assertEqual(proc.returncode, 0, "QEMU exit status; qemu:\n%s" % tail(qemu_log))

        with open(console, errors="replace") as f:
            log = f.read()
        self.assertIn(line, log, "the ready line is not echoed on the console")
        self.assertIn("power button pressed", log)
        self.assertNotIn("VMGPU-FAILED", log)

        self.timings[arch] = (t_ready, t_exit)
        sys.stderr.write("\n%s: time to READY %.2f s, powerdown to exit %.2f s (%d powerdown%s) "
                         % (arch, t_ready, t_exit, sends, "" if sends == 1 else "s"))

    def test_x86_64(self):
        self.boot("x86_64")

    def test_aarch64(self):
        self.boot("aarch64")


if __name__ == "__main__":
    unittest.main(verbosity=2)
