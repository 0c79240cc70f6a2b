"""A fake kubelet for the device plugin and PodResources, on python3-grpcio, written from the
field tables of the v1beta1 device plugin API and the v1 PodResources API (api/).

It behaves like the kubelet where a plugin can tell:
- start(): creates the device-plugins directory (0750), deletes every socket in it except the
  checkpoint, then serves v1beta1.Registration on kubelet.sock, and v1.PodResourcesLister on
  its pod-resources socket;
- Register dials the plugin back on <dir>/<endpoint>, calls GetDevicePluginOptions inside the
  handler (an error there fails Register) and then consumes ListAndWatch in the background;
- stop() is the kubelet dying: its servers and its client connections go, sockets stay;
- restart() is stop() then start(): the plugin's socket is deleted like the real kubelet does.

Every ListAndWatch message is kept with its arrival time (time.monotonic()).
"""
import os
import stat
import threading
import time

import grpc

import vgproto as p

CHECKPOINT = "kubelet_internal_checkpoint"


class Plugin:
    """What the fake kubelet knows of one registered resource."""

    def __init__(self, request, directory):
        self.request = request
        self.registered_at = time.monotonic()
        self.channel = p.channel(os.path.join(directory, request.endpoint))
        self.stub = p.deviceplugin_stub(self.channel)
        self.options = None
        self.lists = []  # (monotonic time, ListAndWatchResponse)
        self.stream = None
        self.stream_end = None  # (monotonic time, grpc.StatusCode) once the stream ended
        self.cond = threading.Condition()

    def watch(self):
        self.stream = self.stub.ListAndWatch(p.deviceplugin.Empty())
        threading.Thread(target=self._consume, daemon=True).start()

    def _consume(self):
        code = grpc.StatusCode.OK
        try:
            for resp in self.stream:
                with self.cond:
                    self.lists.append((time.monotonic(), resp))
                    self.cond.notify_all()
        except grpc.RpcError as e:
            code = e.code()
        with self.cond:
            self.stream_end = (time.monotonic(), code)
            self.cond.notify_all()

    def wait_list(self, predicate=lambda devices: True, timeout=10.0, after=0.0):
        """The first device list that arrived after `after` (monotonic) and satisfies
        predicate({id: (health, [numa ids])}); returns (arrival time, that dict)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, resp in self.lists:
                    if at >= after:
                        devices = {d.ID: (d.health, [n.ID for n in d.topology.nodes])
                                   for d in resp.devices}
                        if predicate(devices):
                            return at, devices
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.lists[-1][1] if self.lists else None
                    raise AssertionError("no matching ListAndWatch message in %.1f s; last: %s"
                                         % (timeout, last))
                self.cond.wait(left)

    def latest(self, settle=0.3):
        """The newest device list, after letting messages on the way arrive."""
        time.sleep(settle)
        with self.cond:
            resp = self.lists[-1][1]
        return {d.ID: (d.health, [n.ID for n in d.topology.nodes]) for d in resp.devices}

    def wait_stream_end(self, timeout=10.0):
        with self.cond:
            self.cond.wait_for(lambda: self.stream_end is not None, timeout)
            return self.stream_end

    def close(self):
        if self.stream is not None:
            self.stream.cancel()
        self.channel.close()


class _Registration:
    def __init__(self, kubelet):
        self.kubelet = kubelet

    def Register(self, request, context):
        k = self.kubelet
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.UNKNOWN,
                          "unsupported API version %s" % request.version)
        if "/" not in request.resource_name or "kubernetes.io/" in request.resource_name:
            context.abort(grpc.StatusCode.UNKNOWN,
                          "invalid extended resource name %s" % request.resource_name)
        plugin = Plugin(request, k.dir)
        try:
            # As the kubelet: a blocking dial (10 s), then the options it will really use.
            p.wait_ready(plugin.channel, 10)
            plugin.options = plugin.stub.GetDevicePluginOptions(p.deviceplugin.Empty(),
                                                                timeout=10)
        except Exception as e:  # noqa: BLE001 - any failure fails Register, as in the kubelet
            plugin.close()
            context.abort(grpc.StatusCode.UNKNOWN, "cannot dial the plugin back: %s" % e)
        with k.cond:
            old = k.plugins.get(request.resource_name)
            k.plugins[request.resource_name] = plugin  # latest wins
            k.registrations.append(plugin)
            k.cond.notify_all()
        if old is not None:
            old.close()
        plugin.watch()
        return p.deviceplugin.Empty()


class _PodResources:
    def __init__(self, kubelet):
        self.kubelet = kubelet

    def _pod(self, namespace, name):
        containers = []
        for cname, devices in self.kubelet.pods[(namespace, name)]:
            cdevs = [p.podresources.ContainerDevices(resource_name=r, device_ids=ids)
                     for r, ids in devices]
            containers.append(p.podresources.ContainerResources(name=cname, devices=cdevs))
        return p.podresources.PodResources(name=name, namespace=namespace,
                                           containers=containers)

    def List(self, request, context):
        self.kubelet.calls.append(("List", None))
        return p.podresources.ListPodResourcesResponse(
            pod_resources=[self._pod(ns, name) for ns, name in list(self.kubelet.pods)])

    def GetAllocatableResources(self, request, context):
        self.kubelet.calls.append(("GetAllocatableResources", None))
        return p.podresources.AllocatableResourcesResponse()

    def Get(self, request, context):
        k = self.kubelet
        k.calls.append(("Get", "%s/%s" % (request.pod_namespace, request.pod_name)))
        if k.get_mode == "unimplemented":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if k.get_mode == "disabled":  # what a 1.27/1.28 kubelet says with the gate off
            context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        key = (request.pod_namespace, request.pod_name)
        if key not in k.pods:
            context.abort(grpc.StatusCode.UNKNOWN, "pod %s in namespace %s not found"
                          % (request.pod_name, request.pod_namespace))
        return p.podresources.GetPodResourcesResponse(pod_resources=self._pod(*key))


class FakeKubelet:
    def __init__(self, root):
        self.dir = os.path.join(root, "device-plugins")
        self.socket = os.path.join(self.dir, "kubelet.sock")
        self.podres_dir = os.path.join(root, "pod-resources")
        self.podres_socket = os.path.join(self.podres_dir, "kubelet.sock")
        self.plugins = {}  # resource name -> Plugin (the latest registration)
        self.registrations = []  # every Plugin, in order
        self.pods = {}  # (namespace, name) -> [(container, [(resource, [ids])])]
        self.get_mode = "served"  # or "unimplemented", "disabled"
        self.calls = []  # PodResources calls in order: (method, "namespace/name" for Get)
        self.cond = threading.Condition()
        self.servers = []
        self.started_at = None

    def start(self, podresources=True):
        os.makedirs(self.dir, mode=0o750, exist_ok=True)
        os.chmod(self.dir, 0o750)
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name != CHECKPOINT and stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        with open(os.path.join(self.dir, CHECKPOINT), "w") as f:
            f.write("{}")
        self._serve_registration()
        if podresources:
            os.makedirs(self.podres_dir, mode=0o750, exist_ok=True)
            if os.path.exists(self.podres_socket):
                os.unlink(self.podres_socket)
            self.servers.append(p.unix_server(
                self.podres_socket, (p.podresources_grpc.add_PodResourcesListerServicer_to_server,
                                     _PodResources(self)), max_workers=4))
        self.started_at = time.monotonic()
        return self

    def _serve_registration(self):
        self.registration = p.unix_server(
            self.socket, (p.deviceplugin_grpc.add_RegistrationServicer_to_server,
                          _Registration(self)), max_workers=8)
        self.servers.append(self.registration)

    def replace_kubelet_socket(self):
        """A new kubelet.sock while every other socket stays."""
        self.registration.stop(0)
        self.servers.remove(self.registration)
        if os.path.lexists(self.socket):  # grpc removes it when the server stops
            os.unlink(self.socket)
        self._serve_registration()

    def stop(self):
        """The kubelet process going away: servers and connections close, files stay."""
        for server in self.servers:
            server.stop(0)
        self.servers = []
        with self.cond:
            plugins, self.plugins = list(self.plugins.values()), {}
        for plugin in plugins:
            plugin.close()

    def restart(self):
        self.stop()
        return self.start()

    def wait_registration(self, resource="nvidia.com/gpu", after=0.0, timeout=10.0):
        """The first registration for resource made after `after` (monotonic) whose plugin has
        sent a device list."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for plugin in self.registrations:
                    if plugin.request.resource_name == resource and plugin.registered_at >= after:
                        break
                else:
                    plugin = None
                if plugin is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no registration of %s within %.1f s (got: %s)" % (
                        resource, timeout,
                        [r.request.resource_name for r in self.registrations]))
                self.cond.wait(left)
        plugin.wait_list(timeout=max(0.1, deadline - time.monotonic()))
        return plugin
