#!/usr/bin/python3
"""vmgpu-agent driven over its socket by a Python grpcio client written from the field tables:
the four GPU request forms, bad requests and their codes, 32 concurrent requests against 8
GPUs, crash recovery at every step, adoption, shim death. GPUs live on the fake kernel."""
import concurrent.futures
import os
import shutil
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import vgproto as p  # noqa: E402
from agentlib import Agent, driver_snapshot  # noqa: E402
from shimlib import pid_alive, wait_for  # noqa: E402

NO_NET = {"vmgpu.io/network": "none"}
GPU0, GPU1 = "0000:1b:00.0", "0000:43:00.0"


def ann(**kwargs):
    out = dict(NO_NET)
    out.update({"vmgpu.io/" + k.replace("_", "-"): v for k, v in kwargs.items()})
    return out


class AgentTest(unittest.TestCase):
    fixture = "hgx8"

    def setUp(self):
        self.agent = Agent(self.fixture)
        self.before = driver_snapshot(self.agent.sysfs)
        self.agent.start()

    def tearDown(self):
        self.agent.stop()
        shutil.rmtree(self.agent.tmp, ignore_errors=True)

    def allocated(self):
        return {d.bdf: d.sandbox_id for d in self.agent.devices() if d.state == "allocated"}

    def driver(self, bdf):
        return driver_snapshot(self.agent.sysfs)[bdf][0]

    def assert_code(self, annotations, code, *fragments):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.agent.run("bad", annotations)
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        for fragment in fragments:
            self.assertIn(fragment, ctx.exception.details())

    def stop_and_remove(self, sandbox_id):
        self.agent.runtime.StopPodSandbox(p.cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                          timeout=30)
        self.agent.runtime.RemovePodSandbox(
            p.cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


class RequestForms(AgentTest):
    def test_count_picks_gpus_on_one_pcie_root_and_binds_them(self):
        sid = self.agent.run("two", ann(gpu_count="2"))
        status, details = self.agent.status(sid)
        self.assertEqual(status.state, p.cri.SANDBOX_READY)
        self.assertEqual(details["gpus"], [GPU0, GPU1])  # both behind pci0000:10, NUMA 0
        self.assertEqual(self.allocated(), {GPU0: sid, GPU1: sid})
        self.assertEqual((self.driver(GPU0), self.driver(GPU1)), ("vfio-pci", "vfio-pci"))
        self.stop_and_remove(sid)
        self.assertEqual(driver_snapshot(self.agent.sysfs), self.before)
        self.assertEqual(self.allocated(), {})
        self.assertEqual(self.agent.sandbox_dirs(), [])

    def test_any_devices_and_selector(self):
        any_id = self.agent.run("any", ann(gpu="any"))
        self.assertEqual(self.agent.status(any_id)[1]["gpus"], [GPU0])
        by_name = self.agent.run("named", ann(gpu_devices="0000:9D:00.0,7"))
        self.assertEqual(self.agent.status(by_name)[1]["gpus"], ["0000:9d:00.0", "0000:df:00.0"])
        numa1 = self.agent.run("numa1", ann(gpu_selector="numa=1,product=h100", gpu_count="2"))
        self.assertEqual(self.agent.status(numa1)[1]["gpus"], ["0000:c3:00.0", "0000:d1:00.0"])
        allocated = self.allocated()
        self.assertEqual(len(allocated), 5)
        annotations = dict(self.agent.status(numa1)[0].annotations)
        self.assertEqual(annotations["vmgpu.io/gpu-selector"], "numa=1,product=h100")
        for sid in (any_id, by_name, numa1):
            self.stop_and_remove(sid)
        self.assertEqual(driver_snapshot(self.agent.sysfs), self.before)

    def test_bad_requests_get_precise_codes_and_change_nothing(self):
        held = self.agent.run("holder", ann(gpu_devices=GPU0))
        snapshot = driver_snapshot(self.agent.sysfs)
        dirs = self.agent.sandbox_dirs()
        code = grpc.StatusCode
        self.assert_code(ann(gpus="1"), code.INVALID_ARGUMENT, "unknown annotation vmgpu.io/gpus")
        self.assert_code(ann(gpu_count="nine"), code.INVALID_ARGUMENT, "vmgpu.io/gpu-count")
        self.assert_code(ann(gpu_devices="1,1"), code.INVALID_ARGUMENT, "listed twice")
        self.assert_code(ann(gpu_devices=f"0,{GPU0.upper()}"), code.INVALID_ARGUMENT,
                         "both name GPU")
        self.assert_code(ann(gpu_selector="colour=red"), code.INVALID_ARGUMENT, "unknown key")
        self.assert_code(ann(gpu_devices="0000:99:00.0"), code.NOT_FOUND, "no GPU 0000:99:00.0")
        self.assert_code(ann(gpu_selector="vendor=1002"), code.NOT_FOUND, "no GPU matches")
        self.assert_code(ann(gpu_devices="0"), code.FAILED_PRECONDITION,
                         f"allocated to sandbox {held}")
        self.assert_code(ann(gpu_count="8"), code.RESOURCE_EXHAUSTED,
                         "requested 8 GPUs but only 7 are available")
        self.assertEqual(driver_snapshot(self.agent.sysfs), snapshot)
        self.assertEqual(self.agent.sandbox_dirs(), dirs)
        self.assertEqual(self.allocated(), {GPU0: held})

    def test_unknown_ids_and_idempotent_stop_and_remove(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.agent.status("nope-00000000")
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.agent.runtime.StopPodSandbox(
                p.cri.StopPodSandboxRequest(pod_sandbox_id="nope-00000000"), timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.agent.runtime.RemovePodSandbox(
            p.cri.RemovePodSandboxRequest(pod_sandbox_id="nope-00000000"), timeout=10)
        sid = self.agent.run("twice", ann(gpu="any"))
        for _ in range(2):
            self.agent.runtime.StopPodSandbox(p.cri.StopPodSandboxRequest(pod_sandbox_id=sid),
                                              timeout=30)
        status, details = self.agent.status(sid)
        self.assertEqual(status.state, p.cri.SANDBOX_NOTREADY)
        self.assertEqual(details["state"], "exited")
        for _ in range(2):
            self.agent.runtime.RemovePodSandbox(
                p.cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=30)
        self.assertEqual(self.agent.sandbox_dirs(), [])

    def test_stop_while_creating_ends_the_run_and_frees_the_gpu(self):
        self.agent.terminate()
        self.agent.start(FAKE_QEMU_READY_DELAY="4")
        future = self.agent.runtime.RunPodSandbox.future(p.cri.RunPodSandboxRequest(
            config=p.cri.PodSandboxConfig(
                metadata=p.cri.PodSandboxMetadata(name="slow", uid="u-slow", namespace="default"),
                annotations=ann(gpu="any"))), timeout=60)
        listed = wait_for(lambda: self.agent.runtime.ListPodSandbox(
            p.cri.ListPodSandboxRequest(), timeout=5).items, 10)
        self.assertTrue(listed)
        sid = listed[0].id
        self.agent.runtime.StopPodSandbox(p.cri.StopPodSandboxRequest(pod_sandbox_id=sid),
                                          timeout=30)
        with self.assertRaises(grpc.RpcError):
            future.result(timeout=30)
        self.assertEqual(self.allocated(), {})
        self.assertEqual(driver_snapshot(self.agent.sysfs), self.before)

    def test_list_filters_and_watch_snapshots(self):
        stream = self.agent.inventory.WatchDevices(p.inventory.WatchDevicesRequest(), timeout=30)
        first = next(stream)
        self.assertEqual(len(first.devices), 8)
        self.assertTrue(all(d.state == "available" for d in first.devices))
        sid = self.agent.run("watched", ann(gpu="any"), labels={"team": "a"})
        second = next(stream)
        self.assertGreater(second.generation, first.generation)
        self.assertEqual([d.sandbox_id for d in second.devices if d.state == "allocated"], [sid])
        stream.cancel()
        self.agent.run("other", ann(), labels={"team": "b"})
        items = self.agent.runtime.ListPodSandbox(p.cri.ListPodSandboxRequest(
            filter=p.cri.PodSandboxFilter(label_selector={"team": "a"})), timeout=10).items
        self.assertEqual([i.id for i in items], [sid])


class Concurrency(AgentTest):
    def test_32_concurrent_requests_never_share_a_gpu(self):
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            futures = [pool.submit(self.try_run, f"c{i}") for i in range(32)]
            results = [f.result() for f in futures]
        won = [r for r in results if not isinstance(r, grpc.RpcError)]
        lost = [r for r in results if isinstance(r, grpc.RpcError)]
        self.assertEqual(len(won), 8, [(e.code(), e.details()) for e in lost][:3])
        self.assertTrue(all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in lost),
                        [e.details() for e in lost if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED])
        gpus = [g for sid in won for g in self.agent.status(sid)[1]["gpus"]]
        self.assertEqual(len(gpus), 8)
        self.assertEqual(len(set(gpus)), 8, "a GPU was given to two sandboxes")
        self.assertEqual(sorted(self.allocated().values()), sorted(won))
        self.assertTrue(all(self.driver(g) == "vfio-pci" for g in gpus))

    def try_run(self, name):
        try:
            return self.agent.run(name, ann(gpu_count="1"), timeout=120)
        except grpc.RpcError as e:
            return e


class CrashRecovery(AgentTest):
    def assert_consistent(self):
        """Every GPU is available, or held by a live, ready sandbox; nothing else is bound."""
        live = {}
        for sid in self.agent.sandbox_dirs():
            status, details = self.agent.status(sid)
            if details["state"] == "ready":
                self.assertTrue(pid_alive(details["shim_pid"]))
                for g in details["gpus"]:
                    live[g] = sid
            else:
                self.assertFalse(pid_alive(details["shim_pid"]))
                self.assertFalse(pid_alive(details["qemu_pid"]))
        self.assertEqual(self.allocated(), live)
        now = driver_snapshot(self.agent.sysfs)
        for bdf, (driver, override) in now.items():
            if bdf in live:
                self.assertEqual(driver, "vfio-pci")
            else:
                self.assertEqual((driver, override), self.before[bdf], bdf)

    def test_agent_killed_at_every_step_of_creation(self):
        for step in ("after-allocate", "after-record", "after-spec", "after-spawn",
                     "after-started"):
            with self.subTest(step=step):
                self.agent.terminate()
                self.agent.start(VMGPU_TEST_CRASH_AT=step)
                with self.assertRaises(grpc.RpcError) as ctx:
                    self.agent.run(f"crash-{step}", ann(gpu="any"))
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)
                self.agent.proc.wait(timeout=10)
                self.agent.proc = None
                self.agent.start()
                # A shim spawned before the crash finishes on its own; wait until it settles.
                wait_for(lambda: all(self.agent.status(s)[1]["state"] != "creating"
                                     for s in self.agent.sandbox_dirs()), 30)
                self.assert_consistent()

    def test_a_restarted_agent_adopts_its_sandboxes(self):
        sid = self.agent.run("adopted", ann(gpu_count="2"))
        before = self.agent.status(sid)[1]
        self.agent.kill9()
        self.assertTrue(pid_alive(before["shim_pid"]), "the shim died with the agent")
        self.agent.start()
        status, details = self.agent.status(sid)
        self.assertEqual(status.state, p.cri.SANDBOX_READY)
        self.assertEqual(details["gpus"], before["gpus"])
        self.assertEqual(self.allocated(), {g: sid for g in before["gpus"]})
        self.assert_code(ann(gpu_devices=before["gpus"][0]), grpc.StatusCode.FAILED_PRECONDITION)
        self.stop_and_remove(sid)
        self.assertEqual(driver_snapshot(self.agent.sysfs), self.before)

    def test_sigterm_leaves_sandboxes_running(self):
        sid = self.agent.run("survivor", ann(gpu="any"))
        shim = self.agent.status(sid)[1]["shim_pid"]
        started = time.monotonic()
        self.assertEqual(self.agent.terminate(timeout=10), 0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(pid_alive(shim))
        self.agent.start()
        self.assertEqual(self.agent.status(sid)[0].state, p.cri.SANDBOX_READY)

    def test_a_killed_shim_frees_and_restores_its_gpus_within_2_s(self):
        sid = self.agent.run("victim", ann(gpu_count="2"))
        details = self.agent.status(sid)[1]
        os.kill(details["shim_pid"], signal.SIGKILL)
        started = time.monotonic()
        self.assertTrue(wait_for(lambda: self.allocated() == {}, 2), self.allocated())
        elapsed = time.monotonic() - started
        status, after = self.agent.status(sid)
        self.assertEqual((after["state"], after["reason"]), ("failed", "shim died"))
        self.assertEqual(driver_snapshot(self.agent.sysfs), self.before)
        self.assertFalse(pid_alive(details["qemu_pid"]))
        print(f"shim death to GPUs restored and free: {elapsed:.3f} s", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
