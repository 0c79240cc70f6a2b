#!/usr/bin/python3
"""vmgpuctl against a fake agent: every verb, its requests, its output and its errors.

The fake serves runtime.v1.RuntimeService and vmgpu.v1.Inventory (Python grpc, vgproto) on a
unix socket in a temp dir, answers from canned data and records every request it gets, so the
tests check the exact requests vmgpuctl sends (RunPodSandbox's metadata and annotations above
all) as well as what it prints. The expectations are written from the CLI's contract
(docs/cli.md), not from its output. No root, GPU or real agent is needed.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vgproto  # noqa: E402

cri = vgproto.cri
inv = vgproto.inventory

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("VMGPU_BIN_DIR", os.path.join(SOURCE, "build"))
VMGPUCTL = os.path.join(BIN, "cli", "vmgpuctl")
KUBECTL_VMGPU = os.path.join(BIN, "cli", "kubectl-vmgpu")

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
NS = 1000000000


def gpu(index, bdf, state="available", reason="", sandbox="", numa=0, group=10,
        companions=(), attributes=None, reasons=()):
    return inv.GpuDevice(
        id=bdf, bdf=bdf, index=index, name="NVIDIA H100 80GB HBM3", vendor_id="10de",
        device_id="2330", numa_node=numa, iommu_group=group, driver="nvidia", state=state,
        reason=reason, sandbox_id=sandbox, pcie_root="pci0000:10", subsystem_vendor_id="10de",
        subsystem_device_id="16c1", reasons=list(reasons),
        attributes=attributes or {"product": "H100", "numa": str(numa)},
        companions=[inv.PciFunction(bdf=c, vendor_id="10de", device_id="22a3",
                                    class_code="0403", driver="snd_hda_intel")
                    for c in companions])


DEVICES = [
    gpu(0, "0000:1b:00.0", state="allocated", sandbox="sb-one"),
    gpu(1, "0000:43:00.0", companions=["0000:43:00.1"]),
    gpu(2, "0000:9d:00.0", state="unsupported", numa=-1, group=-1,
        reason="IOMMU is off; boot with intel_iommu=on",
        reasons=["IOMMU is off; boot with intel_iommu=on", "the vfio-pci module is missing"]),
]


class Sandbox:
    """One sandbox as the fake agent keeps it: CRI fields and the vmgpu info object."""

    def __init__(self, sid, name, created_s_ago, state, gpus=(), reason="", ns="default",
                 labels=None, annotations=None, console_log="", with_info=True):
        self.id = sid
        self.name = name
        self.ns = ns
        self.created_at = int((time.time() - created_s_ago) * NS)
        self.labels = labels or {}
        self.annotations = annotations or {}
        self.with_info = with_info
        self.info = {"state": state, "reason": reason, "gpus": list(gpus),
                     "tap": "vg-" + sid[:8], "host_ip": "10.88.0.1", "guest_ip": "10.88.0.2",
                     "console_log": console_log, "shim_pid": 4242, "qemu_pid": 4243,
                     "dir": "/var/lib/vmgpu/sandboxes/" + sid}

    def metadata(self):
        return cri.PodSandboxMetadata(name=self.name, uid="uid-" + self.id, namespace=self.ns,
                                      attempt=0)

    def cri_state(self):
        return cri.SANDBOX_READY if self.info["state"] == "ready" else cri.SANDBOX_NOTREADY

    def list_item(self):
        return cri.PodSandbox(id=self.id, metadata=self.metadata(), state=self.cri_state(),
                              created_at=self.created_at, labels=self.labels,
                              annotations=self.annotations)

    def status(self, verbose):
        status = cri.PodSandboxStatus(
            id=self.id, metadata=self.metadata(), state=self.cri_state(),
            created_at=self.created_at, labels=self.labels, annotations=self.annotations,
            network=cri.PodSandboxNetworkStatus(ip=self.info["guest_ip"]))
        info = {"vmgpu": json.dumps(self.info)} if verbose and self.with_info else {}
        return cri.PodSandboxStatusResponse(status=status, info=info)


class FakeAgent(vgproto.cri_grpc.RuntimeServiceServicer, vgproto.inventory_grpc.InventoryServicer):
    """Answers from self.devices and self.sandboxes; self.fail[method] = (code, message) makes a
    method fail; self.delay[method] = seconds makes it slow. self.calls records
    (method, request) in order."""

    def __init__(self, socket_path):
        self.lock = threading.Lock()
        self.calls = []
        self.devices = list(DEVICES)
        self.sandboxes = {}
        self.fail = {}
        self.delay = {}
        self.status_hook = None  # called with the sandbox id on each PodSandboxStatus
        self.run_id = "c0ffee0123456789"
        self.server = vgproto.unix_server(
            socket_path, (vgproto.cri_grpc.add_RuntimeServiceServicer_to_server, self),
            (vgproto.inventory_grpc.add_InventoryServicer_to_server, self), max_workers=8)

    def stop(self):
        self.server.stop(0)

    def add(self, sandbox):
        self.sandboxes[sandbox.id] = sandbox
        return sandbox

    def requests(self, method):
        with self.lock:
            return [r for m, r in self.calls if m == method]

    def _enter(self, method, request, context):
        with self.lock:
            self.calls.append((method, request))
        if method in self.delay:
            time.sleep(self.delay[method])
        if method in self.fail:
            code, message = self.fail[method]
            context.abort(code, message)

    def _sandbox(self, sid, context):
        if sid not in self.sandboxes:
            context.abort(grpc.StatusCode.NOT_FOUND, "sandbox %s not found" % sid)
        return self.sandboxes[sid]

    # Inventory
    def ListDevices(self, request, context):
        self._enter("ListDevices", request, context)
        return inv.ListDevicesResponse(devices=self.devices, generation=7)

    # RuntimeService
    def Version(self, request, context):
        self._enter("Version", request, context)
        return cri.VersionResponse(version="0.1.0", runtime_name="vmgpu",
                                   runtime_version="0.1.0", runtime_api_version="v1")

    def RunPodSandbox(self, request, context):
        self._enter("RunPodSandbox", request, context)
        return cri.RunPodSandboxResponse(pod_sandbox_id=self.run_id)

    def StopPodSandbox(self, request, context):
        self._enter("StopPodSandbox", request, context)
        self._sandbox(request.pod_sandbox_id, context).info["state"] = "exited"
        return cri.StopPodSandboxResponse()

    def RemovePodSandbox(self, request, context):
        self._enter("RemovePodSandbox", request, context)
        self._sandbox(request.pod_sandbox_id, context)
        del self.sandboxes[request.pod_sandbox_id]
        return cri.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request, context):
        self._enter("PodSandboxStatus", request, context)
        if self.status_hook:
            self.status_hook(request.pod_sandbox_id)
        return self._sandbox(request.pod_sandbox_id, context).status(request.verbose)

    def ListPodSandbox(self, request, context):
        self._enter("ListPodSandbox", request, context)
        # Newest first, so the CLI's own ordering (oldest first) is what the test sees.
        items = sorted(self.sandboxes.values(), key=lambda s: -s.created_at)
        return cri.ListPodSandboxResponse(items=[s.list_item() for s in items])


def parse_table(text):
    """kubectl-style table -> (headers, rows of dicts). Columns are separated by 3+ spaces in
    our printer; single spaces stay inside a header ("IOMMU GROUP") or a cell."""
    lines = [line for line in text.splitlines() if line.strip()]
    split = re.compile(r"\s{3,}")
    headers = split.split(lines[0].strip())
    rows = []
    for line in lines[1:]:
        cells = split.split(line.strip())
        rows.append(dict(zip(headers, cells)))
    return headers, rows


class CliTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="vmgpu-cli-")
        self.socket = os.path.join(self.tmp.name, "agent.sock")
        self.agent = FakeAgent(self.socket)
        # Our own config, so a host's /etc/vmgpu/config.yaml plays no part.
        self.config = os.path.join(self.tmp.name, "config.yaml")
        with open(self.config, "w") as f:
            f.write("socket: %s\n" % self.socket)

    def tearDown(self):
        self.agent.stop()
        self.tmp.cleanup()

    def cli(self, *args, binary=VMGPUCTL, socket_flag=True, timeout=60, cwd=None):
        """Runs the CLI with --config ours and, unless socket_flag is False, --socket."""
        argv = [binary] + list(args) + ["--config", self.config]
        if socket_flag:
            argv += ["--socket", self.socket]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def ok(self, *args, **kw):
        proc = self.cli(*args, **kw)
        self.assertEqual(proc.returncode, 0, "%s\nstdout:\n%s\nstderr:\n%s"
                         % (args, proc.stdout, proc.stderr))
        return proc

    def fails(self, code, *args, **kw):
        proc = self.cli(*args, **kw)
        self.assertEqual(proc.returncode, code, "%s\nstdout:\n%s\nstderr:\n%s"
                         % (args, proc.stdout, proc.stderr))
        return proc


def parse_yaml(text):
    """Just enough YAML for what vmgpuctl emits: block mappings and sequences (a sequence under
    a key may sit at the key's own indentation), double-quoted strings, plain numbers, booleans
    and null, and the flow forms [] and {}. Python's yaml module may not be installed."""
    lines = [line for line in text.splitlines()
             if line.strip() and line.strip() not in ("---", "...")]
    pos = 0

    def indent(line):
        return len(line) - len(line.lstrip(" "))

    def is_item(line):
        return line.lstrip().startswith("- ") or line.strip() == "-"

    def scalar(text):
        text = text.strip()
        if text.startswith('"'):
            return json.loads(text)
        fixed = {"[]": [], "{}": {}, "null": None, "~": None, "true": True, "false": False}
        if text in fixed:
            return fixed[text]
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    def block(ind):
        return sequence(ind) if is_item(lines[pos]) else mapping(ind)

    def sequence(ind):
        nonlocal pos
        out = []
        while pos < len(lines) and indent(lines[pos]) == ind and is_item(lines[pos]):
            rest = lines[pos][ind + 2:]
            if not rest.startswith('"') and re.match(r"^[^:\s][^:]*:( |$)", rest):
                lines[pos] = " " * (ind + 2) + rest  # a mapping item: its keys line up
                out.append(mapping(ind + 2))
            else:
                pos += 1
                out.append(scalar(rest))
        return out

    def mapping(ind):
        nonlocal pos
        out = {}
        while pos < len(lines) and indent(lines[pos]) == ind and not is_item(lines[pos]):
            key, _, rest = lines[pos].strip().partition(":")
            key = json.loads(key) if key.startswith('"') else key
            pos += 1
            if rest.strip():
                out[key] = scalar(rest)
            elif pos < len(lines) and (indent(lines[pos]) > ind or
                                       (indent(lines[pos]) == ind and is_item(lines[pos]))):
                out[key] = block(indent(lines[pos]))
            else:
                out[key] = None
        return out

    return block(indent(lines[0])) if lines else None


def parse_describe(text):
    """Top-level "Key:   value" lines of a describe view -> dict; a section key (no value)
    maps to the list of its indented lines, stripped."""
    out, section = {}, None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith(" "):
            if section is not None:
                out[section].append(line.strip())
            continue
        key, _, value = line.partition(":")
        if value.strip():
            out[key] = value.strip()
            section = None
        else:
            out[key] = []
            section = key
    return out


def device_dict(device):
    """What -o json must print for a device: every field under its .proto name."""
    from google.protobuf import json_format
    return json_format.MessageToDict(device, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


class GetGpusTest(CliTestCase):
    def test_table_has_the_documented_columns_and_a_row_per_gpu(self):
        headers, rows = parse_table(self.ok("get", "gpus").stdout)
        self.assertEqual(headers, ["INDEX", "BDF", "NAME", "NUMA", "STATE", "SANDBOX", "REASON"])
        self.assertEqual([r["BDF"] for r in rows],
                         ["0000:1b:00.0", "0000:43:00.0", "0000:9d:00.0"])
        self.assertEqual(rows[0], {"INDEX": "0", "BDF": "0000:1b:00.0",
                                   "NAME": "NVIDIA H100 80GB HBM3", "NUMA": "0",
                                   "STATE": "allocated", "SANDBOX": "sb-one", "REASON": "-"})
        self.assertEqual(rows[2]["NUMA"], "-")  # the kernel's -1
        self.assertEqual(rows[2]["STATE"], "unsupported")
        self.assertEqual(rows[2]["REASON"], "IOMMU is off; boot with intel_iommu=on")
        self.assertEqual(len(self.agent.requests("ListDevices")), 1)

    def test_wide_adds_group_driver_root_ids_and_companions(self):
        headers, rows = parse_table(self.ok("get", "gpus", "-o", "wide").stdout)
        self.assertEqual(headers[7:], ["IOMMU GROUP", "DRIVER", "PCIE ROOT", "IDS",
                                       "COMPANIONS"])
        self.assertEqual(rows[1]["COMPANIONS"], "0000:43:00.1")
        self.assertEqual(rows[1]["IDS"], "10de:2330")
        self.assertEqual(rows[1]["IOMMU GROUP"], "10")
        self.assertEqual(rows[1]["PCIE ROOT"], "pci0000:10")
        self.assertEqual(rows[2]["IOMMU GROUP"], "none")
        self.assertEqual(rows[0]["COMPANIONS"], "-")

    def test_json_is_every_device_with_proto_field_names(self):
        devices = json.loads(self.ok("get", "gpus", "-o", "json").stdout)
        self.assertEqual(devices, [device_dict(d) for d in DEVICES])
        self.assertEqual(devices[2]["numa_node"], -1)
        self.assertEqual(devices[1]["companions"][0]["class_code"], "0403")

    def test_yaml_says_the_same_as_json(self):
        text = self.ok("get", "gpus", "-o", "yaml").stdout
        self.assertEqual(parse_yaml(text), [device_dict(d) for d in DEVICES])
        # Strings stay strings for a YAML reader ("0403" is not a number), one line each.
        self.assertIn('    class_code: "0403"\n', text)
        self.assertIn('  reason: "IOMMU is off; boot with intel_iommu=on"\n', text)

    def test_no_gpus_says_so_on_stderr(self):
        self.agent.devices = []
        proc = self.ok("get", "gpus")
        self.assertEqual(proc.stdout, "")
        self.assertIn("No GPUs on this node", proc.stderr)
        self.assertEqual(json.loads(self.ok("get", "gpus", "-o", "json").stdout), [])

    def test_bad_resource_and_format_are_usage_errors(self):
        proc = self.fails(2, "get", "pods")
        self.assertIn("unknown resource 'pods': use gpus or sandboxes", proc.stderr)
        proc = self.fails(2, "get", "gpus", "-o", "xml")
        self.assertIn("output format 'xml' is not one of", proc.stderr)
        self.fails(2, "get")
        self.assertEqual(self.agent.calls, [])


class DescribeGpuTest(CliTestCase):
    def test_by_bdf_in_any_case(self):
        view = parse_describe(self.ok("describe", "gpu", "0000:1B:00.0").stdout)
        self.assertEqual(view["BDF"], "0000:1b:00.0")
        self.assertEqual(view["State"], "allocated")
        self.assertEqual(view["Sandbox"], "sb-one")
        self.assertEqual(view["Attributes"], ["numa=0", "product=H100"])  # sorted by key
        self.assertEqual(view["Companions"], "<none>")
        self.assertEqual(view["Reasons"], "<none>")

    def test_by_short_bdf_shows_companions(self):
        view = parse_describe(self.ok("describe", "gpu", "43:00.0").stdout)
        self.assertEqual(view["Index"], "1")
        self.assertEqual(len(view["Companions"]), 1)
        self.assertIn("0000:43:00.1", view["Companions"][0])
        self.assertIn("snd_hda_intel", view["Companions"][0])

    def test_by_index_lists_every_reason(self):
        view = parse_describe(self.ok("describe", "gpu", "2").stdout)
        self.assertEqual(view["BDF"], "0000:9d:00.0")
        self.assertEqual(view["Reasons"], ["IOMMU is off; boot with intel_iommu=on",
                                           "the vfio-pci module is missing"])
        self.assertEqual(view["NUMA Node"], "<none>")
        self.assertEqual(view["IOMMU Group"], "<none>")
        self.assertEqual(view["Subsystem"], "10de:16c1")

    def test_json_is_the_device(self):
        obj = json.loads(self.ok("describe", "gpu", "1", "-o", "json").stdout)
        self.assertEqual(obj, device_dict(DEVICES[1]))

    def test_absent_gpu_is_not_found(self):
        proc = self.fails(1, "describe", "gpu", "0000:99:00.0")
        self.assertTrue(proc.stderr.startswith(
            "vmgpuctl: error: NOT_FOUND: no GPU 0000:99:00.0 on this node"), proc.stderr)
        self.assertEqual(proc.stdout, "")
        self.fails(1, "describe", "gpu", "7")

    def test_usage(self):
        self.assertIn("takes a resource and an ID", self.fails(2, "describe", "gpu").stderr)
        self.fails(2, "describe", "gpu", "1", "-o", "wide")
        self.fails(2, "describe", "node", "1")


class SandboxesTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.one = self.agent.add(Sandbox(
            "sb-one", "train", 3700, "ready", gpus=["0000:1b:00.0", "0000:43:00.0"],
            labels={"team": "ml", "app": "train"}, annotations={"vmgpu.io/gpu-count": "2"}))
        self.two = self.agent.add(Sandbox("sb-two", "broken", 30, "failed",
                                          reason="the guest did not see 0000:9d:00.0"))
        self.old = self.agent.add(Sandbox("sb-old", "legacy", 90000, "ready", with_info=False))

    def test_table_shows_the_vmgpu_state_oldest_first(self):
        headers, rows = parse_table(self.ok("get", "sandboxes").stdout)
        self.assertEqual(headers, ["ID", "NAME", "STATE", "GPUS", "AGE", "REASON"])
        self.assertEqual([r["ID"] for r in rows], ["sb-old", "sb-one", "sb-two"])
        self.assertEqual(rows[1], {"ID": "sb-one", "NAME": "train", "STATE": "ready",
                                   "GPUS": "0000:1b:00.0,0000:43:00.0", "AGE": "61m",
                                   "REASON": "-"})
        self.assertEqual(rows[2]["STATE"], "failed")
        self.assertRegex(rows[2]["AGE"], r"^\d+s$")
        self.assertEqual(rows[2]["REASON"], "the guest did not see 0000:9d:00.0")
        # No vmgpu info: the CRI state stands in.
        self.assertEqual(rows[0]["STATE"], "ready")
        self.assertEqual(rows[0]["AGE"], "25h")
        statuses = self.agent.requests("PodSandboxStatus")
        self.assertEqual(sorted(r.pod_sandbox_id for r in statuses), ["sb-old", "sb-one", "sb-two"])
        self.assertTrue(all(r.verbose for r in statuses))

    def test_wide_adds_ip_tap_and_pids(self):
        headers, rows = parse_table(self.ok("get", "sandbox", "-o", "wide").stdout)
        self.assertEqual(headers[6:], ["IP", "TAP", "SHIM PID", "QEMU PID"])
        self.assertEqual([rows[1][h] for h in headers[6:]],
                         ["10.88.0.2", "vg-sb-one", "4242", "4243"])
        self.assertEqual(rows[0]["IP"], "10.88.0.2")  # CRI network.ip when info is missing
        self.assertEqual(rows[0]["SHIM PID"], "-")

    def test_json_and_yaml_hold_the_status_and_decoded_info(self):
        items = json.loads(self.ok("get", "sandboxes", "-o", "json").stdout)
        self.assertEqual([i["status"]["id"] for i in items], ["sb-old", "sb-one", "sb-two"])
        one = items[1]
        self.assertEqual(one["info"]["vmgpu"], self.one.info)
        self.assertEqual(one["status"]["metadata"], {"name": "train", "uid": "uid-sb-one",
                                                     "namespace": "default", "attempt": 0})
        self.assertEqual(one["status"]["state"], "SANDBOX_READY")
        self.assertEqual(one["status"]["created_at"], self.one.created_at)
        self.assertEqual(one["status"]["labels"], {"team": "ml", "app": "train"})
        self.assertEqual(items[0]["info"], {})
        self.assertEqual(parse_yaml(self.ok("get", "sandboxes", "-o", "yaml").stdout), items)

    def test_a_sandbox_removed_during_the_listing_is_left_out(self):
        def vanish(sid):
            if sid == "sb-two":
                self.agent.sandboxes.pop("sb-two", None)
        self.agent.status_hook = vanish
        _, rows = parse_table(self.ok("get", "sandboxes").stdout)
        self.assertEqual([r["ID"] for r in rows], ["sb-old", "sb-one"])

    def test_a_failing_status_shows_as_unknown_with_the_error(self):
        self.agent.fail["PodSandboxStatus"] = (grpc.StatusCode.INTERNAL, "state file unreadable")
        _, rows = parse_table(self.ok("get", "sandboxes").stdout)
        self.assertEqual({r["STATE"] for r in rows}, {"unknown"})
        self.assertEqual(rows[0]["REASON"], "INTERNAL: state file unreadable")

    def test_none(self):
        self.agent.sandboxes = {}
        proc = self.ok("get", "sandboxes")
        self.assertEqual(proc.stdout, "")
        self.assertIn("No sandboxes", proc.stderr)

    def test_describe(self):
        view = parse_describe(self.ok("describe", "sandbox", "sb-one").stdout)
        self.assertEqual(view["ID"], "sb-one")
        self.assertEqual(view["Name"], "train")
        self.assertEqual(view["Namespace"], "default")
        self.assertEqual(view["UID"], "uid-sb-one")
        self.assertEqual(view["State"], "ready (CRI: SANDBOX_READY)")
        self.assertEqual(view["IP"], "10.88.0.2")
        self.assertRegex(view["Created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(61m ago\)$")
        self.assertEqual(view["Labels"], ["app=train", "team=ml"])
        self.assertEqual(view["Annotations"], ["vmgpu.io/gpu-count=2"])
        vm = dict(line.split(":", 1) for line in view["VM"])
        vm = {k: v.strip() for k, v in vm.items()}
        self.assertEqual(vm["GPUs"], "0000:1b:00.0,0000:43:00.0")
        self.assertEqual(vm["TAP"], "vg-sb-one")
        self.assertEqual(vm["Host IP"], "10.88.0.1")
        self.assertEqual(vm["Shim PID"], "4242")
        self.assertEqual(vm["QEMU PID"], "4243")
        self.assertEqual(vm["Directory"], "/var/lib/vmgpu/sandboxes/sb-one")
        failed = parse_describe(self.ok("describe", "sandbox", "sb-two").stdout)
        self.assertEqual(failed["State"], "failed (CRI: SANDBOX_NOTREADY)")
        self.assertEqual(failed["Reason"], "the guest did not see 0000:9d:00.0")

    def test_describe_json(self):
        obj = json.loads(self.ok("describe", "sandbox", "sb-one", "-o", "json").stdout)
        self.assertEqual(obj["info"]["vmgpu"], self.one.info)
        self.assertEqual(obj["status"]["network"]["ip"], "10.88.0.2")

    def test_describe_absent(self):
        proc = self.fails(1, "describe", "sandbox", "nope")
        self.assertEqual(proc.stderr, "vmgpuctl: error: NOT_FOUND: sandbox nope not found\n")


class RunTest(CliTestCase):
    def run_request(self, *args, cwd=None):
        proc = self.ok("run", *args, cwd=cwd)
        self.assertEqual(proc.stdout, self.agent.run_id + "\n")  # the ID alone, for $(...)
        requests = self.agent.requests("RunPodSandbox")
        self.assertEqual(len(requests), 1)
        return requests[0].config

    def test_gpu_count(self):
        config = self.run_request("demo", "--gpus", "2")
        self.assertEqual(config.metadata.name, "demo")
        self.assertEqual(config.metadata.namespace, "default")
        self.assertRegex(config.metadata.uid, UUID4)
        self.assertEqual(config.metadata.attempt, 0)
        self.assertEqual(dict(config.annotations), {"vmgpu.io/gpu-count": "2"})
        self.assertEqual(dict(config.labels), {})

    def test_no_gpu_flag_sends_no_gpu_annotation(self):
        config = self.run_request("cpu-only")
        self.assertEqual(dict(config.annotations), {})

    def test_flags_may_come_before_the_name(self):
        config = self.run_request("--gpus", "1", "demo")
        self.assertEqual(config.metadata.name, "demo")

    def test_devices_are_normalised_and_kept_in_order(self):
        config = self.run_request("demo", "--gpu-device", "0000:1B:00.0", "--gpu-device", "3",
                                  "--gpu-device", "43:00.0")
        self.assertEqual(dict(config.annotations),
                         {"vmgpu.io/gpu-devices": "0000:1b:00.0,3,0000:43:00.0"})

    def test_selector_with_a_count(self):
        config = self.run_request("demo", "--gpu-selector", "product=H100,numa=0", "--gpus", "2")
        self.assertEqual(dict(config.annotations), {"vmgpu.io/gpu-count": "2",
                                                    "vmgpu.io/gpu-selector":
                                                        "product=H100,numa=0"})

    def test_vm_shape_labels_and_annotations(self):
        config = self.run_request(
            "web-1.example", "--gpus", "1", "--kernel", "guest/vmlinuz", "--initrd",
            "/srv/initrd.img", "--vcpus", "4", "--memory", "2048", "--namespace", "team-a",
            "--label", "app=demo", "--label", "tier=gpu", "--annotation", "note=a=b",
            "--annotation", "vmgpu.io/accel=tcg", cwd=self.tmp.name)
        self.assertEqual(config.metadata.name, "web-1.example")
        self.assertEqual(config.metadata.namespace, "team-a")
        self.assertEqual(dict(config.labels), {"app": "demo", "tier": "gpu"})
        self.assertEqual(dict(config.annotations), {
            "vmgpu.io/gpu-count": "1",
            # The agent has its own working directory: relative paths are made absolute.
            "vmgpu.io/kernel": os.path.join(self.tmp.name, "guest/vmlinuz"),
            "vmgpu.io/initrd": "/srv/initrd.img",
            "vmgpu.io/vcpus": "4",
            "vmgpu.io/memory-mib": "2048",
            "note": "a=b",
            "vmgpu.io/accel": "tcg",
        })

    def test_each_run_gets_a_new_uid(self):
        self.ok("run", "a")
        self.ok("run", "b")
        uids = [r.config.metadata.uid for r in self.agent.requests("RunPodSandbox")]
        self.assertEqual(len(set(uids)), 2)
        for uid in uids:
            self.assertRegex(uid, UUID4)

    def test_local_validation(self):
        cases = [
            (["--gpus", "2", "--gpu-device", "1"], "--gpus and --gpu-device are exclusive"),
            (["--gpu-device", "1", "--gpu-selector", "numa=0"],
             "--gpu-device and --gpu-selector are exclusive"),
            (["--gpus", "0", "--gpu-selector", "numa=0"], "--gpus 0 with --gpu-selector"),
            (["--gpus", "17"], "--gpus must be a whole number from 0 to 16, not '17'"),
            (["--gpus", "two"], "--gpus must be a whole number from 0 to 16, not 'two'"),
            (["--gpus", "1", "--gpus", "2"], "--gpus is given twice"),
            (["--vcpus", "0"], "--vcpus must be a whole number from 1 to 256, not '0'"),
            (["--vcpus", "257"], "--vcpus must be a whole number from 1 to 256, not '257'"),
            (["--memory", "32"], "--memory (MiB) must be a whole number from 64 to 4194304"),
            (["--gpu-device", "0000:zz:00.0"], "is neither a GPU index nor a PCI address"),
            (["--gpu-device", "70000"], "a GPU index must be a whole number from 0 to 65535"),
            (["--gpu-device", "1", "--gpu-device", "1"], "--gpu-device 1 is given twice"),
            (["--gpu-device", "1b:00.0", "--gpu-device", "0000:1B:00.0"],
             "--gpu-device 0000:1b:00.0 is given twice"),
            (["--gpu-selector", " "], "--gpu-selector wants 1 to 511 characters"),
            (["--label", "novalue"], "--label wants KEY=VALUE, not 'novalue'"),
            (["--label", "=v"], "--label wants KEY=VALUE, not '=v'"),
            (["--label", "a=1", "--label", "a=2"], "label a is set twice"),
            (["--gpus", "2", "--annotation", "vmgpu.io/gpu-count=3"],
             "annotation vmgpu.io/gpu-count is set twice (by --gpus and by --annotation)"),
            (["--namespace", "Team_A"], "--namespace 'Team_A' is not a valid namespace"),
            (["--kernel", ""], "--kernel: the path is empty"),
            (["--timeout", "0"], "--timeout must be a whole number from 1 to 86400"),
            (["-o", "json"], "-o is not supported"),
            (["--gpu", "1"], "unknown flag '--gpu'"),
        ]
        for extra, message in cases:
            with self.subTest(extra=extra):
                proc = self.fails(2, "run", "demo", *extra)
                self.assertIn(message, proc.stderr)
                self.assertTrue(proc.stderr.startswith("vmgpuctl: error: "), proc.stderr)
                self.assertEqual(proc.stdout, "")
        for argv, message in [(["run"], "run takes one NAME, got 0"),
                              (["run", "a", "b"], "run takes one NAME, got 2"),
                              (["run", "Demo"], "sandbox name 'Demo' is not valid"),
                              (["run", "demo-"], "sandbox name 'demo-' is not valid"),
                              (["run", "my_vm"], "sandbox name 'my_vm' is not valid")]:
            with self.subTest(argv=argv):
                self.assertIn(message, self.fails(2, *argv).stderr)
        # A flag with its value missing, last on the line.
        proc = subprocess.run([VMGPUCTL, "run", "demo", "--socket", self.socket, "--gpus"],
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stderr, "vmgpuctl: error: flag --gpus needs a value; see vmgpuctl "
                                      "run --help\n")
        self.assertEqual(self.agent.requests("RunPodSandbox"), [])

    def test_agent_errors_print_the_code_name(self):
        for code, name, message in [
                (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED",
                 "requested 9 GPUs but only 8 are available"),
                (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                 "vmgpu.io/accel: invalid value 'fast': expected kvm or tcg"),
                (grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION",
                 "GPU 0000:1b:00.0 is allocated to sandbox sb-one")]:
            with self.subTest(code=name):
                self.agent.fail["RunPodSandbox"] = (code, message)
                proc = self.fails(1, "run", "demo", "--gpus", "9")
                self.assertEqual(proc.stderr, "vmgpuctl: error: %s: %s\n" % (name, message))
                self.assertEqual(proc.stdout, "")

    def test_timeout_bounds_the_wait_and_says_what_to_do(self):
        self.agent.delay["RunPodSandbox"] = 4
        start = time.monotonic()
        proc = self.fails(1, "run", "slow", "--timeout", "1")
        self.assertLess(time.monotonic() - start, 3.5)
        self.assertIn("vmgpuctl: error: DEADLINE_EXCEEDED", proc.stderr)
        self.assertIn("may still be starting", proc.stderr)
        self.assertIn("--timeout", proc.stderr)


class StopRemoveTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.agent.add(Sandbox("sb-one", "a", 10, "ready"))
        self.agent.add(Sandbox("sb-two", "b", 10, "ready"))

    def test_stop(self):
        proc = self.ok("stop", "sb-one")
        self.assertEqual(proc.stdout, "sandbox sb-one stopped\n")
        self.assertEqual([r.pod_sandbox_id for r in self.agent.requests("StopPodSandbox")],
                         ["sb-one"])

    def test_rm_several(self):
        proc = self.ok("rm", "sb-one", "sb-two")
        self.assertEqual(proc.stdout, "sandbox sb-one removed\nsandbox sb-two removed\n")
        self.assertEqual(self.agent.sandboxes, {})

    def test_a_missing_id_fails_the_command_but_not_the_others(self):
        proc = self.fails(1, "stop", "nope", "sb-two")
        self.assertEqual(proc.stderr, "vmgpuctl: error: NOT_FOUND: sandbox nope not found\n")
        self.assertEqual(proc.stdout, "sandbox sb-two stopped\n")

    def test_usage(self):
        self.assertIn("stop needs at least one sandbox ID", self.fails(2, "stop").stderr)
        self.assertIn("rm needs at least one sandbox ID", self.fails(2, "rm").stderr)
        self.assertEqual(self.agent.calls, [])


class LogsTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp.name, "console.log")
        self.sandbox = self.agent.add(Sandbox("sb-log", "logger", 5, "ready",
                                              console_log=self.log))

    def write_log(self, text, mode="a"):
        with open(self.log, mode) as f:
            f.write(text)

    def test_prints_the_console_log(self):
        self.write_log("Linux version 6.1\nVMGPU-READY net=ok\n", "w")
        proc = self.ok("logs", "sb-log")
        self.assertEqual(proc.stdout, "Linux version 6.1\nVMGPU-READY net=ok\n")
        self.assertTrue(self.agent.requests("PodSandboxStatus")[0].verbose)

    def test_missing_file_and_missing_key_are_errors(self):
        proc = self.fails(1, "logs", "sb-log")
        self.assertEqual(proc.stderr, "vmgpuctl: error: no console log yet at %s (the sandbox "
                                      "is ready)\n" % self.log)
        self.sandbox.info.pop("console_log")
        proc = self.fails(1, "logs", "sb-log")
        self.assertIn("the agent reports no console log for sandbox sb-log", proc.stderr)
        proc = self.fails(1, "logs", "nope")
        self.assertEqual(proc.stderr, "vmgpuctl: error: NOT_FOUND: sandbox nope not found\n")

    def follow(self, *extra):
        argv = [VMGPUCTL, "logs", "sb-log", "-f", "--socket", self.socket,
                "--config", self.config] + list(extra)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def test_follow_prints_appended_output_until_the_sandbox_exits(self):
        self.write_log("boot 1\n", "w")
        proc = self.follow()
        try:
            for i in range(2, 6):
                time.sleep(0.3)
                self.write_log("boot %d\n" % i)
            time.sleep(0.3)
            # The last line lands just before the state turns: it must still be printed.
            self.write_log("reboot: Power down\n")
            self.sandbox.info["state"] = "exited"
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out, "boot 1\nboot 2\nboot 3\nboot 4\nboot 5\nreboot: Power down\n")
        # Status is polled about once a second, not in a busy loop.
        self.assertLess(len(self.agent.requests("PodSandboxStatus")), 8)

    def test_follow_waits_for_the_file_to_appear(self):
        proc = self.follow()
        try:
            time.sleep(0.5)
            self.write_log("late start\n", "w")
            time.sleep(0.5)
            self.sandbox.info["state"] = "failed"
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        self.assertEqual((proc.returncode, out), (0, "late start\n"), err)

    def test_follow_of_a_finished_sandbox_without_a_log_fails(self):
        self.sandbox.info["state"] = "failed"
        proc = self.fails(1, "logs", "sb-log", "-f")
        self.assertIn("no console log yet at %s (the sandbox is failed)" % self.log, proc.stderr)

    def test_follow_of_a_finished_sandbox_prints_and_returns(self):
        self.write_log("all done\n", "w")
        self.sandbox.info["state"] = "exited"
        start = time.monotonic()
        proc = self.ok("logs", "sb-log", "-f")
        self.assertEqual(proc.stdout, "all done\n")
        self.assertLess(time.monotonic() - start, 2)

    def test_follow_stops_when_the_sandbox_is_removed(self):
        self.write_log("x\n", "w")
        proc = self.follow()
        try:
            time.sleep(0.5)
            del self.agent.sandboxes["sb-log"]
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        self.assertEqual((proc.returncode, out), (0, "x\n"), err)

    def test_follow_stops_on_sigint(self):
        self.write_log("running\n", "w")
        proc = self.follow()
        try:
            self.assertEqual(proc.stdout.readline(), "running\n")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=5)
        finally:
            proc.kill()
        self.assertEqual(proc.returncode, 130, err)

    def test_follow_is_bounded_by_timeout(self):
        self.write_log("running\n", "w")
        start = time.monotonic()
        proc = self.ok("logs", "sb-log", "-f", "--timeout", "1")
        self.assertLess(time.monotonic() - start, 4)
        self.assertEqual(proc.stdout, "running\n")
        self.assertIn("stopped following after 1 s (--timeout); the sandbox is ready",
                      proc.stderr)

    def test_a_truncated_log_is_read_again_from_the_start(self):
        self.write_log("a long first line of output\n", "w")
        proc = self.follow()
        try:
            time.sleep(0.6)
            self.write_log("new\n", "w")
            time.sleep(0.6)
            self.sandbox.info["state"] = "exited"
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        self.assertEqual(out, "a long first line of output\nnew\n", err)

    def test_usage(self):
        self.fails(2, "logs")
        self.fails(2, "logs", "a", "b")
        self.fails(2, "logs", "sb-log", "-o", "json")


class VersionTest(CliTestCase):
    def test_client_and_runtime(self):
        view = parse_describe(self.ok("version").stdout)
        self.assertEqual(view, {"Client Version": "0.1.0", "Runtime Name": "vmgpu",
                                "Runtime Version": "0.1.0", "Runtime API Version": "v1"})
        self.assertEqual(self.agent.requests("Version")[0].version, "0.1.0")

    def test_json(self):
        obj = json.loads(self.ok("version", "-o", "json").stdout)
        self.assertEqual(obj, {"client_version": "0.1.0",
                               "runtime": {"version": "0.1.0", "runtime_name": "vmgpu",
                                           "runtime_version": "0.1.0",
                                           "runtime_api_version": "v1"}})

    def test_unreachable_agent_still_prints_the_client(self):
        missing = os.path.join(self.tmp.name, "missing.sock")
        proc = self.fails(1, "version", "--socket", missing, socket_flag=False)
        self.assertEqual(parse_describe(proc.stdout), {"Client Version": "0.1.0"})
        self.assertIn("cannot reach the vmgpu agent at %s" % missing, proc.stderr)

    def test_offline_flag(self):
        proc = subprocess.run([VMGPUCTL, "--version"], capture_output=True, text=True)
        self.assertEqual(proc.stdout, "vmgpuctl version 0.1.0\n")


class ReachabilityTest(CliTestCase):
    def test_missing_socket(self):
        missing = os.path.join(self.tmp.name, "missing.sock")
        proc = self.fails(1, "get", "gpus", "--socket", missing, socket_flag=False)
        self.assertEqual(proc.stderr,
                         "vmgpuctl: error: cannot reach the vmgpu agent at %s: No such file or "
                         "directory; is vmgpu-agent running? (--socket PATH)\n" % missing)
        self.assertEqual(proc.stdout, "")

    def test_socket_nobody_listens_on(self):
        path = os.path.join(self.tmp.name, "stale.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)  # bound, never listening: what a dead agent leaves behind
        try:
            proc = self.fails(1, "get", "sandboxes", "--socket", path, socket_flag=False)
        finally:
            stale.close()
        self.assertIn("cannot reach the vmgpu agent at %s: Connection refused; is "
                      "vmgpu-agent running?" % path, proc.stderr)

    def test_a_socket_that_is_not_grpc(self):
        path = os.path.join(self.tmp.name, "other.sock")
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(path)
        other.listen(8)
        stop = threading.Event()

        def hang_up():
            other.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = other.accept()
                    conn.close()
                except OSError:
                    pass
        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        try:
            proc = self.fails(1, "get", "gpus", "--socket", path, "--timeout", "5",
                              socket_flag=False)
        finally:
            stop.set()
            thread.join()
            other.close()
        self.assertIn("cannot reach the vmgpu agent at %s: UNAVAILABLE" % path, proc.stderr)

    def test_socket_comes_from_the_config(self):
        proc = self.ok("get", "gpus", socket_flag=False)
        self.assertIn("0000:43:00.0", proc.stdout)

    def test_socket_flag_overrides_the_config(self):
        with open(self.config, "w") as f:
            f.write("socket: %s\n" % os.path.join(self.tmp.name, "elsewhere.sock"))
        self.ok("get", "gpus")
        proc = self.fails(1, "get", "gpus", socket_flag=False)
        self.assertIn("elsewhere.sock: No such file or directory", proc.stderr)

    def test_unimplemented_method(self):
        self.agent.fail["ListDevices"] = (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        proc = self.fails(1, "get", "gpus")
        self.assertEqual(proc.stderr, "vmgpuctl: error: UNIMPLEMENTED: Method not found!\n")


class ProgramTest(CliTestCase):
    def test_usage_lists_every_verb(self):
        proc = subprocess.run([VMGPUCTL, "--help"], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0)
        for verb in ("get", "describe", "run", "stop", "rm", "logs", "version", "doctor"):
            self.assertRegex(proc.stdout, r"\n  %s +\S" % verb)
        proc = subprocess.run([VMGPUCTL], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2)
        proc = subprocess.run([VMGPUCTL, "frobnicate"], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("unknown command 'frobnicate'", proc.stderr)

    def test_every_verb_has_help(self):
        for verb in ("get", "describe", "run", "stop", "rm", "logs", "version", "doctor"):
            with self.subTest(verb=verb):
                proc = subprocess.run([VMGPUCTL, verb, "--help"], capture_output=True,
                                      text=True)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertTrue(proc.stdout.startswith("Usage: vmgpuctl %s" % verb),
                                proc.stdout)

    def test_kubectl_plugin(self):
        self.assertEqual(os.readlink(KUBECTL_VMGPU), "vmgpuctl")
        proc = self.ok("get", "gpus", binary=KUBECTL_VMGPU)
        _, rows = parse_table(proc.stdout)
        self.assertEqual(len(rows), 3)
        usage = subprocess.run([KUBECTL_VMGPU], capture_output=True, text=True)
        self.assertEqual(usage.returncode, 2)
        self.assertIn("Usage: kubectl vmgpu COMMAND", usage.stderr)
        proc = self.fails(1, "get", "gpus", "--socket", "/nonexistent/vmgpu.sock",
                          binary=KUBECTL_VMGPU, socket_flag=False)
        self.assertTrue(proc.stderr.startswith("kubectl vmgpu: error: cannot reach"),
                        proc.stderr)
        run_help = subprocess.run([KUBECTL_VMGPU, "run", "--help"], capture_output=True,
                                  text=True)
        self.assertIn("id=$(kubectl vmgpu run NAME)", run_help.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
