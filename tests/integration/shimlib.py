"""Helpers for tests that run vmgpu-shim for real: sandbox dirs, netns, waits, leak checks."""
import json
import os
import shutil
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("VMGPU_BIN_DIR", os.path.join(SOURCE, "build"))
SHIM = os.path.join(BIN, "shim", "vmgpu-shim")
FAKE_QEMU = os.path.join(SOURCE, "tests", "fake", "fake_qemu.py")


def missing_privileges():
    """A reason to skip, or None: these tests need root, TUN and network namespaces."""
    if os.geteuid() != 0:
        return "needs root (TAP devices and network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


def build_guest(arch):
    out = os.path.join(SOURCE, "build", "test-guest", arch)
    subprocess.run([os.path.join(SOURCE, "hack", "build-test-guest.sh"), "--arch", arch,
                    "--out", out], check=True, stdout=subprocess.DEVNULL, timeout=900)
    return out


class Netns:
    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)

    def run(self, *argv, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), **kwargs)

    def link_exists(self, name):
        return self.run("ip", "link", "show", name, capture_output=True).returncode == 0

    def delete(self):
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


def pid_alive(pid):
    """True while the process exists and is not a zombie (PID 1 here may not reap)."""
    if not pid or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Sandbox:
    def __init__(self, root, sandbox_id, spec):
        self.id = sandbox_id
        self.dir = os.path.join(root, sandbox_id)
        os.makedirs(self.dir)
        spec = dict(spec, id=sandbox_id)
        with open(os.path.join(self.dir, "spec.json"), "w") as f:
            json.dump(spec, f, indent=2)
        self.started = None

    def path(self, name):
        return os.path.join(self.dir, name)

    def status(self):
        return read_json(self.path("status.json")) or {}

    def exit_record(self):
        return read_json(self.path("exit.json"))

    def start(self, netns=None, env=None, check=True):
        argv = [SHIM, "--dir", self.dir]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns.name] + argv
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, **(env or {})))
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
        self.started = json.loads(line)
        if check and proc.returncode != 0:
            raise AssertionError(f"shim did not start: {proc.stdout} {proc.stderr}")
        return proc.returncode, self.started

    def wait_state(self, states, timeout):
        return wait_for(lambda: self.status().get("state") in states and self.status(), timeout)

    def shim_pid(self):
        return self.status().get("shim_pid") or (self.started or {}).get("shim_pid")

    def qemu_pid(self):
        return self.status().get("qemu_pid") or (self.started or {}).get("qemu_pid")

    def kill_everything(self):
        """Test cleanup: end the processes this sandbox started, by pid."""
        for pid in (self.shim_pid(), self.qemu_pid()):
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
