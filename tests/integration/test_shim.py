#!/usr/bin/python3
"""vmgpu-shim end to end: a real QEMU under TCG with the test guest, TAP in a network namespace
the test creates, and the kill cases. Every check is on what a user sees: status and exit
records, processes, links, the guest answering pings."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shimlib import (Netns, Sandbox, build_guest, missing_privileges, pid_alive,  # noqa: E402
                     wait_for)

READY_TIMEOUT = 90  # TCG on a loaded 2-core machine; the guest usually needs 3 to 10 s


def guest_spec(guest, arch, **extra):
    spec = {
        "arch": arch, "accel": "tcg", "vcpus": 1, "memory_mib": 256,
        "kernel": os.path.join(guest, "kernel"),
        "initrd": os.path.join(guest, "initramfs.cpio.gz"),
        "network": {"host_cidr": "10.88.0.1/30", "guest_addr": "10.88.0.2"},
        "ready_timeout_s": READY_TIMEOUT, "stop_timeout_s": 10,
    }
    spec.update(extra)
    return spec


@unittest.skipIf(missing_privileges(), missing_privileges())
class ShimWithRealQemu(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.guests = {arch: build_guest(arch) for arch in ("x86_64", "aarch64")}

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vmgpu-shim-")
        self.netns = Netns(f"vgshim-{os.getpid()}-{self._testMethodName[-12:]}")
        self.sandboxes = []

    def tearDown(self):
        for sandbox in self.sandboxes:
            sandbox.kill_everything()
        self.netns.delete()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sandbox(self, sandbox_id, arch="x86_64", **extra):
        sandbox = Sandbox(self.tmp, sandbox_id, guest_spec(self.guests[arch], arch, **extra))
        self.sandboxes.append(sandbox)
        return sandbox

    def assert_ready(self, sandbox):
        status = sandbox.wait_state(("ready", "failed", "exited"), READY_TIMEOUT + 10)
        self.assertTrue(status, "no status.json")
        self.assertEqual(status["state"], "ready", status.get("reason"))
        # The guest init pinged the host's TAP address before it reported ready.
        self.assertEqual(status["guest_net"], "ok")
        self.assertIn("1af4:1041", status["guest_pci"])  # the virtio-net device
        return status

    def assert_nothing_left(self, sandbox, status):
        self.assertTrue(wait_for(lambda: not pid_alive(status["qemu_pid"]), 15), "QEMU left")
        self.assertTrue(wait_for(lambda: not pid_alive(status["shim_pid"]), 15), "shim left")
        self.assertTrue(wait_for(lambda: not self.netns.link_exists(status["tap"]), 5),
                        f"TAP {status['tap']} left behind")

    def stop(self, sandbox):
        status = sandbox.status()
        os.kill(status["shim_pid"], signal.SIGTERM)
        self.assertTrue(wait_for(sandbox.exit_record, 30), "no exit record after SIGTERM")
        return status

    def test_x86_64_ready_ping_and_clean_stop(self):
        sandbox = self.sandbox("x86-boot")
        sandbox.start(self.netns)
        status = self.assert_ready(sandbox)
        self.assertTrue(self.netns.link_exists(status["tap"]))
        ping = self.netns.run("ping", "-c", "1", "-W", "5", "10.88.0.2", capture_output=True)
        self.assertEqual(ping.returncode, 0, "the host cannot reach the guest over the TAP")
        self.stop(sandbox)
        record = sandbox.exit_record()
        self.assertEqual((record["exit_code"], record["signal"], record["reason"]),
                         (0, 0, "stopped"))
        self.assert_nothing_left(sandbox, status)
        self.assertEqual(sandbox.status()["state"], "exited")

    def test_aarch64_ready_and_clean_stop(self):
        sandbox = self.sandbox("arm-boot", arch="aarch64", gic_version="3")
        sandbox.start(self.netns)
        status = self.assert_ready(sandbox)
        with open(sandbox.path("shim.log")) as f:
            self.assertIn("-machine virt,gic-version=3", f.read())
        self.stop(sandbox)
        self.assertEqual(sandbox.exit_record()["reason"], "stopped")
        self.assert_nothing_left(sandbox, status)

    def test_kill_9_of_the_shim_takes_qemu_down(self):
        sandbox = self.sandbox("kill-shim")
        sandbox.start(self.netns)
        status = self.assert_ready(sandbox)
        os.kill(status["shim_pid"], signal.SIGKILL)
        # PR_SET_PDEATHSIG(SIGKILL) in the QEMU child: no orphaned QEMU, and with it the TAP.
        self.assert_nothing_left(sandbox, status)

    def test_kill_9_of_qemu_fails_the_sandbox_and_cleans_up(self):
        sandbox = self.sandbox("kill-qemu")
        sandbox.start(self.netns)
        status = self.assert_ready(sandbox)
        os.kill(status["qemu_pid"], signal.SIGKILL)
        self.assertTrue(wait_for(sandbox.exit_record, 15), "no exit record")
        final = sandbox.wait_state(("failed",), 5)
        self.assertEqual(final["reason"], "qemu exited (signal 9)")
        self.assertEqual(sandbox.exit_record()["signal"], 9)
        self.assert_nothing_left(sandbox, status)

    def test_the_shim_outlives_its_parent(self):
        sandbox = self.sandbox("orphan")
        parent = subprocess.Popen(["ip", "netns", "exec", self.netns.name, "sh", "-c",
                                   f"'{sandbox_shim()}' --dir '{sandbox.dir}' >/dev/null; "
                                   "sleep 300"])
        try:
            self.assertTrue(wait_for(lambda: sandbox.status().get("qemu_pid"), 30))
            parent.kill()
            parent.wait(timeout=10)
            status = self.assert_ready(sandbox)
            self.assertTrue(pid_alive(status["shim_pid"]))
            self.assertTrue(pid_alive(status["qemu_pid"]))
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
        self.stop(sandbox)
        self.assert_nothing_left(sandbox, status)

    def test_qemu_runs_as_the_sandbox_user(self):
        os.chmod(self.tmp, 0o711)  # QEMU as nobody must reach its sandbox directory
        sandbox = self.sandbox("unprivileged", qemu_user={"uid": 65534, "gid": 65534})
        sandbox.start(self.netns)
        status = self.assert_ready(sandbox)
        with open(f"/proc/{status['qemu_pid']}/status") as f:
            ids = {line.split(":")[0]: line.split()[1:] for line in f if ":" in line}
        self.assertEqual(ids["Uid"], ["65534"] * 4)
        self.assertEqual(ids["Gid"], ["65534"] * 4)
        self.assertEqual(ids["Groups"], [])
        self.stop(sandbox)
        self.assertEqual(sandbox.exit_record()["reason"], "stopped")
        self.assert_nothing_left(sandbox, status)

    def test_nat_table_lives_and_dies_with_the_sandbox(self):
        sandbox = self.sandbox("nat", network={"host_cidr": "10.88.0.1/30",
                                               "guest_addr": "10.88.0.2", "nat": True})
        sandbox.start(self.netns)
        status = self.assert_ready(sandbox)
        listed = self.netns.run("nft", "list", "table", "ip", "vmgpu-nat", capture_output=True,
                                text=True)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("masquerade", listed.stdout)
        self.stop(sandbox)
        self.assert_nothing_left(sandbox, status)
        gone = self.netns.run("nft", "list", "table", "ip", "vmgpu-nat", capture_output=True)
        self.assertNotEqual(gone.returncode, 0, "the NAT table outlived its sandbox")

    def test_a_qemu_that_cannot_start_is_a_typed_error(self):
        sandbox = self.sandbox("no-qemu", qemu_binary="/nonexistent/qemu-system-x86_64")
        rc, started = sandbox.start(self.netns, check=False)
        self.assertEqual(rc, 1)
        self.assertFalse(started["started"])
        self.assertIn("/nonexistent/qemu-system-x86_64", started["error"])
        self.assertIn("No such file or directory", started["error"])
        record = wait_for(sandbox.exit_record, 10)
        self.assertTrue(record)
        self.assertEqual(sandbox.status()["state"], "failed")
        self.assertFalse(self.netns.link_exists(sandbox.status()["tap"]))


def sandbox_shim():
    from shimlib import SHIM
    return SHIM


if __name__ == "__main__":
    unittest.main(verbosity=2)
