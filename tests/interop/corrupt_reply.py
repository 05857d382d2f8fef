#!/usr/bin/env python3
"""Run a daemon (albatrossd) behind a proxy that corrupts one reply: shows
that the interop suite fails when one side is broken.

    ALBATROSS_INTEROP_WRAP=albatrossd=$PWD/tests/interop/corrupt_reply.py \\
        .venv/bin/python -m pytest -q tests/interop

Usage (as the suite's Host runs it): corrupt_reply.py DAEMON --tmpdir T ARGS...
It starts DAEMON, waits for T/util/vmmd.sock, moves the daemon's listening
socket aside (T/util/vmmd.real.sock) and listens on vmmd.sock itself,
forwarding every connection; in the first unikernel info reply that lists
a unikernel it changes the memory size (one byte of the DER), so the reply
still decodes but says something else.  Stops the daemon on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from albatross.wire import END, FrameReader, decode_wire, encode_wire, frame
from albatross.wire import messages as m

argv = sys.argv[1:]
tmpdir = argv[argv.index("--tmpdir") + 1]
sock = os.path.join(tmpdir, "util", "vmmd.sock")
real = os.path.join(tmpdir, "util", "vmmd.real.sock")
child = subprocess.Popen(argv)
signal.signal(signal.SIGTERM, lambda *_: (child.send_signal(signal.SIGTERM), child.wait(), os._exit(child.returncode)))
deadline = time.monotonic() + 20
while not os.path.exists(sock):
    if child.poll() is not None or time.monotonic() > deadline:
        sys.exit(f"corrupt_reply: the daemon did not listen (exit {child.poll()})")
    time.sleep(0.02)
os.rename(sock, real)
server = socket.socket(socket.AF_UNIX)
server.bind(sock)
server.listen(16)
done = threading.Event()


def corrupt(data: bytes) -> bytes:
    try:
        w = decode_wire(data)
    except Exception:  # noqa: BLE001 - not ours to judge: pass it on
        return data
    if done.is_set() or not isinstance(w.payload, m.UnikernelInfos) or not w.payload.unikernels:
        return data
    done.set()
    name, info = w.payload.unikernels[0]
    bad = dataclasses.replace(info, memory=info.memory + 1)
    payload = m.UnikernelInfos(((name, bad), *w.payload.unikernels[1:]), w.payload.variant)
    print("corrupt_reply: corrupted one info reply", file=sys.stderr, flush=True)
    return encode_wire(dataclasses.replace(w, payload=payload))


def pump(src: socket.socket, dst: socket.socket, from_daemon: bool) -> None:
    reader = FrameReader()
    try:
        while True:
            chunk = src.recv(1 << 16)
            if not chunk:
                break
            if not from_daemon:
                dst.sendall(chunk)
                continue
            reader.feed(chunk)
            while True:
                f = reader.next_frame()
                if f is None:
                    break
                dst.sendall(b"\x00\x00\x00\x00" if f is END else frame(corrupt(f)))
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


while True:
    client, _ = server.accept()
    daemon = socket.socket(socket.AF_UNIX)
    daemon.connect(real)
    threading.Thread(target=pump, args=(client, daemon, False), daemon=True).start()
    threading.Thread(target=pump, args=(daemon, client, True), daemon=True).start()
