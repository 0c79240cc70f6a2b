"""A local HTTPS stand-in for kube-apiserver, for the libcurl client's tests.

It serves the few REST calls vmgpu makes (nodes GET/PATCH with merge-patch, core/v1 Events,
resource.k8s.io/v1 ResourceSlices) over TLS with a CA that openssl makes at test time, records
every request exactly as it arrived, and can be told to misbehave (stall, 500, bad JSON, 401).
Rules it enforces because the real server does: bearer tokens, the merge-patch content type,
Status objects for errors, resourceVersion conflicts (409), the legacy Event namespace rule, and
a plain-text 404 for an API group it does not serve."""
import copy
import json
import os
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_ca(directory, name):
    """A self-signed CA: <name>.key and <name>.crt."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", cwd=directory)
    return os.path.join(directory, f"{name}.crt")


def make_cert(directory, ca, name, cn, san=None):
    """A certificate signed by ca, for a server (san) or a client (cn only)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=directory)
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext,
            cwd=directory)
    return os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")


class Pki:
    """The cluster CA with a server certificate for localhost, 127.0.0.1 and ::1, a client
    certificate, and a second CA that signed nothing the server uses (the wrong CA)."""

    def __init__(self, directory):
        self.dir = directory
        self.ca = make_ca(directory, "cluster-ca")
        self.server_cert, self.server_key = make_cert(
            directory, "cluster-ca", "server", "kube-apiserver",
            "DNS:localhost,IP:127.0.0.1,IP:::1")
        self.client_cert, self.client_key = make_cert(directory, "cluster-ca", "client",
                                                      "system:node:test")
        self.wrong_ca = make_ca(directory, "other-ca")


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKube:
    def __init__(self, pki, tokens=("token-1",), serve_dra=True, family=socket.AF_INET, port=0):
        self.pki = pki
        self.tokens = set(tokens)
        self.serve_dra = serve_dra
        self.lock = threading.Lock()
        self.requests = []
        # One per request, first in first used: ("sleep", seconds), ("status", code[, message]),
        # ("raw", code, bytes).
        self.faults = []
        self.nodes = {}
        self.events = []
        self.slices = {}
        self.resource_version = 100
        self.client_subjects = []
        self.connections = set()
        kube = self

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with kube.lock:
                    kube.connections.add(self.connection)

            def finish(self):
                super().finish()
                with kube.lock:
                    kube.connections.discard(self.connection)

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                cert = self.connection.getpeercert()
                with kube.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    kube.requests.append({"method": self.command, "path": self.path,
                                          "headers": headers, "body": body,
                                          "time": time.monotonic()})
                    if cert:
                        kube.client_subjects.append(dict(x[0] for x in cert["subject"]))
                    fault = kube.faults.pop(0) if kube.faults else None
                if fault and fault[0] == "sleep":
                    time.sleep(fault[1])
                if fault and fault[0] == "raw":
                    return self.reply_raw(fault[1], fault[2])
                if fault and fault[0] == "status":
                    return self.reply(fault[1], status(fault[1], "InternalError",
                                                       fault[2] if len(fault) > 2 else "boom"))
                auth = self.headers.get("Authorization", "")
                if not (auth.startswith("Bearer ") and auth[7:] in kube.tokens) and not cert:
                    return self.reply(401, status(401, "Unauthorized", "Unauthorized"))
                code, obj = kube.route(self.command, self.path, self.headers, body)
                if obj is None:
                    return self.reply_raw(code, b"404 page not found\n", "text/plain")
                self.reply(code, obj)

            def reply(self, code, obj):
                self.reply_raw(code, json.dumps(obj).encode(), "application/json")

            def reply_raw(self, code, data, content_type="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.httpd = Server((host, port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # client certificates count as credentials
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.url = f"https://[{host}]:{self.port}" if ":" in host else f"https://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Gone for good: the listener and every kept-alive connection, as when the API
        server's host goes down."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=10)

    def add_node(self, name, labels=None):
        self.nodes[name] = {"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "uid": f"uid-{name}",
                                         "labels": dict(labels or {}),
                                         "resourceVersion": self.next_version()}}

    def next_version(self):
        self.resource_version += 1
        return str(self.resource_version)

    def taken(self, method=None, prefix=""):
        with self.lock:
            return [r for r in self.requests
                    if (method is None or r["method"] == method) and r["path"].startswith(prefix)]

    def route(self, method, path, headers, body):
        with self.lock:
            parts = path.split("?")[0].strip("/").split("/")
            try:
                data = json.loads(body) if body else None
            except ValueError:
                return 400, status(400, "BadRequest", "body is not JSON")
            if parts[:3] == ["api", "v1", "nodes"] and len(parts) == 4:
                return self.node(method, parts[3], headers, data)
            if parts[:3] == ["api", "v1", "namespaces"] and parts[4:] == ["events"]:
                return self.event(method, parts[3], data)
            if parts[:3] == ["apis", "resource.k8s.io", "v1"]:
                if not self.serve_dra:
                    return 404, None
                if len(parts) >= 4 and parts[3] == "resourceslices":
                    return self.slice(method, parts[4] if len(parts) > 4 else None, data)
            return 404, None

    def node(self, method, name, headers, data):
        node = self.nodes.get(name)
        if node is None:
            return 404, status(404, "NotFound", f'nodes "{name}" not found')
        if method == "GET":
            return 200, node
        if method == "PATCH":
            if headers.get("Content-Type") != "application/merge-patch+json":
                return 415, status(415, "UnsupportedMediaType",
                                   f"the body of the request was in an unknown format")
            patched = merge_patch(node, data)
            patched["metadata"]["resourceVersion"] = self.next_version()
            self.nodes[name] = patched
            return 200, patched
        return 405, status(405, "MethodNotAllowed", "method not allowed")

    def event(self, method, namespace, data):
        if method != "POST":
            return 405, status(405, "MethodNotAllowed", "method not allowed")
        meta = data.get("metadata", {})
        involved = data.get("involvedObject", {})
        # kube-apiserver's legacy rule for events without eventTime.
        if meta.get("namespace", namespace) != namespace:
            return 400, status(400, "BadRequest", "the namespace of the object does not match")
        inv_ns = involved.get("namespace", "")
        if (inv_ns == "" and namespace not in ("", "default")) or (inv_ns and inv_ns != namespace):
            return 422, status(422, "Invalid",
                               "involvedObject.namespace: does not match event.namespace")
        for field in ("reason", "message", "type"):
            if not data.get(field):
                return 422, status(422, "Invalid", f"{field}: Required value")
        stored = copy.deepcopy(data)
        stored["metadata"]["resourceVersion"] = self.next_version()
        self.events.append(stored)
        return 201, stored

    def slice(self, method, name, data):
        if method == "POST" and name is None:
            name = data["metadata"]["name"]
            if name in self.slices:
                return 409, status(409, "AlreadyExists", f'resourceslices "{name}" already exists')
            if len(data["spec"]["devices"]) > 128:
                return 422, status(422, "Invalid", "spec.devices: Too many")
            stored = copy.deepcopy(data)
            stored["metadata"]["resourceVersion"] = self.next_version()
            stored["metadata"]["uid"] = f"uid-slice-{name}"
            self.slices[name] = stored
            return 201, stored
        current = self.slices.get(name)
        missing = status(404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found')
        if method == "GET" and name is not None:
            if current is None:
                return 404, missing
            return 200, current
        if method == "PUT" and name is not None:
            if current is None:
                return 404, missing
            if data["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, status(409, "Conflict", "the object has been modified")
            stored = copy.deepcopy(data)
            stored["metadata"]["resourceVersion"] = self.next_version()
            stored["metadata"]["uid"] = current["metadata"]["uid"]
            self.slices[name] = stored
            return 200, stored
        if method == "DELETE" and current is not None:
            del self.slices[name]
            return 200, status(200, "", "deleted")
        return 405, status(405, "MethodNotAllowed", "method not allowed")


def ipv6_loopback_works():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
