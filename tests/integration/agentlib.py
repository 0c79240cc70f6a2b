"""Run the real vmgpu-agent for tests: a fixture sysfs on the LD_PRELOAD fake kernel, a fake
QEMU, and a private socket and state dir. Every process is ended by pid in stop()."""
import json
import os
import signal
import subprocess
import tempfile
import time

import vgproto as p
from shimlib import BIN, FAKE_QEMU, SOURCE, pid_alive, read_json, wait_for

AGENT = os.path.join(BIN, "agent", "vmgpu-agent")
VMGPUCTL = os.path.join(BIN, "cli", "vmgpuctl")
MOCK = os.path.join(BIN, "tests", "mock", "libvgsysfsmock.so")


def build_fixture(root, name):
    subprocess.run(["/usr/bin/python3", os.path.join(SOURCE, "tests/fixtures/build_fixtures.py"),
                    root, name], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(root, name)


def driver_snapshot(sysfs):
    state = {}
    devices = os.path.join(sysfs, "bus/pci/devices")
    for bdf in sorted(os.listdir(devices)):
        link = os.path.join(devices, bdf, "driver")
        driver = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
        with open(os.path.join(devices, bdf, "driver_override")) as f:
            state[bdf] = (driver, f.read())
    return state


class Agent:
    def __init__(self, fixture="hgx8", extra_config=""):
        self.tmp = tempfile.mkdtemp(prefix="vmgpu-agent-")
        os.chmod(self.tmp, 0o711)
        self.sysfs = build_fixture(os.path.join(self.tmp, "fixtures"), fixture)
        self.dev = os.path.join(self.tmp, "dev")
        self.empty = os.path.join(self.tmp, "empty")
        os.makedirs(self.dev)
        os.makedirs(self.empty)
        self.socket = os.path.join(self.tmp, "run", "vmgpu.sock")
        self.state = os.path.join(self.tmp, "state")
        self.config = os.path.join(self.tmp, "config.yaml")
        with open(self.config, "w") as f:
            f.write(f"socket: {self.socket}\nstate_dir: {self.state}\n"
                    f"sysfs_root: {self.sysfs}\ndev_root: {self.dev}\n"
                    f"modules_dir: {self.empty}\nqemu_binary: {FAKE_QEMU}\n"
                    f"guest_kernel: {self.config}\naccel: tcg\nhealth_interval_s: 0.5\n"
                    + extra_config)
        self.proc = None
        self.log_path = os.path.join(self.tmp, "agent.log")

    def env(self, **extra):
        env = dict(os.environ, LD_PRELOAD=MOCK, VG_MOCK_SYSFS_ROOT=self.sysfs,
                   VG_MOCK_DEV_ROOT=self.dev, FAKE_QEMU_SYSFS=self.sysfs,
                   ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0")
        env.update(extra)
        return env

    def start(self, **env):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([AGENT, "--config", self.config], stdout=log, stderr=log,
                                     env=self.env(**env))
        log.close()
        # A socket file left by a killed agent exists before the new one listens: wait for an
        # answer, not for the file.
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("agent exited at start: " + self.log())
            self.channel = p.channel(self.socket)
            self.runtime = p.runtime_stub(self.channel)
            self.inventory = p.inventory_stub(self.channel)
            try:
                self.runtime.Version(p.cri.VersionRequest(), timeout=2)
                return self
            except Exception:
                self.channel.close()
                if time.monotonic() > deadline:
                    raise AssertionError("agent did not answer on its socket: " + self.log())
                time.sleep(0.05)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.channel.close()
        self.proc = None

    def terminate(self, timeout=10):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.channel.close()
        self.proc = None
        return code

    def run(self, name, annotations=None, timeout=60, labels=None):
        md = p.cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default")
        config = p.cri.PodSandboxConfig(metadata=md, annotations=annotations or {},
                                        labels=labels or {})
        return self.runtime.RunPodSandbox(p.cri.RunPodSandboxRequest(config=config),
                                          timeout=timeout).pod_sandbox_id

    def status(self, sandbox_id):
        st = self.runtime.PodSandboxStatus(
            p.cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=10)
        return st.status, json.loads(st.info["vmgpu"])

    def devices(self):
        return list(self.inventory.ListDevices(p.inventory.ListDevicesRequest(),
                                               timeout=10).devices)

    def sandbox_dirs(self):
        root = os.path.join(self.state, "sandboxes")
        return sorted(os.listdir(root)) if os.path.isdir(root) else []

    def shim_pids(self):
        pids = []
        for name in self.sandbox_dirs():
            status = read_json(os.path.join(self.state, "sandboxes", name, "status.json")) or {}
            pids += [status.get("shim_pid"), status.get("qemu_pid")]
        return [pid for pid in pids if pid]

    def stop(self):
        """Test cleanup: the agent, then every shim and QEMU it started, by pid."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.shim_pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(pid_alive(p_) for p_ in self.shim_pids()), 10)
