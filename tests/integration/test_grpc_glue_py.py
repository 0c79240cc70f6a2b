#!/usr/bin/python3
"""Python grpcio against the C glue (tests/unit/grpc_echo_server.c), with raw bytes.

Proves that a real grpc implementation other than grpc core's own C client interoperates with
the glue: unary, errors with details, server streams, unknown methods, large messages, and a
clean exit on SIGTERM.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
SERVER = os.environ.get(
    "VMGPU_GRPC_ECHO_SERVER",
    os.path.join(os.environ.get("VMGPU_BIN_DIR", os.path.join(SOURCE, "build")),
                 "tests", "unit", "grpc_echo_server"))
SVC = "/vmgpu.test.Echo/"
MIB = 1024 * 1024


class GrpcGlueInterop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="vg-grpc-py-")
        cls.socket = os.path.join(cls.dir, "echo.sock")
        cls.proc = subprocess.Popen([SERVER, cls.socket], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        line = cls.proc.stdout.readline()
        if line.strip() != "READY":
            cls.proc.kill()
            raise RuntimeError("server did not start: %r %s" % (line, cls.proc.stderr.read()))
        # The C side accepts 16 MiB; let this client accept as much for the large echo.
        cls.channel = grpc.insecure_channel(
            "unix:" + cls.socket,
            options=[("grpc.max_receive_message_length", 16 * MIB)])

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def unary(self, method):
        return self.channel.unary_unary(SVC + method, request_serializer=None,
                                        response_deserializer=None)

    def test_unary_echo_is_byte_exact(self):
        for payload in (b"", b"ping", bytes(range(256)) * 4):
            self.assertEqual(self.unary("Unary")(payload, timeout=10), payload)

    def test_large_message_beyond_grpc_default_limit(self):
        payload = os.urandom(5 * MIB + 3)
        self.assertEqual(self.unary("Unary")(payload, timeout=30), payload)

    def test_not_found_with_details(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.unary("Fail")(b"gpu7", timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(ctx.exception.details(), "no gpu named gpu7")

    def test_unknown_method_is_unimplemented_without_waiting(self):
        start = time.monotonic()
        for method in (SVC + "Nope", "/other.Service/Thing"):
            call = self.channel.unary_unary(method, request_serializer=None,
                                            response_deserializer=None)
            with self.assertRaises(grpc.RpcError) as ctx:
                call(b"x", timeout=20)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertLess(time.monotonic() - start, 10)

    def test_server_stream(self):
        stream = self.channel.unary_stream(SVC + "Stream", request_serializer=None,
                                           response_deserializer=None)
        call = stream(b"abc", timeout=10)
        self.assertEqual(list(call), [b"abc-1", b"abc-2", b"abc-3"])
        self.assertEqual(call.code(), grpc.StatusCode.OK)

    def test_stream_cancelled_by_client(self):
        stream = self.channel.unary_stream(SVC + "Stream", request_serializer=None,
                                           response_deserializer=None)
        call = stream(b"c", timeout=10)
        self.assertEqual(next(call), b"c-1")
        call.cancel()
        self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
        # The server keeps serving after a client walked away.
        self.assertEqual(self.unary("Unary")(b"after", timeout=10), b"after")

    def test_zz_sigterm_shuts_down_cleanly(self):
        """Runs last (name order): the server exits 0 and removes its socket and lock."""
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.proc.stderr.read())
        self.assertFalse(os.path.exists(self.socket))
        self.assertFalse(os.path.exists(self.socket + ".lock"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
