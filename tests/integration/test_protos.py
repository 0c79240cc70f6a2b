#!/usr/bin/python3
"""C (protobuf-c, vmgpu_proto) and Python (protoc 3.21 _pb2) agree on the wire for api/**.proto.

Each message is built in Python, serialized (deterministic, so map entries are sorted), unpacked
and repacked by the C helper tests/unit/proto_roundtrip.c, and must come back byte for byte and
parse to an equal message. The helper also prints typed fields through the generated C structs,
which are checked here. api/method_paths.h is checked against the services in the descriptors.

Needs the helper: $VMGPU_PROTO_ROUNDTRIP, or <build>/api/proto_roundtrip with <build> from
$VMGPU_BIN_DIR (ctest sets both) or <source>/build.
"""
import os
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vgproto  # noqa: E402

from google.protobuf import descriptor as pbd  # noqa: E402

cri = vgproto.cri
inv = vgproto.inventory
dp = vgproto.deviceplugin
pr = vgproto.podresources


def helper_path():
    if os.environ.get("VMGPU_PROTO_ROUNDTRIP"):
        return os.environ["VMGPU_PROTO_ROUNDTRIP"]
    build = os.environ.get("VMGPU_BIN_DIR") or os.path.join(vgproto.SOURCE, "build")
    return os.path.join(build, "api", "proto_roundtrip")


HELPER = helper_path()


def run_helper(*args, data=b""):
    return subprocess.run([HELPER, *args], input=data, capture_output=True, timeout=60)


def c_roundtrip(testcase, msg):
    """Returns (repacked bytes, {key: value} from the helper's stderr summary)."""
    data = msg.SerializeToString(deterministic=True)
    proc = run_helper(msg.DESCRIPTOR.full_name, data=data)
    testcase.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace"))
    summary = {}
    for line in proc.stderr.decode().splitlines():
        key, sep, value = line.partition("=")
        testcase.assertTrue(sep, "unexpected helper output: %r" % line)
        summary[key] = value
    return proc.stdout, summary


def assert_same_on_wire(testcase, msg):
    data = msg.SerializeToString(deterministic=True)
    out, summary = c_roundtrip(testcase, msg)
    testcase.assertEqual(out, data, "protobuf-c repacked %s differently" % msg.DESCRIPTOR.full_name)
    back = type(msg)()
    back.ParseFromString(out)
    testcase.assertEqual(back, msg)
    return summary


# ---- a generic filler: every field set to a non-default, wire-interesting value ----

def _scalar(field, i):
    t = field.type
    if t == pbd.FieldDescriptor.TYPE_STRING:
        return "%s-%d-\u00e9" % (field.name, i)
    if t == pbd.FieldDescriptor.TYPE_BYTES:
        return bytes([0, 255, i])
    if t == pbd.FieldDescriptor.TYPE_BOOL:
        return True
    if t == pbd.FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[-1 - (i % len(values))].number
    if t in (pbd.FieldDescriptor.TYPE_INT32, pbd.FieldDescriptor.TYPE_SINT32,
             pbd.FieldDescriptor.TYPE_SFIXED32):
        return -7 - i  # negative int32: a 10-byte varint on the wire
    if t in (pbd.FieldDescriptor.TYPE_INT64, pbd.FieldDescriptor.TYPE_SINT64,
             pbd.FieldDescriptor.TYPE_SFIXED64):
        return -(1 << 40) - i
    if t in (pbd.FieldDescriptor.TYPE_UINT32, pbd.FieldDescriptor.TYPE_FIXED32):
        return 4000000000 + i
    if t in (pbd.FieldDescriptor.TYPE_UINT64, pbd.FieldDescriptor.TYPE_FIXED64):
        return (1 << 63) + i
    if t in (pbd.FieldDescriptor.TYPE_DOUBLE, pbd.FieldDescriptor.TYPE_FLOAT):
        return 1.5 + i
    raise AssertionError("unhandled field type %d for %s" % (t, field.full_name))


def fill(msg, depth=0):
    if depth > 6:
        return msg
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.label == pbd.FieldDescriptor.LABEL_REPEATED:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                vfield = field.message_type.fields_by_name["value"]
                for i in range(3):
                    key = "%s/key-%d" % (field.name, 2 - i)  # inserted unsorted on purpose
                    if vfield.message_type is not None:
                        fill(value[key], depth + 1)
                    else:
                        value[key] = _scalar(vfield, i)
            elif field.message_type is not None:
                for _ in range(2):
                    fill(value.add(), depth + 1)
            else:
                value.extend(_scalar(field, i) for i in range(3))
        elif field.message_type is not None:
            fill(value, depth + 1)
        else:
            setattr(msg, field.name, _scalar(field, 0))
    return msg


def message_class(full_name):
    for mod in vgproto.PB2_MODULES:
        package = mod.DESCRIPTOR.package
        if full_name.startswith(package + ".") and "." not in full_name[len(package) + 1:]:
            name = full_name[len(package) + 1:]
            if name in mod.DESCRIPTOR.message_types_by_name:
                return getattr(mod, name)
    raise KeyError(full_name)


@unittest.skipUnless(os.access(HELPER, os.X_OK), "no proto_roundtrip helper at " + HELPER)
class WireAgreement(unittest.TestCase):
    def test_method_paths_match_the_services(self):
        proc = run_helper("--paths")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        c_paths = proc.stdout.decode().split()
        self.assertEqual(len(c_paths), len(set(c_paths)), "duplicate in method_paths.h")
        self.assertEqual(sorted(c_paths), sorted(vgproto.method_paths()))
        self.assertEqual(len(c_paths), 19)
        streaming = sorted(p for p, (_, _, s) in vgproto.method_paths().items() if s)
        self.assertEqual(streaming, ["/v1beta1.DevicePlugin/ListAndWatch",
                                     "/vmgpu.v1.Inventory/WatchDevices"])

    def test_every_known_type_filled_round_trips(self):
        proc = run_helper("--types")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        names = proc.stdout.decode().split()
        self.assertGreater(len(names), 30)
        for name in names:
            with self.subTest(type=name):
                msg = fill(message_class(name)())
                assert_same_on_wire(self, msg)
                assert_same_on_wire(self, message_class(name)())  # empty: zero bytes

    def test_run_pod_sandbox_request(self):
        req = cri.RunPodSandboxRequest(runtime_handler="vmgpu")
        cfg = req.config
        cfg.metadata.name = "trainer-0"
        cfg.metadata.uid = "0b4c5a6e-1111-2222-3333-444455556666"
        cfg.metadata.namespace = "ml"
        cfg.metadata.attempt = 2
        cfg.hostname = "trainer-0"
        cfg.log_directory = "/var/log/pods/ml_trainer-0"
        cfg.dns_config.servers.extend(["10.96.0.10", "fd00::a"])
        cfg.dns_config.searches.append("ml.svc.cluster.local")
        cfg.port_mappings.add(protocol=cri.UDP, container_port=53, host_port=5353,
                              host_ip="127.0.0.1")
        cfg.labels["app"] = "trainer"
        cfg.labels["io.kubernetes.pod.name"] = "trainer-0"
        cfg.annotations["vmgpu.io/gpus"] = "2"
        cfg.annotations["vmgpu.io/memory"] = "64Gi"
        cfg.annotations["vmgpu.io/devices"] = "0000:3b:00.0,0000:af:00.0"
        cfg.linux.cgroup_parent = "/kubepods/burstable/pod0b4c"
        cfg.linux.security_context.namespace_options.network = cri.NODE
        cfg.linux.security_context.privileged = True
        cfg.linux.sysctls["net.ipv4.ip_forward"] = "1"
        res = cfg.linux.resources
        res.cpu_period = 100000
        res.cpu_quota = 800000
        res.cpu_shares = 8192
        res.memory_limit_in_bytes = 64 << 30
        res.oom_score_adj = -997
        res.cpuset_cpus = "0-7"
        res.hugepage_limits.add(page_size="1GB", limit=16 << 30)
        res.unified["memory.high"] = "max"
        res.memory_swap_limit_in_bytes = 64 << 30
        cfg.linux.overhead.memory_limit_in_bytes = 256 << 20
        summary = assert_same_on_wire(self, req)
        self.assertEqual(summary["runtime_handler"], "vmgpu")
        self.assertEqual(summary["metadata"],
                         "ml/trainer-0/0b4c5a6e-1111-2222-3333-444455556666/2")
        self.assertEqual(summary["annotation.vmgpu.io/gpus"], "2")
        self.assertEqual(summary["annotation.vmgpu.io/devices"], "0000:3b:00.0,0000:af:00.0")
        self.assertEqual(summary["label.app"], "trainer")
        self.assertEqual(summary["port.0"], "1:53:5353:127.0.0.1")
        self.assertEqual(summary["dns.server.1"], "fd00::a")
        self.assertEqual(summary["cgroup_parent"], "/kubepods/burstable/pod0b4c")
        self.assertEqual(summary["network_mode"], "2")
        self.assertEqual(summary["sysctl.net.ipv4.ip_forward"], "1")
        self.assertEqual(summary["cpu"], "100000/800000/8192")
        self.assertEqual(summary["memory_limit_in_bytes"], str(64 << 30))
        self.assertEqual(summary["cpuset_cpus"], "0-7")
        self.assertEqual(summary["hugepages.1GB"], str(16 << 30))
        self.assertEqual(summary["unified.memory.high"], "max")

    def test_unknown_fields_from_a_newer_cri_are_skipped(self):
        # A real kubelet sends fields our partial messages do not declare, e.g.
        # LinuxSandboxSecurityContext.seccomp (9, message) and run_as_user (3, Int64Value).
        known = cri.RunPodSandboxRequest(runtime_handler="vmgpu")
        known.config.metadata.name = "p"
        known.config.linux.security_context.privileged = True
        sec = known.config.linux.security_context.SerializeToString()
        sec += bytes([0x4A, 0x02, 0x08, 0x01])  # 9: {profile_type: 1}
        sec += bytes([0x1A, 0x02, 0x08, 0x00])  # 3: {value: 0}
        linux = cri.LinuxPodSandboxConfig()
        linux.ParseFromString(bytes([0x12, len(sec)]) + sec)
        req = cri.RunPodSandboxRequest()
        req.CopyFrom(known)
        req.config.linux.CopyFrom(linux)
        data = req.SerializeToString() + bytes([0xA2, 0x06, 0x01, 0x78])  # 100: "x"
        proc = run_helper("runtime.v1.RunPodSandboxRequest", data=data)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        back = cri.RunPodSandboxRequest()
        back.ParseFromString(proc.stdout)
        back.DiscardUnknownFields()
        self.assertEqual(back, known)
        # protobuf-c keeps unknown fields and packs them again
        self.assertEqual(proc.stdout, data)

    def test_gpu_device(self):
        dev = inv.GpuDevice(id="gpu-0000-3b-00-0", bdf="0000:3b:00.0", index=0,
                            name="NVIDIA H100 80GB HBM3", vendor_id="10de", device_id="2330",
                            numa_node=-1, iommu_group=42, driver="vfio-pci", state="allocated",
                            reason="", sandbox_id="a" * 64, pcie_root="0000:38:00.0",
                            subsystem_vendor_id="10de", subsystem_device_id="16c1")
        dev.companions.add(bdf="0000:3b:00.1", vendor_id="10de", device_id="22a3",
                           class_code="040300", driver="vfio-pci")
        dev.companions.add(bdf="0000:3b:00.2", vendor_id="10de", device_id="1ad8",
                           class_code="0c0330", driver="xhci_hcd")
        dev.attributes["memory"] = "81559MiB"
        dev.attributes["product"] = "H100"
        dev.reasons.extend(["driver-bound", "reset-unsupported"])
        summary = assert_same_on_wire(self, dev)
        self.assertEqual(summary["id"], "gpu-0000-3b-00-0")
        self.assertEqual(summary["numa_node"], "-1")
        self.assertEqual(summary["iommu_group"], "42")
        self.assertEqual(summary["companion.1"], "0000:3b:00.2,10de:1ad8,0c0330,xhci_hcd")
        self.assertEqual(summary["attribute.memory"], "81559MiB")
        self.assertEqual(summary["reason.1"], "reset-unsupported")
        listing = inv.ListDevicesResponse(generation=(1 << 64) - 1)
        listing.devices.append(dev)
        listing.devices.add(id="gpu-1", state="available")
        assert_same_on_wire(self, listing)

    def test_allocate_response(self):
        resp = dp.AllocateResponse()
        c = resp.container_responses.add()
        c.envs["NVIDIA_VISIBLE_DEVICES"] = "none"
        c.envs["VMGPU_DEVICES"] = "0000:3b:00.0"
        c.annotations["vmgpu.io/devices"] = "0000:3b:00.0"
        c.devices.add(container_path="/dev/vfio/42", host_path="/dev/vfio/42", permissions="rw")
        c.mounts.add(container_path="/run/vmgpu", host_path="/run/vmgpu/x", read_only=True)
        c.cdi_devices.add(name="vmgpu.io/gpu=gpu-0000-3b-00-0")
        resp.container_responses.add()  # an empty one for a second container
        summary = assert_same_on_wire(self, resp)
        self.assertEqual(summary["0.env.VMGPU_DEVICES"], "0000:3b:00.0")
        self.assertEqual(summary["0.env.NVIDIA_VISIBLE_DEVICES"], "none")
        self.assertEqual(summary["0.annotation.vmgpu.io/devices"], "0000:3b:00.0")
        self.assertEqual(summary["0.device.0"], "/dev/vfio/42:/dev/vfio/42:rw")
        self.assertEqual(summary["0.mount.0"], "/run/vmgpu/x:/run/vmgpu:1")
        self.assertEqual(summary["0.cdi.0"], "vmgpu.io/gpu=gpu-0000-3b-00-0")

    def test_list_and_watch_uses_capital_id(self):
        resp = dp.ListAndWatchResponse()
        d = resp.devices.add(ID="gpu-0000-3b-00-0", health="Healthy")
        d.topology.nodes.add(ID=1)
        resp.devices.add(ID="gpu-0000-af-00-0", health="Unhealthy")
        summary = assert_same_on_wire(self, resp)
        self.assertEqual(summary["device.gpu-0000-3b-00-0"], "Healthy,numa1")
        self.assertEqual(summary["device.gpu-0000-af-00-0"], "Unhealthy")
        # kubelet's ContainerPreferredAllocationRequest field names survive in Python
        req = dp.PreferredAllocationRequest()
        req.container_requests.add(available_deviceIDs=["a", "b"], must_include_deviceIDs=["a"],
                                   allocation_size=1)
        assert_same_on_wire(self, req)

    def test_pod_resources_and_optional_share_id(self):
        resp = pr.GetPodResourcesResponse()
        pod = resp.pod_resources
        pod.name = "trainer-0"
        pod.namespace = "ml"
        ctr = pod.containers.add(name="main")
        ctr.devices.add(resource_name="vmgpu.io/gpu", device_ids=["gpu-0000-3b-00-0"])
        claim = ctr.dynamic_resources.add(claim_name="c", claim_namespace="ml")
        res = claim.claim_resources.add(driver_name="gpu.vmgpu.io", pool_name="node-a",
                                        device_name="gpu-0")
        res.cdi_devices.add(name="vmgpu.io/gpu=gpu-0")
        self.assertFalse(res.HasField("share_id"))
        summary = assert_same_on_wire(self, resp)
        self.assertEqual(summary["pod"], "ml/trainer-0")
        self.assertEqual(summary["main.vmgpu.io/gpu"], "gpu-0000-3b-00-0")
        # proto3 optional: an explicitly empty share_id is on the wire; the C side (label
        # dropped for protoc-c) keeps a non-empty one exactly.
        res.share_id = "s1"
        assert_same_on_wire(self, resp)

    def test_kubelet_style_names_are_distinct_types(self):
        self.assertEqual(dp.TopologyInfo.DESCRIPTOR.full_name, "v1beta1.TopologyInfo")
        self.assertEqual(pr.TopologyInfo.DESCRIPTOR.full_name, "v1.TopologyInfo")
        self.assertEqual(cri.PodSandboxConfig.DESCRIPTOR.fields_by_name["linux"].number, 8)
        self.assertEqual(cri.PodSandboxStatus.DESCRIPTOR.fields_by_name["linux"].number, 6)


class GrpcStubs(unittest.TestCase):
    """The grpc_tools stubs work with the protoc 3.21 modules over a unix socket."""

    def test_fake_kubelet_registration_and_podresources(self):
        got = []
        done = threading.Event()

        class Registration(vgproto.deviceplugin_grpc.RegistrationServicer):
            def Register(self, request, context):
                got.append(request)
                done.set()
                return dp.Empty()

        class PodResources(vgproto.podresources_grpc.PodResourcesListerServicer):
            def Get(self, request, context):
                out = pr.GetPodResourcesResponse()
                out.pod_resources.name = request.pod_name
                out.pod_resources.namespace = request.pod_namespace
                return out

        with tempfile.TemporaryDirectory() as d:
            sock = os.path.join(d, "kubelet.sock")
            server = vgproto.unix_server(
                sock,
                (vgproto.deviceplugin_grpc.add_RegistrationServicer_to_server, Registration()),
                (vgproto.podresources_grpc.add_PodResourcesListerServicer_to_server,
                 PodResources()))
            try:
                ch = vgproto.wait_ready(vgproto.channel(sock), 5)
                req = dp.RegisterRequest(version="v1beta1", endpoint="vmgpu.sock",
                                         resource_name="vmgpu.io/gpu")
                req.options.get_preferred_allocation_available = True
                self.assertEqual(vgproto.registration_stub(ch).Register(req, timeout=5),
                                 dp.Empty())
                self.assertTrue(done.wait(5))
                self.assertEqual(got[0], req)
                out = vgproto.podresources_stub(sock).Get(
                    pr.GetPodResourcesRequest(pod_name="p", pod_namespace="ns"), timeout=5)
                self.assertEqual((out.pod_resources.namespace, out.pod_resources.name),
                                 ("ns", "p"))
                with self.assertRaises(vgproto.grpc.RpcError) as cm:
                    vgproto.podresources_stub(ch).List(pr.ListPodResourcesRequest(), timeout=5)
                self.assertEqual(cm.exception.code(), vgproto.grpc.StatusCode.UNIMPLEMENTED)
                ch.close()
            finally:
                server.stop(0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
