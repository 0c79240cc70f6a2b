#!/usr/bin/python3
"""vmgpu-agent and the Kubernetes API: the real agent on the fake kernel (hgx8, 8 GPUs) with a
kubeconfig that points at kubeserver.FakeKube. It must keep the node's vmgpu.io/ labels true,
publish a ResourceSlice whose pool generation goes up on every change, post Events for a GPU
that turns unhealthy and a sandbox that fails, and keep serving its socket while the API
server is gone, catching up once it is back."""
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kubeserver  # noqa: E402
import vgproto as p  # noqa: E402
from agentlib import Agent  # noqa: E402
from shimlib import wait_for  # noqa: E402

NO_NET = {"vmgpu.io/network": "none"}
GPU0, GPU1 = "0000:1b:00.0", "0000:43:00.0"
SLICE = "node-a-vmgpu"


class KubeSyncTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vmgpu-kube-sync-")
        self.pki = kubeserver.Pki(self.tmp)
        self.server = self.new_server()
        with open(os.path.join(self.tmp, "token"), "w") as f:
            f.write("token-1\n")
        self.kubeconfig = os.path.join(self.tmp, "kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write("current-context: dev\n"
                    "contexts:\n- name: dev\n  context: {cluster: c, user: u}\n"
                    f"clusters:\n- name: c\n  cluster:\n    server: {self.server.url}\n"
                    f"    certificate-authority: {self.pki.ca}\n"
                    "users:\n- name: u\n  user:\n    tokenFile: token\n")
        self.agent = Agent("hgx8", extra_config=(
            f"kubeconfig: {self.kubeconfig}\nnode_name: node-a\nresource_slices: true\n"
            "label_interval_s: 10\n"))

    def tearDown(self):
        self.agent.stop()
        self.server.stop()
        shutil.rmtree(self.agent.tmp, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def new_server(self, port=0):
        server = kubeserver.FakeKube(self.pki, port=port)
        server.add_node("node-a", {"vmgpu.io/gpu.product": "A100-SXM4-40GB",
                                   "vmgpu.io/gpu.memory": "40", "team": "ml"})
        return server

    def start_agent(self):
        # Not in a pod: only the kubeconfig turns the API on (kube_enabled: auto).
        env = {k: "" for k in os.environ if k.startswith("KUBERNETES_")}
        return self.agent.start(**env)

    def labels(self):
        return self.server.nodes["node-a"]["metadata"]["labels"]

    def slice(self):
        return self.server.slices.get(SLICE)

    def device(self, index):
        return self.slice()["spec"]["devices"][index]

    def events(self, reason):
        return [e for e in self.server.events if e["reason"] == reason]

    def break_gpu(self, bdf):
        """The GPU falls off the bus: its config space reads all ones."""
        with open(os.path.join(self.agent.sysfs, "bus/pci/devices", bdf, "config"), "r+b") as f:
            f.write(b"\xff" * 256)

    def wait_generation_above(self, generation, timeout=15):
        ok = wait_for(lambda: self.slice() and
                      self.slice()["spec"]["pool"]["generation"] > generation, timeout)
        self.assertTrue(ok, f"generation stayed {generation}: {self.agent.log()}")
        return self.slice()["spec"]["pool"]["generation"]

    def test_labels_slice_and_events_follow_the_node(self):
        self.start_agent()
        want = {"vmgpu.io/gpu.count": "8", "vmgpu.io/gpu.present": "true",
                "vmgpu.io/gpu.product": "H100-SXM5-80GB",
                # The fake /dev has no kvm, so doctor says passthrough cannot work.
                "vmgpu.io/passthrough-ready": "false", "team": "ml"}
        self.assertTrue(wait_for(lambda: self.labels() == want, 15),
                        f"{self.labels()}\n{self.agent.log()}")
        patches = self.server.taken("PATCH", "/api/v1/nodes/node-a")
        self.assertEqual(len(patches), 1)
        self.assertEqual(patches[0]["headers"]["content-type"], "application/merge-patch+json")
        self.assertEqual(patches[0]["headers"]["authorization"], "Bearer token-1")
        sent = json.loads(patches[0]["body"])["metadata"]["labels"]
        self.assertIsNone(sent["vmgpu.io/gpu.memory"])

        # The slice: one device per GPU with the Inventory API's facts.
        self.assertTrue(wait_for(self.slice, 15), self.agent.log())
        spec = self.slice()["spec"]
        self.assertEqual(spec["driver"], "gpu.vmgpu.io")
        self.assertEqual(spec["nodeName"], "node-a")
        self.assertEqual(spec["pool"], {"name": "node-a", "generation": 1, "resourceSliceCount": 1})
        self.assertEqual(self.slice()["metadata"]["ownerReferences"],
                         [{"apiVersion": "v1", "kind": "Node", "name": "node-a",
                           "uid": "uid-node-a", "controller": True}])
        inventory = sorted(self.agent.devices(), key=lambda d: d.index)
        self.assertEqual([d["name"] for d in spec["devices"]],
                         [f"gpu-{d.index}" for d in inventory])
        for device, gpu in zip(spec["devices"], inventory):
            attrs = device["attributes"]
            self.assertEqual(attrs["resource.kubernetes.io/pciBusID"], {"string": gpu.bdf})
            self.assertEqual(attrs["resource.kubernetes.io/pcieRoot"], {"string": gpu.pcie_root})
            self.assertEqual(attrs["numa"], {"int": gpu.numa_node})
            self.assertEqual(attrs["iommuGroup"], {"int": gpu.iommu_group})
            self.assertEqual(attrs["productName"], {"string": gpu.name})
            self.assertEqual(attrs["vendorID"], {"string": "0x10de"})
            self.assertEqual(attrs["deviceID"], {"string": "0x2330"})
            self.assertEqual(attrs["state"], {"string": "available"})
        self.assertEqual(self.server.events, [])  # all 8 GPUs are fine

        # A sandbox takes GPU 0: the slice says so, with a higher generation.
        sid = self.agent.run("victim", dict(NO_NET, **{"vmgpu.io/gpu-devices": GPU0}))
        generation = self.wait_generation_above(1)
        self.assertEqual(self.device(0)["attributes"]["state"], {"string": "allocated"})

        # GPU 1 falls off the bus: one Warning Event on the node, the slice says unhealthy.
        self.break_gpu(GPU1)
        self.assertTrue(wait_for(lambda: self.events("GPUUnhealthy"), 15), self.agent.log())
        generation = self.wait_generation_above(generation)
        self.assertEqual(self.device(1)["attributes"]["state"], {"string": "unhealthy"})
        event = self.events("GPUUnhealthy")[0]
        self.assertEqual(event["type"], "Warning")
        self.assertEqual(event["metadata"]["namespace"], "default")
        self.assertEqual(event["involvedObject"], {"apiVersion": "v1", "kind": "Node",
                                                   "name": "node-a", "uid": "uid-node-a"})
        self.assertIn(f"GPU 1 ({GPU1}, GH100[H100 SXM5 80GB]) is unhealthy: config space reads "
                      "back 0xffff", event["message"])
        self.assertEqual(event["source"], {"component": "vmgpu-agent", "host": "node-a"})
        self.assertEqual(self.labels()["vmgpu.io/gpu.count"], "8")

        # The sandbox's shim dies: a Warning Event on its pod, in the pod's namespace.
        os.kill(self.agent.status(sid)[1]["shim_pid"], signal.SIGKILL)
        self.assertTrue(wait_for(lambda: self.events("SandboxFailed"), 15), self.agent.log())
        event = self.events("SandboxFailed")[0]
        self.assertEqual(event["involvedObject"], {"apiVersion": "v1", "kind": "Pod",
                                                   "name": "victim", "namespace": "default",
                                                   "uid": "uid-victim"})
        self.assertIn(f"vmgpu sandbox {sid} on node node-a failed: shim died (GPUs: {GPU0})",
                      event["message"])
        self.wait_generation_above(generation)
        self.assertEqual(self.device(0)["attributes"]["state"], {"string": "available"})

        # Someone removes a label: the next check (label_interval_s: 10) puts it back.
        with self.server.lock:
            del self.server.nodes["node-a"]["metadata"]["labels"]["vmgpu.io/gpu.count"]
        self.assertTrue(wait_for(lambda: self.labels().get("vmgpu.io/gpu.count") == "8", 20))
        # Each Event once, however many rescans ran.
        time.sleep(2)
        self.assertEqual([e["reason"] for e in self.server.events],
                         ["GPUUnhealthy", "SandboxFailed"])
        self.assertEqual(self.agent.terminate(timeout=10), 0)

    def test_serving_goes_on_while_the_api_server_is_away(self):
        self.start_agent()
        self.assertTrue(wait_for(self.slice, 15), self.agent.log())
        generation = self.slice()["spec"]["pool"]["generation"]
        port = self.server.port
        self.server.stop()

        # The node agent keeps serving: inventory, a whole sandbox life, a GPU turning bad.
        self.assertEqual(len(self.agent.devices()), 8)
        sid = self.agent.run("outage", dict(NO_NET, **{"vmgpu.io/gpu-count": "1"}))
        self.assertEqual(self.agent.status(sid)[0].state, p.cri.SANDBOX_READY)
        self.break_gpu(GPU1)
        self.assertTrue(wait_for(
            lambda: any(d.state == "unhealthy" for d in self.agent.devices()), 10))
        self.assertTrue(wait_for(lambda: "failed attempt 1, retrying in" in self.agent.log(), 10))

        # Back (empty, as after a restore): labels, the queued Event and the slice catch up,
        # and the generation never goes back.
        self.server = self.new_server(port)
        self.assertTrue(wait_for(lambda: self.events("GPUUnhealthy"), 45), self.agent.log())
        self.assertTrue(wait_for(lambda: self.labels().get("vmgpu.io/gpu.count") == "8", 15))
        self.assertGreater(self.wait_generation_above(generation, 15), generation)
        self.assertTrue(wait_for(lambda: "in sync again" in self.agent.log(), 10), self.agent.log())

        # A request that hangs does not hold up SIGTERM.
        self.server.faults = [("sleep", 30)] * 4
        before = len(self.server.taken())
        self.agent.runtime.StopPodSandbox(p.cri.StopPodSandboxRequest(pod_sandbox_id=sid),
                                          timeout=30)
        self.assertTrue(wait_for(lambda: len(self.server.taken()) > before, 15))
        started = time.monotonic()
        self.assertEqual(self.agent.terminate(timeout=10), 0)
        self.assertLess(time.monotonic() - started, 5)


if __name__ == "__main__":
    unittest.main(verbosity=2)
