"""Helpers for the console / stats / influx tests: run a daemon as a child
process in a temporary tmpdir and talk to it with a small blocking client."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time

from albatross.policy.names import Name
from albatross.wire import messages as m
from albatross.wire import END, FrameReader, Header, Wire, decode_wire, encode_wire, frame

BIN = os.path.dirname(sys.executable)


def make_tmpdir(base) -> str:
    for sub in ("util", "fifo"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    return str(base)


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """A daemon subprocess (console-script name and arguments)."""

    def __init__(self, program: str, args: list[str], sock: str | None = None, log_path: str | None = None):
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([os.path.join(BIN, program), *args], stdout=out, stderr=subprocess.STDOUT)
        if log_path:
            out.close()
        if sock is not None:
            wait_for(lambda: self._connectable(sock), what=f"{program} listening on {sock}")

    def _connectable(self, path: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log()}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """A blocking albatross connection."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = FrameReader()

    def send(self, name: Name | str, payload, sequence: int = 0, version: int = 5) -> None:
        if isinstance(name, str):
            name = Name.of_string(name)
        self.sock.sendall(frame(encode_wire(Wire(Header(name, sequence, version), payload))))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Wire | None:
        """The next message; None when the peer closed the connection."""
        while True:
            f = self.reader.next_frame()
            if f is END:
                return None
            if f is not None:
                return decode_wire(f)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.reader.feed(data)

    def closed_by_peer(self) -> bool:
        return self.recv() is None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(path: str, name, payload, sequence: int = 0) -> Wire | None:
    with Client(path) as c:
        c.send(name, payload, sequence)
        return c.recv()


class FakeVmmd:
    """vmmd.sock: answers Stats_initial and hands each stats channel to the test."""

    def __init__(self, path: str):
        self.path = path
        self.channels: queue.Queue[Client] = queue.Queue()
        self.initials: list = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            c = Client.__new__(Client)
            c.sock, c.reader = s, FrameReader()
            s.settimeout(5)
            w = c.recv()
            self.initials.append(w)
            c.send(w.header.name, m.Empty(), w.header.sequence, w.header.version)
            self.channels.put(c)

    def channel(self, timeout: float = 5) -> Client:
        return self.channels.get(timeout=timeout)

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
