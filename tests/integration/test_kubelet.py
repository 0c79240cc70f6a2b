#!/usr/bin/python3
"""vmgpu-agent as a kubelet device plugin, against a fake kubelet written from the field tables
(fake_kubelet.py): registration and the dial-back, ListAndWatch, GetPreferredAllocation,
Allocate, kubelet restarts (sockets deleted as the kubelet does), health changes, PodResources
for RunPodSandbox, and an agent that keeps serving without a kubelet. GPUs live on the fake
kernel (hgx8: eight H100s, NUMA 0 and 1)."""
import os
import shutil
import signal
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import vgproto as p  # noqa: E402
from agentlib import Agent  # noqa: E402
from fake_kubelet import FakeKubelet  # noqa: E402
from shimlib import wait_for  # noqa: E402

NO_NET = {"vmgpu.io/network": "none"}
GPUS = ["0000:1b:00.0", "0000:43:00.0", "0000:52:00.0", "0000:61:00.0",
        "0000:9d:00.0", "0000:c3:00.0", "0000:d1:00.0", "0000:df:00.0"]
NUMA = {g: [0] if i < 4 else [1] for i, g in enumerate(GPUS)}
RESOURCE = "nvidia.com/gpu"
ENV = "PCI_RESOURCE_NVIDIA_COM_GPU"


def ann(**kwargs):
    out = dict(NO_NET)
    out.update({"vmgpu.io/" + k.replace("_", "-"): v for k, v in kwargs.items()})
    return out


def healthy(devices):
    return sorted(d for d, (health, _) in devices.items() if health == "Healthy")


class KubeletTest(unittest.TestCase):
    fixture = "hgx8"
    extra_config = ""
    start_kubelet = True

    def setUp(self):
        self.kroot = tempfile.mkdtemp(prefix="vmgpu-kubelet-")
        self.kubelet = FakeKubelet(self.kroot)
        self.agent = Agent(self.fixture, extra_config=(
            f"kubelet_dir: {self.kubelet.dir}\n"
            f"pod_resources_socket: {self.kubelet.podres_socket}\n" + self.extra_config))
        if self.start_kubelet:
            self.kubelet.start()
        elif getattr(self, "make_dir_first", False):
            os.makedirs(self.kubelet.dir, mode=0o750)  # as a kubelet that ran once leaves it
        self.agent.start()

    def tearDown(self):
        self.kubelet.stop()
        self.agent.stop()
        shutil.rmtree(self.agent.tmp, ignore_errors=True)
        shutil.rmtree(self.kroot, ignore_errors=True)

    def states(self):
        return {d.bdf: d.state for d in self.agent.devices()}

    def run_code(self, name, annotations):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.agent.run(name, annotations)
        return ctx.exception.code(), ctx.exception.details()

    def stop_and_remove(self, sandbox_id):
        self.agent.runtime.StopPodSandbox(p.cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                          timeout=30)
        self.agent.runtime.RemovePodSandbox(
            p.cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)

    def group_of(self, bdf):
        link = os.path.join(self.agent.sysfs, "bus/pci/devices", bdf, "iommu_group")
        return os.path.basename(os.readlink(link))


class Registration(KubeletTest):
    def test_register_options_and_the_first_list(self):
        plugin = self.kubelet.wait_registration()
        req = plugin.request
        self.assertEqual((req.version, req.endpoint, req.resource_name),
                         ("v1beta1", "vmgpu.sock", RESOURCE))
        self.assertTrue(req.options.get_preferred_allocation_available)
        self.assertFalse(req.options.pre_start_required)
        # What the kubelet really uses: the options it asked for over the dial-back.
        self.assertTrue(plugin.options.get_preferred_allocation_available)
        self.assertFalse(plugin.options.pre_start_required)
        _, devices = plugin.wait_list()
        self.assertEqual(devices, {g: ("Healthy", NUMA[g]) for g in GPUS})
        print(f"\nregistered {time.monotonic() - self.kubelet.started_at:.2f} s after the "
              "fake kubelet started (agent started after it)")

    def test_preferred_allocation_keeps_must_include_and_topology(self):
        plugin = self.kubelet.wait_registration()
        req = p.deviceplugin.PreferredAllocationRequest(container_requests=[
            p.deviceplugin.ContainerPreferredAllocationRequest(
                available_deviceIDs=GPUS, must_include_deviceIDs=["0000:9d:00.0"],
                allocation_size=2),
            p.deviceplugin.ContainerPreferredAllocationRequest(
                available_deviceIDs=["0000:1b:00.0", "0000:52:00.0", "0000:61:00.0",
                                     "0000:d1:00.0"], allocation_size=3)])
        resp = plugin.stub.GetPreferredAllocation(req, timeout=10)
        self.assertEqual([list(c.deviceIDs) for c in resp.container_responses],
                         [["0000:9d:00.0", "0000:c3:00.0"],  # NUMA 1, root pci0000:90
                          ["0000:1b:00.0", "0000:52:00.0", "0000:61:00.0"]])  # all NUMA 0
        with self.assertRaises(grpc.RpcError) as ctx:
            plugin.stub.GetPreferredAllocation(p.deviceplugin.PreferredAllocationRequest(
                container_requests=[p.deviceplugin.ContainerPreferredAllocationRequest(
                    available_deviceIDs=GPUS[:2], allocation_size=3)]), timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_allocate_answers_in_full_and_our_api_respects_it(self):
        plugin = self.kubelet.wait_registration()
        ids = ["0000:1b:00.0", "0000:43:00.0"]
        resp = plugin.stub.Allocate(p.deviceplugin.AllocateRequest(container_requests=[
            p.deviceplugin.ContainerAllocateRequest(devices_ids=ids),
            p.deviceplugin.ContainerAllocateRequest(devices_ids=["0000:d1:00.0"])]), timeout=10)
        self.assertEqual(len(resp.container_responses), 2)
        first, second = resp.container_responses
        dev = self.agent.dev
        expected = [("/dev/vfio/vfio", f"{dev}/vfio/vfio", "rw")] + [
            (f"/dev/vfio/{self.group_of(g)}", f"{dev}/vfio/{self.group_of(g)}", "rw") for g in ids]
        self.assertEqual([(d.container_path, d.host_path, d.permissions) for d in first.devices],
                         expected)
        self.assertEqual(dict(first.envs), {ENV: ",".join(ids), "VMGPU_DEVICES": ",".join(ids)})
        self.assertEqual(dict(first.annotations), {"vmgpu.io/gpu-devices": ",".join(ids)})
        self.assertEqual((list(first.mounts), list(first.cdi_devices)), ([], []))
        self.assertEqual(dict(second.envs)[ENV], "0000:d1:00.0")
        # The kubelet's GPUs stay Healthy to it, and are off limits to our own API.
        states = self.states()
        self.assertEqual([g for g in GPUS if states[g] == "allocated"], ids + ["0000:d1:00.0"])
        code, details = self.run_code("mine", ann(gpu_devices="0000:1b:00.0"))
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("allocated by the kubelet", details)
        code, details = self.run_code("many", ann(gpu_count="6"))
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("only 5 are available", details)
        self.assertEqual(healthy(plugin.latest()), GPUS)
        # PreStartContainer is not required but answers.
        plugin.stub.PreStartContainer(p.deviceplugin.PreStartContainerRequest(devices_ids=ids),
                                      timeout=10)

    def test_allocate_refuses_unknown_and_unhealthy_ids_and_pushes_the_list(self):
        plugin = self.kubelet.wait_registration()
        sid = self.agent.run("ours", ann(gpu_devices="0000:52:00.0"))
        plugin.wait_list(lambda d: d["0000:52:00.0"][0] == "Unhealthy")
        for ids, code, fragment in (
                (["0000:1b:00.0", "0000:99:00.0"], grpc.StatusCode.NOT_FOUND,
                 "device 0000:99:00.0 is not a GPU of this node"),
                (["0000:52:00.0"], grpc.StatusCode.FAILED_PRECONDITION,
                 "device 0000:52:00.0 is unhealthy: vmgpu's own API has it in a sandbox"),
                (["0000:1b:00.0", "0000:1b:00.0"], grpc.StatusCode.INVALID_ARGUMENT,
                 "listed twice")):
            before = time.monotonic()
            with self.assertRaises(grpc.RpcError) as ctx:
                plugin.stub.Allocate(p.deviceplugin.AllocateRequest(container_requests=[
                    p.deviceplugin.ContainerAllocateRequest(devices_ids=ids)]), timeout=10)
            self.assertEqual(ctx.exception.code(), code)
            self.assertIn(fragment, ctx.exception.details())
            self.assertIn("Allocate for nvidia.com/gpu", ctx.exception.details())
            plugin.wait_list(after=before, timeout=2)  # pushed again after the failure
        # Nothing was marked: all or nothing.
        self.assertEqual(self.states()["0000:1b:00.0"], "available")
        self.stop_and_remove(sid)


class Iommufd(KubeletTest):
    fixture = "workstation"  # a GeForce with its audio function in IOMMU group 14

    def test_allocate_names_iommufd_nodes_and_the_companion(self):
        gpu, audio = "0000:01:00.0", "0000:01:00.1"
        for bdf, node in ((gpu, "vfio3"), (audio, "vfio4")):
            os.makedirs(os.path.join(self.agent.sysfs, "bus/pci/devices", bdf, "vfio-dev", node))
        os.makedirs(os.path.join(self.agent.dev, "vfio/devices"))
        for node in ("iommu", "vfio/devices/vfio3", "vfio/devices/vfio4"):
            open(os.path.join(self.agent.dev, node), "w").close()
        plugin = self.kubelet.wait_registration()
        self.assertEqual(plugin.wait_list()[1], {gpu: ("Healthy", [])})  # NUMA -1: no topology
        resp = plugin.stub.Allocate(p.deviceplugin.AllocateRequest(container_requests=[
            p.deviceplugin.ContainerAllocateRequest(devices_ids=[gpu])]), timeout=10)
        dev = self.agent.dev
        self.assertEqual(
            [(d.container_path, d.host_path, d.permissions)
             for d in resp.container_responses[0].devices],
            [("/dev/vfio/vfio", f"{dev}/vfio/vfio", "rw"), ("/dev/iommu", f"{dev}/iommu", "rw"),
             ("/dev/vfio/14", f"{dev}/vfio/14", "rw"),
             ("/dev/vfio/devices/vfio3", f"{dev}/vfio/devices/vfio3", "rw"),
             ("/dev/vfio/devices/vfio4", f"{dev}/vfio/devices/vfio4", "rw")])


class PerModel(KubeletTest):
    extra_config = "resource_naming: per-model\n"

    def test_per_model_resource_and_socket(self):
        plugin = self.kubelet.wait_registration("nvidia.com/GH100_H100_SXM5_80GB")
        self.assertEqual(plugin.request.endpoint, "vmgpu-gh100_h100_sxm5_80gb.sock")
        self.assertEqual(len(plugin.wait_list()[1]), 8)
        resp = plugin.stub.Allocate(p.deviceplugin.AllocateRequest(container_requests=[
            p.deviceplugin.ContainerAllocateRequest(devices_ids=[GPUS[0]])]), timeout=10)
        self.assertIn("PCI_RESOURCE_NVIDIA_COM_GH100_H100_SXM5_80GB",
                      resp.container_responses[0].envs)


class Alias(KubeletTest):
    extra_config = "resource_naming: per-model\nresource_aliases:\n  \"10de:2330\": h100\n"

    def test_alias_names_the_resource(self):
        plugin = self.kubelet.wait_registration("nvidia.com/h100")
        self.assertEqual(plugin.request.endpoint, "vmgpu-h100.sock")


class KubeletRestart(KubeletTest):
    def test_restart_registers_again_and_the_stream_resumes(self):
        plugin = self.kubelet.wait_registration()
        times = []
        for _ in range(3):
            before = time.monotonic()
            self.kubelet.restart()  # stops, deletes every socket (ours too), serves again
            again = self.kubelet.wait_registration(after=before, timeout=10)
            took = again.registered_at - before
            times.append(took)
            self.assertLess(took, 5.0, "registered again too late")
            self.assertEqual(again.wait_list()[1], {g: ("Healthy", NUMA[g]) for g in GPUS})
            end = plugin.wait_stream_end(5)
            self.assertIsNotNone(end, "the old stream did not end")
            plugin = again
        print("\nre-registration after a kubelet restart: "
              + ", ".join(f"{t * 1000:.0f} ms" for t in times))
        # The resumed stream still follows changes.
        before = time.monotonic()
        sid = self.agent.run("after-restart", ann(gpu_devices=GPUS[3]))
        plugin.wait_list(lambda d: d[GPUS[3]][0] == "Unhealthy", after=before, timeout=2)
        self.stop_and_remove(sid)

    def test_kubelet_socket_recreated_alone_means_register_again(self):
        self.kubelet.wait_registration()
        before = time.monotonic()
        # Only kubelet.sock is replaced (a kubelet that kept our socket): register again.
        self.kubelet.replace_kubelet_socket()
        again = self.kubelet.wait_registration(after=before, timeout=5)
        print(f"\nre-registration after kubelet.sock alone was replaced: "
              f"{(again.registered_at - before) * 1000:.0f} ms")

    def test_stream_ends_when_the_agent_stops(self):
        plugin = self.kubelet.wait_registration()
        before = time.monotonic()
        self.assertEqual(self.agent.terminate(timeout=15), 0)
        end = plugin.wait_stream_end(10)
        self.assertIsNotNone(end, "ListAndWatch outlived the agent")
        self.assertEqual(end[1], grpc.StatusCode.UNAVAILABLE)
        print(f"\nListAndWatch ended {(end[0] - before) * 1000:.0f} ms after SIGTERM")
        self.assertFalse(os.path.exists(os.path.join(self.kubelet.dir, "vmgpu.sock")))


class Health(KubeletTest):
    def vanish(self, bdf):
        link = os.path.join(self.agent.sysfs, "bus/pci/devices", bdf)
        target = os.readlink(link)
        os.unlink(link)
        return link, target

    def test_a_vanished_gpu_turns_unhealthy_and_back(self):
        plugin = self.kubelet.wait_registration()
        # SIGHUP rescans at once.
        link, target = self.vanish(GPUS[6])
        before = time.monotonic()
        self.agent.proc.send_signal(signal.SIGHUP)
        at, devices = plugin.wait_list(lambda d: d[GPUS[6]][0] == "Unhealthy", after=before)
        self.assertEqual(len(devices), 8)  # still listed, as Unhealthy
        took_hup = at - before
        self.assertLess(took_hup, 1.0)
        os.symlink(target, link)
        before = time.monotonic()
        self.agent.proc.send_signal(signal.SIGHUP)
        at, _ = plugin.wait_list(lambda d: d[GPUS[6]][0] == "Healthy", after=before)
        self.assertLess(at - before, 1.0)
        # The periodic rescan (health_interval_s: 1) finds it with no signal.
        link, target = self.vanish(GPUS[7])
        before = time.monotonic()
        at, _ = plugin.wait_list(lambda d: d[GPUS[7]][0] == "Unhealthy", after=before, timeout=5)
        took_periodic = at - before
        os.symlink(target, link)
        print(f"\nvanished GPU to ListAndWatch: {took_hup * 1000:.0f} ms with SIGHUP, "
              f"{took_periodic * 1000:.0f} ms by the 1 s rescan")
        self.assertLess(took_periodic, 2.5)

    def test_a_gpu_taken_by_our_api_is_unhealthy_while_held(self):
        plugin = self.kubelet.wait_registration()
        before = time.monotonic()
        sid = self.agent.run("ours", ann(gpu_devices=GPUS[2]))
        at, devices = plugin.wait_list(lambda d: d[GPUS[2]][0] == "Unhealthy", after=before)
        took = at - before
        self.assertLess(took, 1.0)
        self.assertEqual(healthy(devices), [g for g in GPUS if g != GPUS[2]])
        before = time.monotonic()
        self.stop_and_remove(sid)
        at, _ = plugin.wait_list(lambda d: d[GPUS[2]][0] == "Healthy", after=before)
        print(f"\nGPU taken by our API to ListAndWatch: {took * 1000:.0f} ms from the "
              f"RunPodSandbox call; released: {(at - before) * 1000:.0f} ms")


class PodResources(KubeletTest):
    def give(self, name, ids, resource=RESOURCE, namespace="default"):
        self.kubelet.pods[(namespace, name)] = [("init", [(resource, ids[:1])]),
                                                ("main", [(resource, ids), ("x.io/nic", ["n1"])])]

    def test_run_pod_sandbox_takes_the_gpus_the_kubelet_gave_the_pod(self):
        plugin = self.kubelet.wait_registration()
        self.give("gpu-pod", ["0000:61:00.0", "0000:52:00.0"])
        sid = self.agent.run("gpu-pod", NO_NET)
        self.assertEqual(self.agent.status(sid)[1]["gpus"], ["0000:52:00.0", "0000:61:00.0"])
        self.assertIn(("Get", "default/gpu-pod"), self.kubelet.calls)
        # The kubelet's own pod: still Healthy to the kubelet, and off limits to our API.
        self.assertEqual(healthy(plugin.latest()), GPUS)
        code, details = self.run_code("other", ann(gpu_devices="0000:52:00.0"))
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION)
        # Annotations that agree are fine; ones that disagree are refused.
        self.give("agrees", ["0000:9d:00.0"])
        agreed = self.agent.run("agrees", ann(gpu_devices="4"))
        self.assertEqual(self.agent.status(agreed)[1]["gpus"], ["0000:9d:00.0"])
        self.give("counts", ["0000:c3:00.0"])
        code, details = self.run_code("counts", ann(gpu_count="2"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("vmgpu.io/gpu-count asks for 2 GPU(s) but the kubelet gave pod "
                      "default/counts 1 (0000:c3:00.0)", details)
        code, details = self.run_code("counts", ann(gpu_devices="0000:d1:00.0"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("vmgpu.io/gpu-devices names 0000:d1:00.0", details)
        code, details = self.run_code("counts", ann(gpu_selector="numa=0"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("does not match vmgpu.io/gpu-selector numa=0", details)
        # A pod the kubelet gave no GPU of ours: the annotations decide, as without a kubelet.
        plain = self.agent.run("plain", ann(gpu="any"))
        self.assertEqual(self.agent.status(plain)[1]["gpus"], ["0000:1b:00.0"])
        for s in (sid, agreed, plain):
            self.stop_and_remove(s)

    def test_list_and_filter_where_get_is_not_served(self):
        self.kubelet.wait_registration()
        for mode, name in (("unimplemented", "old-kubelet"), ("disabled", "gated-kubelet")):
            self.kubelet.get_mode = mode
            self.kubelet.calls.clear()
            self.give(name, ["0000:df:00.0"])
            sid = self.agent.run(name, NO_NET)
            self.assertEqual(self.agent.status(sid)[1]["gpus"], ["0000:df:00.0"])
            # Get failed (the GPU came through List); the periodic List may come in between.
            get = self.kubelet.calls.index(("Get", "default/" + name))
            self.assertIn(("List", None), self.kubelet.calls[get + 1:])
            self.stop_and_remove(sid)
            del self.kubelet.pods[("default", name)]

    def test_a_device_the_node_does_not_have_is_refused(self):
        self.kubelet.wait_registration()
        self.give("ghost", ["0000:99:00.0"])
        code, details = self.run_code("ghost", NO_NET)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("device 0000:99:00.0 of nvidia.com/gpu, which is not a GPU of this node",
                      details)

    def test_listed_gpus_are_held_until_the_pod_goes(self):
        self.kubelet.wait_registration()
        self.give("listed", ["0000:43:00.0"])
        # A kubelet (re)start makes the agent list at once; otherwise it lists every 10 s.
        self.kubelet.restart()
        wait_for(lambda: self.states()["0000:43:00.0"] == "allocated", 10)
        code, details = self.run_code("mine", ann(gpu_devices="0000:43:00.0"))
        self.assertIn("allocated by the kubelet to pod default/listed", details)
        del self.kubelet.pods[("default", "listed")]
        self.kubelet.restart()
        wait_for(lambda: self.states()["0000:43:00.0"] == "available", 10)


class NoKubelet(KubeletTest):
    start_kubelet = False

    def setUp(self):
        if self._testMethodName != "test_kubelet_dir_made_later_is_found_by_the_periodic_check":
            self.make_dir_first = True
        super().setUp()

    def test_serves_without_a_kubelet_and_registers_once_it_comes(self):
        sid = self.agent.run("alone", ann(gpu="any"))  # no PodResources socket: annotations
        self.assertEqual(self.agent.status(sid)[1]["gpus"], [GPUS[0]])
        before = time.monotonic()
        self.kubelet.start()
        plugin = self.kubelet.wait_registration(after=before, timeout=10)
        print(f"\nkubelet started after the agent: registered in "
              f"{(plugin.registered_at - before) * 1000:.0f} ms")
        self.assertLess(plugin.registered_at - before, 5.0)
        _, devices = plugin.wait_list()
        self.assertEqual(healthy(devices), GPUS[1:])
        self.stop_and_remove(sid)

    def test_kubelet_dir_made_later_is_found_by_the_periodic_check(self):
        time.sleep(0.5)
        before = time.monotonic()
        self.kubelet.start()  # creates the directory
        plugin = self.kubelet.wait_registration(after=before, timeout=15)
        print(f"\nkubelet directory created after the agent: registered in "
              f"{(plugin.registered_at - before) * 1000:.0f} ms (5 s safety-net stat)")

    def test_keeps_serving_when_the_kubelet_goes_away(self):
        self.kubelet.start()
        plugin = self.kubelet.wait_registration()
        self.kubelet.stop()  # sockets stay behind, nothing answers
        self.assertIsNotNone(plugin.wait_stream_end(5))
        # A stale PodResources socket: the agent goes on with the annotations.
        sid = self.agent.run("after-kubelet", ann(gpu_count="2"))
        self.assertEqual(len(self.agent.status(sid)[1]["gpus"]), 2)
        self.assertEqual(len(self.agent.devices()), 8)
        before = time.monotonic()
        self.kubelet.start()
        again = self.kubelet.wait_registration(after=before, timeout=10)
        self.assertLess(again.registered_at - before, 5.0)
        self.stop_and_remove(sid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
