"""Python modules and gRPC helpers for vmgpu's four APIs, generated from api/**/*.proto on demand.

Importing this module (with /usr/bin/python3: it needs Debian's grpcio and protobuf) makes sure
the generated modules exist and are current, puts them on sys.path and exposes them:

    cri, cri_grpc                    api/runtime/v1/api.proto            package runtime.v1
    inventory, inventory_grpc        api/vmgpu/v1/inventory.proto        package vmgpu.v1
    deviceplugin, deviceplugin_grpc  api/deviceplugin/v1beta1/api.proto  package v1beta1
    podresources, podresources_grpc  api/podresources/v1/api.proto       package v1

Layout: tests/integration/gen_python_protos.sh writes into
<build>/pyproto/<hash of the inputs>/, a tree that mirrors api/ (runtime/v1/api_pb2.py and
api_pb2_grpc.py, vmgpu/v1/inventory_pb2.py, deviceplugin/v1beta1/api_pb2.py,
podresources/v1/api_pb2.py, each directory with an __init__.py). That directory goes first on
sys.path, so the Python import path is the directory path: `runtime.v1.api_pb2`,
`podresources.v1.api_pb2`. Two protos use a package called v1 (runtime.v1 and podresources'
plain `v1`), but their Python packages follow the directories and do not clash; neither do their
descriptors (the proto full names differ: runtime.v1.X and v1.X). <build> is $VMGPU_BIN_DIR
(ctest sets it) or <source>/build; $VMGPU_PROTO_CACHE overrides the whole cache directory. The
hash covers the .proto files, the strip script and the generator, so an edited proto is picked
up on the next import; other hashes' directories are removed.

Field names follow the .proto files: CRI's `linux` stays `linux` here (only the C code calls it
`linux_`), the device plugin keeps kubelet's `ID`, `deviceIDs`, `available_deviceIDs`.

Channels and stubs (target: a socket path or an existing grpc.Channel):

    ch = vgproto.channel("/run/vmgpu/agent.sock")          # grpc.insecure_channel("unix:" + path)
    vgproto.wait_ready(ch, 5)
    vgproto.runtime_stub(ch).Version(vgproto.cri.VersionRequest(version="0.1.0"))
    vgproto.inventory_stub(path), vgproto.deviceplugin_stub(path),
    vgproto.registration_stub(path), vgproto.podresources_stub(path)

Fake peers (a fake kubelet, say): vgproto.unix_server(path, (vgproto.deviceplugin_grpc
.add_RegistrationServicer_to_server, servicer), ...) returns a started grpc.Server.
"""
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
API_DIR = os.path.join(SOURCE, "api")
GENERATOR = os.path.join(HERE, "gen_python_protos.sh")
PROTOS = (
    "runtime/v1/api.proto",
    "vmgpu/v1/inventory.proto",
    "deviceplugin/v1beta1/api.proto",
    "podresources/v1/api.proto",
)
_INPUTS = tuple(os.path.join(API_DIR, p) for p in PROTOS) + (
    os.path.join(API_DIR, "strip-services.awk"), GENERATOR)
_COMPLETE = ".complete"


def cache_root():
    if os.environ.get("VMGPU_PROTO_CACHE"):
        return os.environ["VMGPU_PROTO_CACHE"]
    build = os.environ.get("VMGPU_BIN_DIR") or os.path.join(SOURCE, "build")
    return os.path.join(build, "pyproto")


def inputs_hash():
    h = hashlib.sha256()
    for path in _INPUTS:
        with open(path, "rb") as f:
            data = f.read()
        h.update(os.path.relpath(path, SOURCE).encode() + b"\0")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def generate(root=None):
    """Returns the directory holding current generated modules, generating it if needed.

    Safe to run from several processes at once: each generates into its own temporary directory
    and renames it into place; a loser of that race uses the winner's copy."""
    root = root or cache_root()
    digest = inputs_hash()
    final = os.path.join(root, digest)
    if os.path.exists(os.path.join(final, _COMPLETE)):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=root)
    try:
        proc = subprocess.run([GENERATOR, tmp, API_DIR], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError("gen_python_protos.sh failed (%d):\n%s%s"
                               % (proc.returncode, proc.stdout, proc.stderr))
        open(os.path.join(tmp, _COMPLETE), "w").close()
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.exists(os.path.join(final, _COMPLETE)):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    for name in os.listdir(root):
        if name != digest and not name.startswith(".gen-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return final


GENERATED_DIR = generate()
if GENERATED_DIR not in sys.path:
    sys.path.insert(0, GENERATED_DIR)

cri = importlib.import_module("runtime.v1.api_pb2")
cri_grpc = importlib.import_module("runtime.v1.api_pb2_grpc")
inventory = importlib.import_module("vmgpu.v1.inventory_pb2")
inventory_grpc = importlib.import_module("vmgpu.v1.inventory_pb2_grpc")
deviceplugin = importlib.import_module("deviceplugin.v1beta1.api_pb2")
deviceplugin_grpc = importlib.import_module("deviceplugin.v1beta1.api_pb2_grpc")
podresources = importlib.import_module("podresources.v1.api_pb2")
podresources_grpc = importlib.import_module("podresources.v1.api_pb2_grpc")

PB2_MODULES = (cri, inventory, deviceplugin, podresources)


def method_paths():
    """Every method path of the four APIs, from the descriptors: {path: (service, method,
    server_streaming)}. api/method_paths.h must list the same strings."""
    paths = {}
    for mod in PB2_MODULES:
        for service in mod.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                paths["/%s/%s" % (service.full_name, m.name)] = (
                    service.full_name, m.name, bool(getattr(m, "server_streaming", False)))
    return paths


def channel(socket_path, options=None):
    """An insecure channel to a unix socket (absolute path)."""
    return grpc.insecure_channel("unix:" + socket_path, options=options)


def wait_ready(ch, timeout=5.0):
    """Blocks until the channel connects; raises grpc.FutureTimeoutError after timeout."""
    grpc.channel_ready_future(ch).result(timeout=timeout)
    return ch


def _as_channel(target):
    return channel(target) if isinstance(target, (str, os.PathLike)) else target


def runtime_stub(target):
    return cri_grpc.RuntimeServiceStub(_as_channel(target))


def inventory_stub(target):
    return inventory_grpc.InventoryStub(_as_channel(target))


def deviceplugin_stub(target):
    return deviceplugin_grpc.DevicePluginStub(_as_channel(target))


def registration_stub(target):
    return deviceplugin_grpc.RegistrationStub(_as_channel(target))


def podresources_stub(target):
    return podresources_grpc.PodResourcesListerStub(_as_channel(target))


def unix_server(socket_path, *services, max_workers=4):
    """A started grpc.Server on a unix socket. Each service is (add_XServicer_to_server,
    servicer). Stop it with server.stop(grace)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    for add, servicer in services:
        add(servicer, server)
    if server.add_insecure_port("unix:" + socket_path) == 0:
        raise RuntimeError("cannot listen on unix:" + socket_path)
    server.start()
    return server
