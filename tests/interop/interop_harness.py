"""Our programs and upstream's (albatross v2.7.2) side by side, with real
Solo5 tenders and unikernels.

:class:`Host` runs albatross-console, albatrossd, albatross-stats and
albatross-tls-endpoint, each from either implementation ("ours": the
programs of this repository's venv; "upstream": ../shared/upstream/bin), in
one fresh tmpdir/dbdir with the real tenders of ../shared/solo5/bin first on
PATH, and drives them with either client.  Every wait has a deadline; every
process started is stopped at teardown (tenders included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from solo5_fixtures import SHARED, SOLO5_BIN, SOLO5_TESTS, real_tender_missing
from system_fixtures import Processes, Stream, accepts, missing_privileges, wait

UPSTREAM = os.path.join(SHARED, "upstream")
UPSTREAM_BIN = os.path.join(UPSTREAM, "bin")
OURS_BIN = os.path.dirname(sys.executable)
IMPLS = {"ours": OURS_BIN, "upstream": UPSTREAM_BIN}
BOTH = ("ours", "upstream")

SOCKETS = {"albatrossd": "vmmd.sock", "albatross-console": "console.sock", "albatross-stats": "stat.sock"}
ORDER = ("albatross-tls-endpoint", "albatross-stats", "albatrossd", "albatross-console")


def upstream_missing() -> str | None:
    """Why upstream's programs cannot run here (None: they can)."""
    if not os.path.isdir(UPSTREAM_BIN):
        return f"genuine upstream albatross not found at {os.path.normpath(UPSTREAM_BIN)} (../shared/upstream)"
    for prog in ("albatross-client", "albatrossd", "albatross-console", "albatross-stats", "albatross-tls-endpoint"):
        p = subprocess.run([os.path.join(UPSTREAM_BIN, prog), "--version"], capture_output=True, text=True)
        if p.returncode != 0:
            return (f"upstream {prog} does not run here ({(p.stderr or p.stdout).strip()[:200]}); "
                    "scripts/setup installs libev4, libgmp10, libnl-3-200, libnl-route-3-200")
    return None


def interop_missing(target: str = "hvt") -> str | None:
    return upstream_missing() or missing_privileges() or real_tender_missing(target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exe(impl: str, program: str) -> str:
    return os.path.join(IMPLS[impl], program)


class Host(Processes):
    """A tmpdir/dbdir with daemons of either implementation."""

    order = ORDER

    def __init__(self, base, wrap: dict[str, str] | None = None, netns: str | None = None):
        self.base = base
        #: albatrossd (and so its tenders and taps) runs in this network namespace
        self.netns = netns
        self.tmpdir = str(base / "run")
        self.dbdir = str(base / "db")
        for d in (f"{self.tmpdir}/util", f"{self.tmpdir}/fifo", f"{self.dbdir}/block"):
            os.makedirs(d, exist_ok=True)
        os.makedirs(base / "tmp", exist_ok=True)
        # TMPDIR: where clients write dumps (get, dump-block, extract-dump)
        self.env = dict(os.environ, PATH=f"{SOLO5_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                        TMPDIR=str(base / "tmp"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.impl: dict[str, str] = {}
        self.streams: list[Stream] = []
        #: program -> a wrapper command run in its place (tests of the suite itself)
        self.wrap = wrap or {}

    def sock(self, program: str) -> str:
        return os.path.join(self.tmpdir, "util", SOCKETS[program])

    def log_path(self, program: str) -> str:
        return str(self.base / f"{program}.log")

    def log(self, program: str) -> str:
        try:
            with open(self.log_path(program), errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def start(self, program: str, impl: str, *args: str, port: int | None = None) -> subprocess.Popen:
        sock = SOCKETS.get(program)
        if sock is not None and os.path.exists(self.sock(program)):
            os.unlink(self.sock(program))
        argv = [exe(impl, program), "--tmpdir", self.tmpdir, "-vv", *args]
        if program in self.wrap:
            w = self.wrap[program]
            argv = [*([sys.executable] if w.endswith(".py") else []), w, *argv]
        if self.netns and program == "albatrossd":
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.log_path(program), "a") as log:
            log.write(f"---- start {impl} {program} {' '.join(args)}\n")
            log.flush()
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.base))
        self.procs[program] = p
        self.impl[program] = impl
        if sock is not None:
            wait(lambda: p.poll() is not None or accepts(self.sock(program)), f"{impl} {program} to listen")
        elif port is not None:
            wait(lambda: p.poll() is not None or _tcp_accepts(port), f"{impl} {program} to listen on {port}")
        assert p.poll() is None, f"{impl} {program} exited with {p.returncode}:\n{self.log(program)}"
        return p

    def start_console(self, impl: str) -> None:
        self.start("albatross-console", impl)

    def start_albatrossd(self, impl: str) -> None:
        self.start("albatrossd", impl, "--dbdir", self.dbdir)

    def start_stats(self, impl: str) -> None:
        self.start("albatross-stats", impl, "--interval", "1")

    def start_endpoint(self, impl: str, cacert: str, cert: str, key: str, port: int) -> None:
        self.start("albatross-tls-endpoint", impl, cacert, cert, key, "--ip", "127.0.0.1", "--port", str(port),
                   port=port)

    def stop(self, program: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        p = self.procs.pop(program)
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"{program} did not stop on signal {sig} within {timeout}s")

    # -- clients -----------------------------------------------------------------
    def run(self, impl: str, *args: str, code: int | None = 0, local: bool = True,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """``albatross-client ARGS`` of ``impl`` (with this host's --tmpdir when ``local``)."""
        argv = [exe(impl, "albatross-client"), *args]
        if local:
            argv += ["--tmpdir", self.tmpdir]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=self.env, errors="replace",
                           cwd=cwd or str(self.base))
        if code is not None:
            assert p.returncode == code, (impl, args, p.returncode, p.stdout, p.stderr)
        return p

    def client(self, impl: str, *args: str, code: int | None = 0, **kw) -> str:
        p = self.run(impl, *args, code=code, **kw)
        return p.stdout + p.stderr

    def stream(self, impl: str, *args: str) -> Stream:
        s = Stream([exe(impl, "albatross-client"), *args, "--tmpdir", self.tmpdir], self.env)
        self.streams.append(s)
        return s

    def infos(self, impl: str = "ours", name: str | None = None) -> str:
        return self.client(impl, "info", *(["--name", name] if name else []))


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def solo5_image(name: str, target: str = "hvt") -> str:
    """A real Solo5 test unikernel of ../shared/solo5/tests."""
    return os.path.join(SOLO5_TESTS, f"{name}.{target}")
