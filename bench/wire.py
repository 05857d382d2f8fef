#!/usr/bin/env python3
"""Throughput of the wire codec: prints messages per second (not a test).

    .venv/bin/python bench/wire.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import time

from albatross.core import NetInfo, BlockInfo, Ptime, UnikernelConfig, UnikernelInfo, NetDevice
from albatross.policy.names import Name
from albatross.wire import codec, messages as m
from albatross.wire.state import State, decode_state, encode_state


def rate(fn, seconds: float) -> tuple[float, int]:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    t = args.seconds
    hdr = m.Header(Name(("tenant",), "web"), 0)

    image = os.urandom(1 << 20)
    create = m.Wire(hdr, m.UnikernelCreate(UnikernelConfig(
        image=image, memory=64, bridges=(NetDevice("service"),), argv=("--ipv4=10.0.0.2/24",))))
    create_der = codec.encode_wire(create)

    info = UnikernelInfo(memory=64, digest=os.urandom(32), started=Ptime.now(),
                         bridges=(NetInfo("service", "service", b"\x00\x80\x41\x01\x02\x03"),),
                         block_devices=(BlockInfo("storage", "storage", 512, 100),), argv=("--x",))
    infos = m.Wire(m.Header(Name(), 0), m.UnikernelInfos(tuple((Name(("t",), f"u{i}"), info) for i in range(1000))))
    infos_der = codec.encode_wire(infos)

    console = m.Wire(hdr, m.ConsoleData(Ptime.now(), b"2024-05-17 09:21:07 -00:00: INF [application] hello world"))
    console_der = codec.encode_wire(console)

    state = State(tuple((Name(("t",), f"u{i}"), UnikernelConfig(image=b"\x7fELF" + os.urandom(60), memory=32,
                                                                 bridges=(NetDevice("service"),)))
                        for i in range(10000)))
    state_der = encode_state(state)

    rows = [
        ("Unikernel_create, 1 MiB image", len(create_der), lambda: codec.encode_wire(create),
         lambda: codec.decode_wire(create_der)),
        ("info reply, 1,000 unikernels", len(infos_der), lambda: codec.encode_wire(infos),
         lambda: codec.decode_wire(infos_der)),
        ("console data message", len(console_der), lambda: codec.encode_wire(console),
         lambda: codec.decode_wire(console_der)),
        ("state file, 10,000 unikernels", len(state_der), lambda: encode_state(state),
         lambda: decode_state(state_der)),
    ]
    print(f"{'message':34} {'bytes':>10} {'encode/s':>12} {'decode/s':>12}")
    for label, size, enc, dec in rows:
        e, _ = rate(enc, t)
        d, _ = rate(dec, t)
        print(f"{label:34} {size:>10} {e:>12.1f} {d:>12.1f}")


if __name__ == "__main__":
    main()
