"""kill -9 of albatrossd during a create/destroy loop, many rounds (not a test; needs root).

Each round: a client thread creates and destroys unikernels k0..k2 (with a
tap on a bridge, inside a network namespace of our own, when netns works),
the main thread SIGKILLs albatrossd at a random moment, restarts it, waits
until it has restored everything, and counts:

* duplicate tenders  -- unikernels with more than one live tender;
* state/tender mismatches -- a unikernel in the state file without a tender or
  a tender without an entry in the state file;
* leaked taps / fifos / images -- present but used by no running unikernel;
* lost acks -- an acknowledged create missing, or an acknowledged destroy
  back, after the restart (only where no later, unanswered command on the same
  name could explain the difference).

Uses the real albatrossd, the console stub and the stand-in tender of tests/.
Run: .venv/bin/python bench/kill_loop.py [--rounds 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "src"))

from albatross.core import NetDevice, UnikernelConfig  # noqa: E402
from albatross.policy.names import Name  # noqa: E402
from albatross.wire import encode_wire, frame  # noqa: E402
from albatross.wire import messages as m  # noqa: E402
from albatross.wire.messages import Header, Wire  # noqa: E402
from solo5_fixtures import build_image  # noqa: E402
from test_albatrossd_e2e import Albatross, raw_request  # noqa: E402

NAMES = ("k0", "k1", "k2")  # as sent; ":k0" etc. in the state file


def make_netns() -> str | None:
    if shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        return None
    name = "albk-" + uuid.uuid4().hex[:8]
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return None
    subprocess.run(["ip", "-n", name, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "br0", "up"], check=True)
    return name


class Bench(Albatross):
    def ok(self, name: str, cmd: m.Cmd) -> bool | None:
        """True: success; False: a failure reply; None: no reply (albatrossd was killed)."""
        try:
            replies = raw_request(self.sock, frame(encode_wire(Wire(Header(Name.of_string(name)), cmd))), 90)
        except OSError as e:
            if os.environ.get("KILL_LOOP_DEBUG"):
                print(name, e, flush=True)
            return None
        if not replies:
            return None
        return not isinstance(replies[-1].payload, m.Failure)

    def start_restored(self) -> None:
        self.start()
        if not self.ok(":", m.UnikernelInfoCmd()):
            raise RuntimeError("albatrossd does not answer: " + self.read_log()[-2000:])

    def state_names(self) -> set[str]:
        if not os.path.exists(os.path.join(self.dbdir, "state")):
            return set()
        return {n.to_string() for n, _ in self.state().unikernels}

    def live(self) -> dict[str, list]:
        import psutil
        out: dict[str, list] = {}
        for p in self.tenders():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                img = next(a for a in p.cmdline() if a.endswith(".img"))
            except (psutil.Error, StopIteration):
                continue
            out.setdefault(os.path.basename(img)[:-4], []).append(p)
        return out

    def taps(self) -> set[str]:
        if not self.netns:
            return set()
        out = subprocess.run(["ip", "-n", self.netns, "-o", "link", "show"], capture_output=True, text=True).stdout
        names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
        return {n for n in names if n.startswith("vmmtap")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-delay", type=float, default=6.0,
                    help="kill at a random moment 0.05..MAX s into the round (a create takes ~2 s here)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="albatross-kill-"))
    netns = make_netns()
    image = build_image(devices=(("service", "NET_BASIC"),) if netns else ())
    bridges = (NetDevice("service", "br0"),) if netns else ()
    alb = Bench(base, netns)
    alb.start_stub()
    alb.start_restored()
    figures = dict(rounds=0, commands=0, acked=0, duplicate_tenders=0, state_tender_mismatch=0,
                   leaked_taps=0, leaked_fifos=0, leaked_images=0, leaked_records=0, lost_acks=0)
    t0 = time.monotonic()
    try:
        for r in range(args.rounds):
            ops: list[tuple[str, str, bool | None]] = []  # (name, "create"/"destroy", outcome) in order
            stop = threading.Event()

            def loop() -> None:
                i = 0
                while not stop.is_set():
                    for name, op in ((NAMES[i % 3], "create"), (NAMES[(i + 1) % 3], "destroy")):
                        if stop.is_set():
                            return
                        cmd = (m.UnikernelCreate(UnikernelConfig(image=image, bridges=bridges, argv=("forever",)))
                               if op == "create" else m.UnikernelDestroy())
                        ops.append((name, op, None))
                        ok = alb.ok(name, cmd)
                        if os.environ.get("KILL_LOOP_DEBUG"):
                            print(name, op, ok, flush=True)
                        ops[-1] = (name, op, ok)
                    i += 1

            before = alb.state_names()
            th = threading.Thread(target=loop, daemon=True)
            th.start()
            time.sleep(rng.uniform(0.05, args.max_delay))  # a random moment (a bench, not a test)
            alb.daemon.kill()
            alb.daemon.wait()
            alb.daemon = None
            stop.set()
            th.join(30)
            alb.start_restored()

            state = alb.state_names()
            live = alb.live()
            figures["rounds"] += 1
            figures["commands"] += len(ops)
            figures["acked"] += sum(1 for o in ops if o[2] is True)
            figures["duplicate_tenders"] += sum(1 for ps in live.values() if len(ps) > 1)
            figures["state_tender_mismatch"] += len(state ^ set(live))
            used_taps = {a.split("=", 1)[1] for ps in live.values() for a in ps[0].cmdline() if a.startswith("--net:")}
            figures["leaked_taps"] += len(alb.taps() - used_taps)
            figures["leaked_fifos"] += len(set(os.listdir(os.path.join(alb.tmpdir, "fifo"))) - state)
            figures["leaked_images"] += len({f[:-4] for f in os.listdir(alb.tmpdir) if f.endswith(".img")} - state)
            rec_dir = os.path.join(alb.tmpdir, "tenders")
            recs = {f[:-4] for f in os.listdir(rec_dir) if f.endswith(".rec")} if os.path.isdir(rec_dir) else set()
            figures["leaked_records"] += len(recs - state)
            for sent in NAMES:
                name = ":" + sent
                expected: bool | None = name in before
                for n, op, outcome in ops:
                    if n != sent:
                        continue
                    if outcome is True:
                        expected = op == "create"
                    elif outcome is None:
                        expected = None  # unanswered: either outcome is right
                    # a failure reply changes nothing
                if expected is not None and (name in state) != expected:
                    figures["lost_acks"] += 1
            print(f"round {r + 1}: {len(ops)} commands, state {sorted(state)}", flush=True)
    finally:
        alb.teardown()
        if netns:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        if not os.environ.get("KILL_LOOP_DEBUG"):
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("kept", base)
    elapsed = time.monotonic() - t0
    print()
    print(f"kill -9 loop: {figures['rounds']} rounds in {elapsed:.0f}s "
          f"({'taps in netns' if netns else 'no netns: no taps'})")
    for k, v in figures.items():
        print(f"  {k:22s} {v}")


if __name__ == "__main__":
    main()
