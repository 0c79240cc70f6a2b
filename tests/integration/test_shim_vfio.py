#!/usr/bin/python3
"""vmgpu-shim with GPUs on the fake kernel: the LD_PRELOAD mock acts out bind and unbind on a
fixture tree, and a fake QEMU stands in for the VM (real QEMU cannot take VFIO devices here).
Assertions are on the tree: driver links, overrides, /dev/vfio nodes, the bind journal."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shimlib import (BIN, FAKE_QEMU, SOURCE, Sandbox, pid_alive, wait_for)  # noqa: E402

MOCK = os.path.join(BIN, "tests", "mock", "libvgsysfsmock.so")
GPU, AUDIO = "0000:01:00.0", "0000:01:00.1"


def snapshot(root):
    """Every device's driver and override: what must come back exactly."""
    state = {}
    devices = os.path.join(root, "bus/pci/devices")
    for bdf in sorted(os.listdir(devices)):
        link = os.path.join(devices, bdf, "driver")
        driver = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
        with open(os.path.join(devices, bdf, "driver_override")) as f:
            state[bdf] = (driver, f.read())
    return state


class ShimWithFakeGpus(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vmgpu-shim-vfio-")
        fixtures = os.path.join(self.tmp, "fixtures")
        subprocess.run(["/usr/bin/python3", os.path.join(SOURCE, "tests/fixtures/build_fixtures.py"),
                        fixtures, "workstation", "shared-nic"], check=True,
                       stdout=subprocess.DEVNULL)
        self.dev = os.path.join(self.tmp, "dev")
        os.makedirs(self.dev)
        self.log = os.path.join(self.tmp, "mock.log")
        self.fixtures = fixtures
        self.sandboxes = []

    def tearDown(self):
        for sandbox in self.sandboxes:
            sandbox.kill_everything()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, root, **extra):
        env = {"LD_PRELOAD": MOCK, "VG_MOCK_SYSFS_ROOT": root, "VG_MOCK_DEV_ROOT": self.dev,
               "VG_MOCK_LOG": self.log, "ASAN_OPTIONS": "verify_asan_link_order=0",
               "FAKE_QEMU_SYSFS": root}
        env.update(extra)
        return env

    def sandbox(self, sandbox_id, root, gpus):
        spec = {"arch": "x86_64", "accel": "tcg", "qemu_binary": FAKE_QEMU,
                "kernel": "/boot/none", "sysfs_root": root, "dev_root": self.dev,
                "gpus": gpus, "ready_timeout_s": 20, "stop_timeout_s": 2}
        sandbox = Sandbox(self.tmp, sandbox_id, spec)
        self.sandboxes.append(sandbox)
        return sandbox

    def workstation_gpu(self):
        return [{"bdf": GPU, "vendor_id": "0x10de", "device_id": "0x2684", "iommu_group": 14,
                 "companions": [AUDIO]}]

    def driver(self, root, bdf):
        link = os.path.join(root, "bus/pci/devices", bdf, "driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def assert_restored(self, root, before, sandbox):
        self.assertEqual(snapshot(root), before)
        self.assertFalse(os.path.exists(os.path.join(self.dev, "vfio", "14")))
        self.assertFalse(os.path.exists(sandbox.path("bind-journal.json")))
        with open(self.log) as f:
            self.assertNotIn("new_id", f.read())

    def test_bind_ready_stop_restores_gpu_and_companion(self):
        root = os.path.join(self.fixtures, "workstation")
        before = snapshot(root)
        sandbox = self.sandbox("gpu-ok", root, self.workstation_gpu())
        sandbox.start(env=self.env(root))
        status = sandbox.wait_state(("ready", "failed"), 30)
        self.assertEqual(status["state"], "ready", status.get("reason"))
        self.assertEqual((self.driver(root, GPU), self.driver(root, AUDIO)),
                         ("vfio-pci", "vfio-pci"))
        self.assertTrue(os.path.exists(os.path.join(self.dev, "vfio", "14")))
        with open(sandbox.path("bind-journal.json")) as f:
            journal = json.load(f)
        self.assertIn("nvidia", json.dumps(journal))
        os.kill(status["shim_pid"], signal.SIGTERM)
        self.assertTrue(wait_for(sandbox.exit_record, 20))
        self.assertEqual(sandbox.status()["state"], "exited")
        self.assert_restored(root, before, sandbox)

    def test_a_gpu_the_guest_cannot_see_fails_the_sandbox(self):
        root = os.path.join(self.fixtures, "workstation")
        before = snapshot(root)
        sandbox = self.sandbox("gpu-lost", root, self.workstation_gpu())
        sandbox.start(env=self.env(root, FAKE_QEMU_HIDE=GPU))
        status = sandbox.wait_state(("failed",), 30)
        self.assertTrue(status, sandbox.status())
        self.assertIn(GPU, status["reason"])
        self.assertIn("does not see GPU", status["reason"])
        self.assertTrue(wait_for(sandbox.exit_record, 20))
        self.assert_restored(root, before, sandbox)

    def test_kill_9_of_qemu_restores_the_drivers(self):
        root = os.path.join(self.fixtures, "workstation")
        before = snapshot(root)
        sandbox = self.sandbox("gpu-qemu-killed", root, self.workstation_gpu())
        sandbox.start(env=self.env(root))
        status = sandbox.wait_state(("ready",), 30)
        self.assertTrue(status)
        os.kill(status["qemu_pid"], signal.SIGKILL)
        self.assertTrue(wait_for(sandbox.exit_record, 20))
        self.assertEqual(sandbox.status()["reason"], "qemu exited (signal 9)")
        self.assertTrue(wait_for(lambda: not pid_alive(status["shim_pid"]), 10))
        self.assert_restored(root, before, sandbox)

    def stop_escalation(self, sandbox_id, **env):
        root = os.path.join(self.fixtures, "workstation")
        before = snapshot(root)
        sandbox = self.sandbox(sandbox_id, root, self.workstation_gpu())
        sandbox.start(env=self.env(root, **env))
        status = sandbox.wait_state(("ready",), 30)
        self.assertTrue(status)
        os.kill(status["shim_pid"], signal.SIGTERM)
        self.assertTrue(wait_for(sandbox.exit_record, 30))
        self.assertEqual(sandbox.status()["state"], "exited")
        self.assertFalse(pid_alive(status["qemu_pid"]))
        self.assert_restored(root, before, sandbox)
        return sandbox.exit_record()

    def test_a_guest_that_ignores_powerdown_gets_quit(self):
        record = self.stop_escalation("gpu-deaf", FAKE_QEMU_IGNORE_POWERDOWN="1")
        self.assertEqual((record["exit_code"], record["signal"]), (0, 0))

    def test_a_qemu_that_ignores_quit_gets_sigkill(self):
        record = self.stop_escalation("gpu-wedged", FAKE_QEMU_IGNORE_POWERDOWN="1",
                                      FAKE_QEMU_IGNORE_QUIT="1")
        self.assertEqual(record["signal"], 9)
        self.assertEqual(record["reason"], "stopped")

    def test_a_group_shared_with_a_host_nic_is_refused_and_nothing_changes(self):
        root = os.path.join(self.fixtures, "shared-nic")
        before = snapshot(root)
        sandbox = self.sandbox("gpu-shared", root, [{"bdf": "0000:41:00.0", "vendor_id": "0x10de",
                                                    "device_id": "0x20b5", "iommu_group": 30}])
        rc, started = sandbox.start(env=self.env(root), check=False)
        self.assertEqual(rc, 1)
        self.assertFalse(started["started"])
        self.assertIn("0000:42:00.0", started["error"])
        self.assertIn("igb", started["error"])
        self.assertEqual(snapshot(root), before)
        self.assertEqual(sandbox.wait_state(("failed",), 10)["state"], "failed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
