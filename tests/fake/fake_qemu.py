#!/usr/bin/python3
"""A stand-in for qemu-system-* on paths real QEMU cannot take here (VFIO devices, no KVM).

It understands the parts of the shim's command line that the shim depends on: -pidfile, the
QMP socket, and the ready channel's chardev socket. It plays the guest too: once the shim
connects to the ready channel it writes the guest init's ready line, listing the PCI ids of
every vfio-pci host device (read from the sysfs root in FAKE_QEMU_SYSFS, default /sys).

Environment knobs for tests:
  FAKE_QEMU_HIDE=BDF[,BDF]   leave these devices out of the ready line (a GPU the guest lost)
  FAKE_QEMU_READY_DELAY=S    seconds before the ready line
  FAKE_QEMU_IGNORE_POWERDOWN=1  ignore system_powerdown, so the shim has to quit or kill
  FAKE_QEMU_IGNORE_QUIT=1    ignore quit as well (a wedged QEMU), so only SIGKILL ends it
  FAKE_QEMU_EXIT_AT_START=N  exit with code N right after start (a QEMU that refuses options)
"""
import json
import os
import re
import select
import socket
import sys
import time


def option_value(argv, flag):
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1]
    return None


def unescape(value):
    return value.replace(",,", ",")


def parse_chardev_path(argv, chardev_id):
    for i, arg in enumerate(argv[:-1]):
        if arg == "-chardev" and f"id={chardev_id}," in argv[i + 1] + ",":
            match = re.search(r"path=((?:[^,]|,,)*)", argv[i + 1])
            if match:
                return unescape(match.group(1))
    return None


def vfio_hosts(argv):
    hosts = []
    for i, arg in enumerate(argv[:-1]):
        if arg == "-device" and argv[i + 1].startswith("vfio-pci,"):
            match = re.search(r"host=([0-9a-fA-F:.]+)", argv[i + 1])
            if match:
                hosts.append(match.group(1).lower())
    return hosts


def pci_id(sysfs, bdf):
    base = os.path.join(sysfs, "bus/pci/devices", bdf)
    with open(os.path.join(base, "vendor")) as v, open(os.path.join(base, "device")) as d:
        return "%04x:%04x" % (int(v.read(), 16), int(d.read(), 16))


def listen_unix(path):
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    return sock


def main(argv):
    if os.environ.get("FAKE_QEMU_EXIT_AT_START"):
        print("fake-qemu: refusing to start as asked", file=sys.stderr)
        return int(os.environ["FAKE_QEMU_EXIT_AT_START"])
    pidfile = option_value(argv, "-pidfile")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    qmp_path = unescape(option_value(argv, "-qmp").split("unix:", 1)[1].split(",server")[0])
    ready_path = parse_chardev_path(argv, "ready0")
    cmdline = option_value(argv, "-append") or ""
    sandbox_id = re.search(r"vmgpu\.id=(\S+)", cmdline).group(1)
    sysfs = os.environ.get("FAKE_QEMU_SYSFS", "/sys")
    hidden = set(filter(None, os.environ.get("FAKE_QEMU_HIDE", "").split(",")))
    ids = [pci_id(sysfs, bdf) for bdf in vfio_hosts(argv) if bdf not in hidden]
    ready_line = f"VMGPU-READY id={sandbox_id} pci={','.join(['1af4:1043'] + ids)} net=none\n"
    ready_delay = float(os.environ.get("FAKE_QEMU_READY_DELAY", "0.2"))
    ignore_powerdown = os.environ.get("FAKE_QEMU_IGNORE_POWERDOWN") == "1"
    ignore_quit = os.environ.get("FAKE_QEMU_IGNORE_QUIT") == "1"

    qmp_server = listen_unix(qmp_path)
    ready_server = listen_unix(ready_path)
    clients = []
    ready_client = None
    ready_due = None
    deadline = time.monotonic() + 3600  # bounded like every loop in the tests
    while time.monotonic() < deadline:
        timeout = 1.0
        if ready_due is not None:
            timeout = max(0.0, min(timeout, ready_due - time.monotonic()))
        readable, _, _ = select.select([qmp_server, ready_server] + clients, [], [], timeout)
        if ready_due is not None and time.monotonic() >= ready_due and ready_client:
            ready_client.sendall(ready_line.encode())
            ready_due = None
        for sock in readable:
            if sock is qmp_server:
                conn, _ = qmp_server.accept()
                conn.sendall(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, '
                             b'"micro": 0}}, "capabilities": []}}\r\n')
                clients.append(conn)
            elif sock is ready_server:
                ready_client, _ = ready_server.accept()
                ready_due = time.monotonic() + ready_delay
            else:
                data = sock.recv(4096)
                if not data:
                    clients.remove(sock)
                    continue
                for line in data.decode().splitlines():
                    command = json.loads(line).get("execute")
                    sock.sendall(b'{"return": {}}\r\n')
                    if command == "quit" and not ignore_quit:
                        return 0
                    if command == "system_powerdown" and not ignore_powerdown:
                        sock.sendall(b'{"event": "POWERDOWN"}\r\n')
                        time.sleep(0.05)
                        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
