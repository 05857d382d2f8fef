#!/usr/bin/env python3
"""Fuzzing the decoders and the three local sockets (not a test; prints figures).

    .venv/bin/python bench/fuzz.py decoders [--runs 1000000]      # needs atheris
    .venv/bin/python bench/fuzz.py sockets [--connections 100000]  # needs root
    .venv/bin/python bench/fuzz.py all                              # both

``decoders`` runs atheris (coverage-guided libFuzzer; ``pip install atheris``)
over one target that dispatches on the first input byte to the wire codec
(decode, then encode again), the certificate-extension decoder, the state
decoder and the Solo5 ELF note reader (ABI and manifest).  Seeds are the
public wire vectors, cert extensions and states made from them, and Solo5
images from tests/solo5_fixtures.py.  Errors of the package (AlbatrossError)
are the expected answer to bad input; anything else is a crash, recorded
and counted (the run goes on).

``sockets`` starts albatross-console, albatrossd (stand-in tenders) and
albatross-stats in a network namespace of their own, then opens
``--connections`` connections spread over console.sock, vmmd.sock and
stat.sock, from ``--parallel`` threads.  Each sends one mutated message
(valid messages of every command, bit flips, truncations, bad lengths, zlib
bombs, NUL bytes in names, bad levels), shuts its side down and reads until
the daemon closes.  Every ``--probe-every`` connections each daemon must
answer a valid request within 10 s, and all must be alive.  Reported: inputs,
crashes (unexpected exceptions in the logs, dead daemons, failed probes),
connections that got no answer, RSS of each daemon before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
import traceback
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
VECTORS = Path("/work/shared/spec/vectors/wire_v5_public.jsonl")


# ------------------------------------------------------------------ seeds

def wire_seeds() -> list[bytes]:
    from albatross.wire import encode_wire
    out = []
    if VECTORS.exists():
        for line in VECTORS.read_text().splitlines():
            v = json.loads(line)
            if v.get("kind") == "wire" and "hex" in v:
                out.append(bytes.fromhex(v["hex"]))
    out += [encode_wire(w) for w in socket_messages()]
    return out


def image_seeds() -> list[bytes]:
    sys.path.insert(0, str(TESTS))
    from solo5_fixtures import build_image
    return [build_image(), build_image("spt"), build_image(devices=[("service", "NET_BASIC"), ("storage", "BLOCK_BASIC")]),
            build_image(bad_manifest="unterminated"), build_image(bad_manifest="unknown-type"),
            build_image(no_abi=True), build_image(no_manifest=True)]


def cert_seeds(wires: list[bytes]) -> list[bytes]:
    from albatross.errors import AlbatrossError
    from albatross.wire import decode_wire, encode_cert_extension
    from albatross.wire.messages import Cmd
    out = []
    for data in wires:
        try:
            w = decode_wire(data)
        except AlbatrossError:
            continue
        if isinstance(w.payload, Cmd):
            try:
                out.append(encode_cert_extension(w.payload))
            except AlbatrossError:
                pass
    return out


def state_seeds() -> list[bytes]:
    from albatross.core import Policy, UnikernelConfig, NetDevice, BlockDevice
    from albatross.policy.names import Name
    from albatross.wire.state import State, encode_state
    pol = Policy(4, frozenset({0, 1}), 512, 100, frozenset({"service"}))
    cfg = UnikernelConfig(image=b"\x7fELF" + b"\0" * 60, memory=64, bridges=(NetDevice("service"),),
                          block_devices=(BlockDevice("storage", "disk"),), argv=("--x=1",))
    return [encode_state(State()),
            encode_state(State(unikernels=((Name(("a",), "u"), cfg),), policies=((Name(("a",), None), pol),)))]


def socket_messages():
    """Valid messages of every kind the three sockets serve."""
    from albatross.core import Policy, UnikernelConfig, NetDevice
    from albatross.policy.names import Name
    from albatross.wire import messages as m
    from albatross.wire.messages import Header, Wire

    def w(name, payload, seq=1):
        return Wire(Header(name, seq), payload)
    n = Name(("fz",), "u")
    p = Name(("fz",), None)
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 KiB that inflate to 64 MiB
    return [
        w(n, m.ConsoleAdd(3)), w(n, m.ConsoleSubscribe(count=3)), w(p, m.ConsoleListInactive()),
        w(n, m.StatsAdd("vm", 1, (("service", "tap\0x"),))), w(n, m.StatsRemove()), w(n, m.StatsSubscribe()),
        w(n, m.UnikernelInfoCmd()), w(n, m.UnikernelGet(12)), w(n, m.UnikernelDestroy()),
        w(n, m.UnikernelRestart()),
        w(n, m.UnikernelCreate(UnikernelConfig(image=b"not an image", memory=32,
                                               bridges=(NetDevice("service"),)))),
        w(n, m.UnikernelCreate(UnikernelConfig(image=bomb, compressed=True, memory=32))),
        w(p, m.PolicyInfoCmd()), w(p, m.PolicyAdd(Policy(2, frozenset({0}), 64, 10, frozenset({"service"})))),
        w(p, m.PolicyRemove()),
        w(n, m.BlockInfoCmd()), w(n, m.BlockAdd(1)), w(n, m.BlockRemove()), w(n, m.BlockSet(True)),
        w(n, m.BlockDump(42)), w(n, m.OldBlockAdd(1, True, bomb)), w(n, m.OldBlockSet(True, bomb)),
        w(n, m.OldBlockDump(-3)),
    ]


# ------------------------------------------------------------------ decoders

def run_decoders(runs: int, out: Path) -> dict:
    import atheris
    from albatross.errors import AlbatrossError
    from albatross.solo5 import elf
    from albatross.wire import decode_cert_extension, decode_wire, encode_wire
    from albatross.wire.state import decode_state

    wires = wire_seeds()
    seeds = [b"\0" + s for s in wires] + [b"\1" + s for s in cert_seeds(wires)] + \
            [b"\2" + s for s in state_seeds()] + [b"\3" + s for s in image_seeds()]
    corpus = Path(tempfile.mkdtemp(prefix="albatross-fuzz-corpus-"))
    for i, s in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(s)
    counts = {"inputs": 0, "crashes": 0, "accepted": 0}
    crashes: dict[str, str] = {}
    crash_file = out / "decoder-crashes.txt"

    def target(data: bytes) -> None:
        counts["inputs"] += 1
        if not data:
            return
        kind, body = data[0] % 4, data[1:]
        try:
            if kind == 0:
                wire = decode_wire(body)
                encode_wire(wire)
            elif kind == 1:
                decode_cert_extension(body)
            elif kind == 2:
                decode_state(body)
            else:
                elf.query_abi(body)
                elf.query_manifest(body)
            counts["accepted"] += 1
        except AlbatrossError:
            pass
        except Exception as e:  # noqa: BLE001 - that is what we are looking for
            counts["crashes"] += 1
            key = f"{kind}:{type(e).__name__}:{traceback.extract_tb(e.__traceback__)[-1][:2]}"
            if key not in crashes:
                crashes[key] = data.hex()
                with crash_file.open("a") as fh:
                    fh.write(f"{key}\n{data.hex()}\n{traceback.format_exc()}\n")
        if counts["inputs"] % 100_000 == 0 or counts["inputs"] >= runs:
            report()  # libFuzzer ends the process without running atexit handlers

    import resource
    t0 = time.monotonic()
    counts["rss_before_mb"] = round(rss(os.getpid()) / 2**20, 1)

    def report() -> None:
        counts["rss_after_mb"] = round(rss(os.getpid()) / 2**20, 1)
        counts["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        counts["seconds"] = round(time.monotonic() - t0, 1)
        (out / "decoders.json").write_text(json.dumps(counts))
        print("decoders:", json.dumps(counts), flush=True)

    argv = [sys.argv[0], f"-runs={runs}", "-max_len=65536", "-rss_limit_mb=4096", "-print_final_stats=1",
            str(corpus)]
    # coverage guidance for everything loaded (the package was imported above or earlier)
    atheris.instrument_all()
    atheris.Setup(argv, target)
    atheris.Fuzz()  # exits the process at the end; report() runs from atexit
    return counts


# ------------------------------------------------------------------ sockets

def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2 and b:
            del b[rng.randrange(len(b)):]
        elif op == 3:
            i = rng.randrange(len(b) + 1)
            b[i:i] = os.urandom(rng.randint(1, 16))
        elif op == 4 and len(b) > 8:
            i = rng.randrange(len(b) - 4)
            b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x80\0\0\0"])
        else:
            pass  # unchanged
    return bytes(b)


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def payload(rng: random.Random, seeds: list[bytes], bombs: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.001:
        return framed(rng.choice(bombs))
    if r < 0.05:
        return os.urandom(rng.randint(0, 64))
    if r < 0.10:
        return rng.choice([b"\xff\xff\xff\xf0", b"\x7f\xff\xff\xff" + b"x" * 32, b"\x00\x00\x01\x00abc", b""])
    body = rng.choice(seeds)
    if r < 0.35:
        return framed(body)  # valid
    if r < 0.45:
        return mutate(rng, framed(body))  # frame level
    return framed(mutate(rng, body))


def rss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


def run_sockets(connections: int, parallel: int, probe_every: int, out: Path) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("sockets: albatrossd needs root")
    sys.path.insert(0, str(TESTS))
    from system_fixtures import System, delete_netns, make_netns  # noqa: E402
    from albatross.policy.names import Name
    from albatross.wire import encode_wire, frame
    from albatross.wire import messages as m
    from albatross.wire.messages import Header, Wire

    from albatross.errors import AlbatrossError
    bombs = []
    for w in socket_messages():
        if isinstance(w.payload, (m.UnikernelCreate, m.OldBlockAdd, m.OldBlockSet)):
            try:
                bombs.append(encode_wire(w))
            except AlbatrossError:
                pass
    seeds = [s for s in wire_seeds() if s not in bombs and len(s) < 60_000]
    base = Path(tempfile.mkdtemp(prefix="albatross-fuzz-"))
    netns = make_netns()
    system = System(base, netns)
    counts = {"connections": 0, "no_answer": 0, "refused": 0, "probes": 0, "probe_failures": 0,
              "max_probe_s": 0.0}
    try:
        system.start_all()
        pids = {p: system.procs[p].pid for p in ("albatross-console", "albatrossd", "albatross-stats")}
        # the processes behind "ip netns exec" are the daemons themselves (exec)
        before = {p: rss(pid) for p, pid in pids.items()}
        paths = [system.sock(p) for p in pids]
        lock = threading.Lock()
        stop = threading.Event()
        probes = {
            "albatrossd": (Name(("fz",), None), m.PolicyInfoCmd()),
            "albatross-console": (Name(("fz",), None), m.ConsoleListInactive()),
            "albatross-stats": (Name(("fz",), "nothing"), m.StatsRemove()),
        }

        def probe() -> None:
            for prog, (name, cmd) in probes.items():
                t0 = time.monotonic()
                ok = False
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(10)
                        s.connect(system.sock(prog))
                        s.sendall(frame(encode_wire(Wire(Header(name, 9), cmd))))
                        ok = len(s.recv(4)) == 4
                except OSError:
                    ok = False
                dt = time.monotonic() - t0
                with lock:
                    counts["probes"] += 1
                    counts["max_probe_s"] = max(counts["max_probe_s"], round(dt, 3))
                    if not ok or not system.alive(prog):
                        counts["probe_failures"] += 1

        def worker(k: int) -> None:
            rng = random.Random(k)
            while not stop.is_set():
                with lock:
                    if counts["connections"] >= connections:
                        return
                    counts["connections"] += 1
                    n = counts["connections"]
                if n % probe_every == 0:
                    probe()
                data = payload(rng, seeds, bombs)
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(30)
                        s.connect(rng.choice(paths))
                        if data:
                            s.sendall(data)
                        s.shutdown(socket.SHUT_WR)
                        while s.recv(1 << 16):
                            pass
                except socket.timeout:
                    with lock:
                        counts["no_answer"] += 1
                except (ConnectionRefusedError, BlockingIOError):
                    with lock:
                        counts["refused"] += 1
                except OSError:
                    pass  # reset by the daemon closing first: fine

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(parallel)]
        for t in threads:
            t.start()
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            if time.monotonic() - last > 30:
                last = time.monotonic()
                print(f"  sockets: {counts['connections']} connections, {counts['probe_failures']} probe failures",
                      flush=True)
        probe()
        counts["seconds"] = round(time.monotonic() - t0, 1)
        after = {p: rss(pid) if system.alive(p) else 0 for p, pid in pids.items()}
        counts["rss_before_mb"] = {p: round(v / 2**20, 1) for p, v in before.items()}
        counts["rss_after_mb"] = {p: round(v / 2**20, 1) for p, v in after.items()}
        counts["alive"] = {p: system.alive(p) for p in pids}
        tracebacks = {p: len(re.findall(r"^Traceback", system.log(p), re.M)) for p in pids}
        counts["tracebacks_in_logs"] = tracebacks
        counts["log_bytes"] = {p: len(system.log(p)) for p in pids}
        counts["crashes"] = sum(tracebacks.values()) + sum(not a for a in counts["alive"].values()) + \
            counts["probe_failures"]
        for p in pids:
            (out / f"{p}.log").write_text(system.log(p))
    finally:
        system.teardown()
        delete_netns(netns)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["decoders", "sockets", "all"])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--probe-every", type=int, default=1000)
    ap.add_argument("--out", default=None, help="directory for results (default: a new temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="albatross-fuzz-out-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"results in {out}", flush=True)
    if args.what in ("sockets", "all"):
        res = run_sockets(args.connections, args.parallel, args.probe_every, out)
        print("sockets:", json.dumps(res), flush=True)
        (out / "sockets.json").write_text(json.dumps(res))
    if args.what in ("decoders", "all"):
        # atheris ends the process when the runs are done: it goes last
        run_decoders(args.runs, out)


if __name__ == "__main__":
    main()
