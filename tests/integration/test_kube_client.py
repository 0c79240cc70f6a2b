#!/usr/bin/python3
"""lib/kube's libcurl client against a local HTTPS server (kubeserver.FakeKube) with a CA that
openssl makes for the test: the exact requests (method, path, headers, merge-patch body), the
in-cluster config (IPv6 in brackets), kubeconfig credentials, the token read again after a
401, and the error paths: timeout, 500, bad JSON, TLS with the wrong CA, refused connection."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kubeserver  # noqa: E402

TOOL = os.environ.get("VMGPU_KUBE_REQUEST") or os.path.join(
    os.environ.get("VMGPU_BIN_DIR", "build"), "tests", "test_kube_request")
ASAN = "verify_asan_link_order=0:detect_leaks=1"


class Client:
    """test_kube_request: one client for its whole life, one JSON line per request."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([TOOL, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(env, ASAN_OPTIONS=ASAN))
        self.first = json.loads(self.proc.stdout.readline() or "{}")

    def request(self, method, path, body=None, content_type=None):
        line = {"method": method, "path": path}
        if body is not None:
            line["body"] = body if isinstance(body, str) else json.dumps(body)
        if content_type:
            line["content_type"] = content_type
        return self.send(line)

    def send(self, line):
        self.proc.stdin.write(json.dumps(line) + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise AssertionError("test_kube_request died: " + self.proc.stderr.read())
        return json.loads(out)

    def close(self):
        self.proc.stdin.close()
        code = self.proc.wait(timeout=20)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if code != 0:
            raise AssertionError(f"test_kube_request exit {code}: {err}")

    def kill(self):
        """Test cleanup: the process by pid, then its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not stream.closed:
                stream.close()


def in_cluster_env(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBERNETES_SERVICE_HOST=server.host, KUBERNETES_SERVICE_PORT=str(server.port))
    return env


class KubeClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="vmgpu-kube-client-")
        cls.pki = kubeserver.Pki(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.server = kubeserver.FakeKube(self.pki)
        self.server.add_node("node-a", {"vmgpu.io/gpu.product": "A100-SXM4-40GB",
                                        "vmgpu.io/custom": "keep", "kubernetes.io/os": "linux"})
        self.sa = tempfile.mkdtemp(dir=self.tmp)
        self.write_token("token-1")
        shutil.copy(self.pki.ca, os.path.join(self.sa, "ca.crt"))
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            client.kill()
        self.server.stop()

    def write_token(self, token):
        # Written the way the kubelet does: a new file renamed over the old one.
        tmp = os.path.join(self.sa, ".token.tmp")
        with open(tmp, "w") as f:
            f.write(token + "\n")
        os.rename(tmp, os.path.join(self.sa, "token"))

    def in_cluster(self, *extra, server=None):
        client = Client(["--in-cluster", self.sa, *extra], in_cluster_env(server or self.server))
        self.clients.append(client)
        return client

    def kubeconfig(self, cluster, user, *extra):
        path = os.path.join(tempfile.mkdtemp(dir=self.tmp), "kubeconfig")
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "dev",
                  "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
                  "clusters": [{"name": "c", "cluster": dict(server=self.server.url, **cluster)}],
                  "users": [{"name": "u", "user": user}]}
        with open(path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        client = Client(["--kubeconfig", path, *extra], dict(os.environ))
        self.clients.append(client)
        return client, os.path.dirname(path)

    def test_label_patch_is_an_exact_merge_patch(self):
        client = self.in_cluster()
        self.assertEqual(client.first["server"], f"https://127.0.0.1:{self.server.port}")
        desired = {"vmgpu.io/gpu.count": "2", "vmgpu.io/gpu.present": "true",
                   "vmgpu.io/passthrough-ready": "false"}
        out = client.send({"op": "apply-labels", "node": "node-a", "labels": desired})
        self.assertTrue(out["ok"], out)
        self.assertEqual(out["body"], {"uid": "uid-node-a", "patched": True})
        get, patch = self.server.taken()
        self.assertEqual((get["method"], get["path"]), ("GET", "/api/v1/nodes/node-a"))
        self.assertEqual((patch["method"], patch["path"]), ("PATCH", "/api/v1/nodes/node-a"))
        for request in (get, patch):
            headers = request["headers"]
            self.assertEqual(headers["authorization"], "Bearer token-1")
            self.assertEqual(headers["accept"], "application/json")
            self.assertEqual(headers["user-agent"], "vmgpu-test/1")
            self.assertNotIn("expect", headers)
        self.assertNotIn("content-type", get["headers"])
        self.assertEqual(get["body"], b"")
        self.assertEqual(patch["headers"]["content-type"], "application/merge-patch+json")
        # Only what differs; the stale label we own is deleted with null; others untouched.
        self.assertEqual(json.loads(patch["body"]), {"metadata": {"labels": {
            "vmgpu.io/gpu.count": "2", "vmgpu.io/gpu.present": "true",
            "vmgpu.io/passthrough-ready": "false", "vmgpu.io/gpu.product": None}}})
        self.assertEqual(self.server.nodes["node-a"]["metadata"]["labels"], {
            "vmgpu.io/custom": "keep", "kubernetes.io/os": "linux", **desired})
        # Already true: a GET and no PATCH.
        out = client.send({"op": "apply-labels", "node": "node-a", "labels": desired})
        self.assertEqual(out["body"]["patched"], False)
        self.assertEqual([r["method"] for r in self.server.taken()], ["GET", "PATCH", "GET"])
        # A raw request carries its content type and body byte for byte.
        body = '{"metadata":{"labels":{"vmgpu.io/gpu.count":null}}}'
        out = client.request("PATCH", "/api/v1/nodes/node-a", body, "application/merge-patch+json")
        self.assertTrue(out["ok"], out)
        self.assertEqual(self.server.taken("PATCH")[-1]["body"], body.encode())
        out = client.send({"op": "apply-labels", "node": "node-b", "labels": desired})
        self.assertEqual(out["errno"], "ENOENT")
        self.assertIn("node 'node-b' is unknown to the API server", out["message"])
        client.close()

    def test_token_is_read_again_after_a_401(self):
        client = self.in_cluster()
        self.assertTrue(client.request("GET", "/api/v1/nodes/node-a")["ok"])
        # The kubelet rotates the projected token; the server stops taking the old one.
        self.server.tokens = {"token-2"}
        self.write_token("token-2")
        before = len(self.server.taken())
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertTrue(out["ok"], out)
        retried = self.server.taken()[before:]
        self.assertEqual([r["headers"]["authorization"] for r in retried],
                         ["Bearer token-1", "Bearer token-2"])
        # A 401 with a token that did not change is not retried: it is an error.
        self.server.tokens = {"token-3"}
        before = len(self.server.taken())
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertEqual((out["ok"], out["status"], out["errno"]), (False, 401, "EACCES"))
        self.assertIn("HTTP 401: Unauthorized", out["message"])
        self.assertEqual(len(self.server.taken()) - before, 1)
        client.close()

    def test_ipv6_service_host_goes_in_brackets(self):
        if not kubeserver.ipv6_loopback_works():
            self.skipTest("no IPv6 loopback (::1) on this machine")
        server6 = kubeserver.FakeKube(self.pki, family=socket.AF_INET6)
        try:
            server6.add_node("node-a")
            client = self.in_cluster(server=server6)
            self.assertEqual(client.first["server"], f"https://[::1]:{server6.port}")
            out = client.request("GET", "/api/v1/nodes/node-a")
            self.assertTrue(out["ok"], out)
            self.assertEqual(out["body"]["metadata"]["uid"], "uid-node-a")
            client.close()
        finally:
            server6.stop()

    def test_timeout(self):
        client = self.in_cluster("--timeout-ms", "700")
        self.server.faults = [("sleep", 4)]
        started = time.monotonic()
        out = client.request("GET", "/api/v1/nodes/node-a")
        elapsed = time.monotonic() - started
        self.assertEqual((out["ok"], out["errno"], out["status"]), (False, "ETIMEDOUT", 0))
        self.assertIn("timed out", out["message"])
        self.assertLess(elapsed, 3)
        # The same client works once the server answers again.
        self.assertTrue(client.request("GET", "/api/v1/nodes/node-a")["ok"])
        client.close()

    def test_500_bad_json_and_missing_objects(self):
        client = self.in_cluster()
        self.server.faults = [("status", 500, "etcdserver: request timed out")]
        out = client.request("PATCH", "/api/v1/nodes/node-a", "{}", "application/merge-patch+json")
        self.assertEqual((out["ok"], out["status"], out["errno"]), (False, 500, "EIO"))
        self.assertIn("PATCH /api/v1/nodes/node-a: HTTP 500: etcdserver: request timed out",
                      out["message"])
        self.server.faults = [("raw", 200, b'{"kind": "Node", "metadata": ')]
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertEqual((out["ok"], out["errno"]), (False, "EBADMSG"))
        self.assertIn("not a JSON object", out["message"])
        self.server.faults = [("raw", 200, b'"just a string"')]
        self.assertEqual(client.request("GET", "/api/v1/nodes/node-a")["errno"], "EBADMSG")
        # A 502 page from a proxy is text: the message quotes it.
        self.server.faults = [("raw", 502, b"<html>Bad Gateway</html>")]
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertEqual((out["status"], out["errno"]), (502, "EIO"))
        self.assertIn("<html>Bad Gateway", out["message"])
        out = client.request("GET", "/api/v1/nodes/nope")
        self.assertEqual((out["status"], out["errno"]), (404, "ENOENT"))
        self.assertIn('nodes "nope" not found', out["message"])
        client.close()

    def test_tls_failures(self):
        # The wrong CA in the service account directory.
        shutil.copy(self.pki.wrong_ca, os.path.join(self.sa, "ca.crt"))
        client = self.in_cluster()
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertEqual((out["ok"], out["errno"], out["status"]), (False, "EPROTO", 0))
        self.assertIn("TLS failed", out["message"])
        self.assertEqual(self.server.taken(), [])  # the token never left the client
        client.close()
        # Nothing listens: refused, not a hang.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free_port = s.getsockname()[1]
        env = in_cluster_env(self.server)
        env["KUBERNETES_SERVICE_PORT"] = str(free_port)
        client = Client(["--in-cluster", self.sa], env)
        self.clients.append(client)
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertEqual(out["errno"], "ECONNREFUSED")
        client.close()

    def test_in_cluster_needs_its_environment_and_files(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        client = Client(["--in-cluster", self.sa], env)
        self.clients.append(client)
        self.assertIn("KUBERNETES_SERVICE_HOST", client.first["message"])
        os.unlink(os.path.join(self.sa, "token"))
        client = Client(["--in-cluster", self.sa], in_cluster_env(self.server))
        self.clients.append(client)
        self.assertIn("bearer token", client.first["message"])

    def test_kubeconfig_with_inline_ca_and_client_certificate(self):
        def b64(path):
            with open(path, "rb") as f:
                return base64.b64encode(f.read()).decode()
        client, _ = self.kubeconfig(
            {"certificate-authority-data": b64(self.pki.ca)},
            {"client-certificate-data": b64(self.pki.client_cert),
             "client-key-data": b64(self.pki.client_key)})
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertTrue(out["ok"], out)
        request = self.server.taken()[-1]
        self.assertNotIn("authorization", request["headers"])
        self.assertEqual(self.server.client_subjects[-1]["commonName"], "system:node:test")
        client.close()

    def test_kubeconfig_relative_files_and_insecure(self):
        directory = tempfile.mkdtemp(dir=self.tmp)
        shutil.copy(self.pki.ca, os.path.join(directory, "ca.crt"))
        with open(os.path.join(directory, "tok"), "w") as f:
            f.write("token-1\n")
        path = os.path.join(directory, "kubeconfig")
        with open(path, "w") as f:
            f.write("current-context: dev\n"
                    "contexts:\n- name: dev\n  context: {cluster: c, user: u}\n"
                    f"clusters:\n- name: c\n  cluster:\n    server: {self.server.url}/\n"
                    "    certificate-authority: ca.crt\n"
                    "users:\n- name: u\n  user:\n    tokenFile: tok\n")
        client = Client(["--kubeconfig", path], dict(os.environ))
        self.clients.append(client)
        out = client.request("GET", "/api/v1/nodes/node-a")
        self.assertTrue(out["ok"], out)
        self.assertEqual(self.server.taken()[-1]["path"], "/api/v1/nodes/node-a")
        client.close()
        client, _ = self.kubeconfig({"insecure-skip-tls-verify": True}, {"token": "token-1"})
        self.assertTrue(client.request("GET", "/api/v1/nodes/node-a")["ok"])
        client.close()
        client, _ = self.kubeconfig({}, {"token": "token-1"})  # no CA: the system's, which fails
        self.assertEqual(client.request("GET", "/api/v1/nodes/node-a")["errno"], "EPROTO")
        client.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
