"""Fault injection against the real albatrossd (issue 11): kill -9 at every
effect boundary of create / destroy / restart, a second daemon on the same
dbdir, a full dbdir, a read-only dbdir and a corrupt state file.

After each fault the invariants of :func:`check` must hold: at most one
tender per unikernel (exactly one for each unikernel in the state file),
no tap / fifo / image / tender record that no running unikernel owns, every
acknowledged command persisted, nothing destroyed back.

The kill points are enumerated with albatrossd's test-only hook
(``ALBATROSSD_CRASH_FILE``, see daemons/runrecords.py CrashPoints): the file
holds k, albatrossd SIGKILLs itself at the k-th effect boundary it passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import psutil
import pytest

from albatross.core import NetDevice, UnikernelConfig
from albatross.policy.names import Name
from albatross.wire import encode_wire, frame
from albatross.wire import messages as m
from albatross.wire.messages import Header, Wire
from albatross.wire.state import decode_state

from test_albatrossd_e2e import BIN, Albatross, image, needs_netns, needs_root, net_image, raw_request, wait_for  # noqa: F401

pytestmark = needs_root


# ------------------------------------------------------------------ helpers

class Faulty(Albatross):
    def __init__(self, base, netns=None):
        super().__init__(base, netns)
        self.crash_file = str(base / "crash")
        self.env["ALBATROSSD_CRASH_FILE"] = self.crash_file

    def start(self, *extra: str, wait: bool = True) -> subprocess.Popen:
        """Start albatrossd; with ``wait``, return once it has restored everything
        (the socket is bound before the restore, a request is answered after it)."""
        p = super().start(*extra, wait=wait)
        if wait:
            assert self.acked(":", m.UnikernelInfoCmd())
        return p

    def acked(self, name: str, cmd: m.Cmd) -> bool:
        """Send one command on the socket (no client process: faster); whether it succeeded."""
        wire = Wire(Header(Name.of_string(name)), cmd)
        try:
            replies = raw_request(self.sock, frame(encode_wire(wire)), timeout=90)
        except OSError:
            return False
        return bool(replies) and not isinstance(replies[-1].payload, m.Failure)

    def state_names(self) -> set[str]:
        path = os.path.join(self.dbdir, "state")
        if not os.path.exists(path):
            return set()
        return {n.to_string() for n, _ in self.state().unikernels}

    def live_tenders(self) -> dict[str, list[psutil.Process]]:
        out: dict[str, list[psutil.Process]] = {}
        for p in self.tenders():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                img = next(a for a in p.cmdline() if a.startswith(self.tmpdir + "/") and a.endswith(".img"))
            except (psutil.Error, StopIteration):
                continue
            out.setdefault(os.path.basename(img)[:-4], []).append(p)
        return out

    def taps(self) -> set[str]:
        argv = ["ip"] + (["-n", self.netns] if self.netns else []) + ["-o", "link", "show"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if line.split(":")[1].strip().startswith("vmmtap")}

    def arm(self, k: int) -> None:
        for f in (self.crash_file + ".hit", self.crash_file + ".log"):
            if os.path.exists(f):
                os.unlink(f)
        with open(self.crash_file, "w") as fh:
            fh.write(str(k))

    def hit(self) -> str | None:
        try:
            with open(self.crash_file + ".hit") as fh:
                return fh.read().strip()
        except FileNotFoundError:
            return None

    def settle(self) -> str | None:
        """After an armed command: the boundary albatrossd died at, or None (then disarmed).

        An info request waits for the global lock, so every boundary of the
        command before has been passed when it is answered.
        """
        if self.hit() is None:
            self.acked(":", m.UnikernelInfoCmd())
        if self.hit() is not None:
            assert self.daemon.wait(15) == -signal.SIGKILL
            self.daemon = None
            return self.hit()
        os.unlink(self.crash_file)
        return None


def check(alb: Faulty, present: set[str] = frozenset(), absent: set[str] = frozenset()) -> None:
    """The invariants (the daemon is up and has restored everything)."""
    state = alb.state_names()
    tenders = alb.live_tenders()
    dup = {n: [p.pid for p in ps] for n, ps in tenders.items() if len(ps) > 1}
    assert not dup, f"duplicate tenders {dup}"
    assert set(tenders) == state, f"tenders {sorted(tenders)} but state {sorted(state)}"
    assert present <= state, f"acknowledged creates lost: {present - state}"
    assert not (absent & state), f"destroyed unikernels back: {absent & state}"
    used_taps = {a.split("=", 1)[1] for ps in tenders.values() for a in ps[0].cmdline() if a.startswith("--net:")}
    if alb.netns:
        assert alb.taps() == used_taps, f"taps {sorted(alb.taps())}, in use {sorted(used_taps)}"
    fifos = set(os.listdir(os.path.join(alb.tmpdir, "fifo")))
    assert fifos == state, f"fifos {fifos}, state {state}"
    images = {f[:-4] for f in os.listdir(alb.tmpdir) if f.endswith(".img")}
    assert images == state, f"images {images}, state {state}"
    rec_dir = os.path.join(alb.tmpdir, "tenders")
    records = {f[:-4] for f in os.listdir(rec_dir) if f.endswith(".rec")} if os.path.isdir(rec_dir) else set()
    assert not [f for f in os.listdir(rec_dir) if not f.endswith(".rec")] if os.path.isdir(rec_dir) else True
    assert records == state, f"tender records {records}, state {state}"


@pytest.fixture
def netns():
    name = "albf-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "br0", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def faulty(tmp_path, netns):
    a = Faulty(tmp_path, netns)
    a.start_stub()
    a.start()
    yield a
    a.teardown()


def acked(p: subprocess.CompletedProcess) -> bool:
    return p.returncode == 0 and "success" in p.stdout


def create_x(net_image: str) -> m.UnikernelCreate:
    with open(net_image, "rb") as fh:
        image = fh.read()
    return m.UnikernelCreate(UnikernelConfig(image=image, bridges=(NetDevice("service", "br0"),), argv=("forever",)))


def crash_rounds(alb: Faulty, setup, command, expect) -> list[str]:
    """For k = 1, 2, ...: bring ``x`` to its initial state (``setup``), arm k, run
    ``command``; after a crash restart albatrossd and check.  Ends when k
    exceeds the command's boundaries; returns the boundaries crashed at."""
    labels = []
    for k in range(1, 80):
        setup()
        check(alb)
        alb.arm(k)
        ok = command()
        label = alb.settle()
        present, absent = expect(ok)
        if label is None:
            assert ok, "the command failed without a crash"
            check(alb, present, absent)
            assert labels, "no boundary at all"
            print("boundaries crashed at:", labels)
            return labels
        labels.append(label)
        alb.start()
        check(alb, present, absent)
    raise AssertionError(f"more than 80 boundaries: {labels}")


# ------------------------------------------------------------------ kill -9 at every boundary

@needs_netns
def test_kill_9_at_every_boundary_of_create(faulty, net_image):
    def setup():
        faulty.acked("x", m.UnikernelDestroy())

    labels = crash_rounds(faulty, setup, lambda: faulty.acked("x", create_x(net_image)),
                          lambda ok: ({":x"} if ok else set(), set()))
    for boundary in ("create: record written", "create: vmmtap0 recorded", "create: prepared",
                     "create: spawn recorded", "create: spawned", "create: pid recorded", "state written",
                     "effect PrepareAndSpawn"):
        assert boundary in labels, (boundary, labels)


@needs_netns
def test_kill_9_at_every_boundary_of_destroy(faulty, net_image):
    def setup():
        if ":x" not in faulty.state_names():
            assert faulty.acked("x", create_x(net_image))

    labels = crash_rounds(faulty, setup, lambda: faulty.acked("x", m.UnikernelDestroy()),
                          lambda ok: (set(), {":x"} if ok else set()))
    for boundary in ("effect Kill", "cleanup: resources freed", "effect Cleanup", "state written", "effect Reply"):
        assert boundary in labels, (boundary, labels)


@needs_netns
def test_kill_9_at_every_boundary_of_restart(faulty, net_image):
    def setup():
        if ":x" not in faulty.state_names():
            assert faulty.acked("x", create_x(net_image))

    labels = crash_rounds(faulty, setup, lambda: faulty.acked("x", m.UnikernelRestart(None)),
                          lambda ok: ({":x"}, set()))
    assert "effect Kill" in labels and "create: pid recorded" in labels, labels


def test_kill_9_at_every_boundary_of_restore(tmp_path, image):
    """A crash while restoring loses nothing: the state file is not rewritten per restored unikernel."""
    alb = Faulty(tmp_path)
    alb.start_stub()
    alb.start()
    try:
        alb.client("create", "a", image, "--arg", "forever")
        alb.client("create", "b", image, "--arg", "forever")
        labels = []
        for k in range(1, 60):
            alb.stop(signal.SIGKILL)
            alb.arm(k)
            alb.start(wait=False)
            wait_for(lambda: alb.hit() is not None or alb._connectable(), timeout=60, what="crash or socket")
            label = alb.settle()  # answered after the restore
            if label is None:
                break
            labels.append(label)
            alb.start()
            check(alb, {":a", ":b"})
        else:
            raise AssertionError(f"too many boundaries: {labels}")
        check(alb, {":a", ":b"})
        assert labels.count("create: pid recorded") == 2, labels
    finally:
        alb.teardown()


def test_kill_9_reclaims_tenders_and_files(tmp_path, image):
    """Without network: the tenders of a killed albatrossd are stopped at the next start and logged."""
    alb = Faulty(tmp_path)
    alb.start_stub()
    alb.start()
    try:
        alb.client("create", "a", image, "--arg", "forever")
        alb.client("create", "b", image, "--arg", "forever")
        old = {n: ps[0].pid for n, ps in alb.live_tenders().items()}
        alb.stop(signal.SIGKILL)
        assert set(alb.live_tenders()) == {":a", ":b"}  # orphans, still running
        alb.start()
        check(alb, {":a", ":b"})
        new = {n: ps[0].pid for n, ps in alb.live_tenders().items()}
        assert not set(old.values()) & set(new.values())
        log = alb.read_log()
        for n, pid in old.items():
            assert f"reclaimed from a previous albatrossd: {n}: stopped tender pid {pid} (SIGTERM)" in log
    finally:
        alb.teardown()


def test_reused_pid_is_never_signalled(tmp_path):
    """A record whose pid now belongs to another process (other start time) is not acted on."""
    alb = Faulty(tmp_path)
    alb.start_stub()
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        from albatross.daemons import runrecords as R
        rec = R.TenderRecord(":ghost", os.path.join(alb.tmpdir, ":ghost.img"), os.path.join(alb.tmpdir, "fifo", ":ghost"),
                             R.boot_id(), pid=bystander.pid, start=R.proc_start_time(bystander.pid) - 1)
        R.Records(alb.tmpdir).write(rec)
        alb.start()
        assert bystander.poll() is None
        assert not os.path.exists(R.Records(alb.tmpdir).path(":ghost"))
    finally:
        bystander.kill()
        bystander.wait()
        alb.teardown()


# ------------------------------------------------------------------ a second daemon

def test_second_daemon_refused_and_touches_nothing(tmp_path, image):
    alb = Faulty(tmp_path)
    alb.start_stub()
    alb.start()
    try:
        alb.client("create", "a", image, "--arg", "forever")
        pid = alb.live_tenders()[":a"][0].pid
        sock_before = os.stat(alb.sock)
        state_before = os.stat(os.path.join(alb.dbdir, "state"))
        second = subprocess.run([os.path.join(BIN, "albatrossd"), "--tmpdir", alb.tmpdir, "--dbdir", alb.dbdir],
                                capture_output=True, text=True, env=alb.env, timeout=60)
        assert second.returncode != 0
        assert f"albatrossd already running on {alb.dbdir} (pid {alb.daemon.pid})" in second.stderr
        assert os.stat(alb.sock).st_ino == sock_before.st_ino
        assert os.stat(os.path.join(alb.dbdir, "state")).st_mtime_ns == state_before.st_mtime_ns
        assert [p.pid for p in alb.live_tenders()[":a"]] == [pid]
        assert "created unikernel" not in second.stdout
        # the first one still serves
        assert ":a" in alb.client("info").stdout
        check(alb, {":a"})
    finally:
        alb.teardown()


def test_stale_lock_does_not_block(tmp_path):
    alb = Faulty(tmp_path)
    alb.start_stub()
    with open(os.path.join(alb.dbdir, "albatrossd.lock"), "w") as fh:
        fh.write(f"{os.getpid()}\n{alb.tmpdir}\n")  # a live pid, but nobody holds the lock
    try:
        alb.start()
        with open(os.path.join(alb.dbdir, "albatrossd.lock")) as fh:
            assert fh.readline().strip() == str(alb.daemon.pid)
    finally:
        alb.teardown()


# ------------------------------------------------------------------ disk full, read-only

def _mount(*argv: str) -> None:
    p = subprocess.run(["mount", *argv], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mount {' '.join(argv)} failed: {p.stderr.strip()}")


def _fill(path: str) -> None:
    """Fill the file system of ``path`` (it may be too full to create the file at all)."""
    try:
        fh = open(path, "wb", buffering=0)
    except OSError as e:
        print(f"could not create {path}: {e}")
        return
    with fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.fixture
def tmpfs_dbdir(tmp_path):
    alb = Faulty(tmp_path)
    _mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", alb.dbdir)
    os.makedirs(os.path.join(alb.dbdir, "block"))
    yield alb
    alb.teardown()
    subprocess.run(["umount", "-l", alb.dbdir], check=False)


def test_disk_full(tmpfs_dbdir, tmp_path):
    alb = tmpfs_dbdir
    img = tmp_path / "big.hvt"
    from solo5_fixtures import build_image
    img.write_bytes(build_image(devices=(), payload=os.urandom(12_000)))
    alb.start_stub()
    alb.start()
    created, refused = [], []
    for i in range(40):
        p = alb.client("create", f"u{i}", str(img), "--arg", "forever", check=None)
        if acked(p):
            created.append(f":u{i}")
        else:
            assert "failed to write the state" in p.stdout and "the unikernel was stopped" in p.stdout, p.stdout
            refused.append(f":u{i}")
            if len(refused) == 3:
                break
    assert created and refused, (created, refused)
    check(alb, set(created), set(refused))
    # now really full: a destroy kills the tender, cannot write the state, leaves a tombstone
    _fill(os.path.join(alb.dbdir, "filler"))
    p = alb.client("destroy", created[0][1:], check=None)
    assert p.returncode != 0
    assert "destroyed unikernel, but failed to write the state" in p.stdout, p.stdout
    assert "it will not be restored at the next start" in p.stdout, p.stdout
    assert created[0] in alb.state_names()  # the file on disk is behind...
    alb.stop(signal.SIGKILL)
    alb.start()
    # ...but the tombstone keeps the destroyed unikernel down
    assert created[0] not in alb.live_tenders()
    assert set(alb.live_tenders()) == set(created[1:])
    if os.path.exists(os.path.join(alb.dbdir, "filler")):
        os.unlink(os.path.join(alb.dbdir, "filler"))
    else:  # already full without it: make room
        subprocess.run(["mount", "-o", "remount,size=1m", alb.dbdir], check=True)
    wait_for(lambda: created[0] not in alb.state_names(), what="state written after space was freed")
    assert not [f for f in os.listdir(alb.dbdir) if f.startswith("state.destroyed.")]
    check(alb, set(created[1:]), {created[0], *refused})
    alb.stop(signal.SIGKILL)
    alb.start()
    check(alb, set(created[1:]), {created[0], *refused})


def test_read_only_dbdir(tmp_path, image):
    alb = Faulty(tmp_path)
    alb.start_stub()
    alb.start()
    mounted = False
    try:
        alb.client("create", "a", image, "--arg", "forever")
        alb.client("add-policy", "p", "1", "--mem", "64", "--cpu", "0")
        _mount("--bind", alb.dbdir, alb.dbdir)
        mounted = True
        _mount("-o", "remount,bind,ro", alb.dbdir)
        p = alb.client("create", "b", image, "--arg", "forever", check=None)
        assert p.returncode != 0 and "failed to write the state: Read-only file system" in p.stdout, p.stdout
        p = alb.client("remove-policy", "-p", "p", check=None)
        assert p.returncode != 0 and "policy not changed" in p.stdout, p.stdout
        assert "p" in alb.client("policy", "-p", "p").stdout
        check(alb, {":a"}, {":b"})
        p = alb.client("destroy", "a", check=None)
        assert "destroyed unikernel, but failed to write the state" in p.stdout, p.stdout
        assert os.path.join(alb.tmpdir, "destroyed", ":a") in p.stdout
        alb.stop(signal.SIGKILL)
        alb.start()  # on the read-only dbdir
        assert alb.live_tenders() == {}
        assert "not restoring [unikernel: :a]" in alb.read_log()
        subprocess.run(["mount", "-o", "remount,bind,rw", alb.dbdir], check=True)
        wait_for(lambda: alb.state_names() == set(), what="state written once writable")
        check(alb, set(), {":a", ":b"})
    finally:
        if mounted:
            subprocess.run(["umount", "-l", alb.dbdir], check=False)
        alb.teardown()


# ------------------------------------------------------------------ corrupt state

def test_corrupt_state_starts_from_backup(tmp_path, image):
    alb = Faulty(tmp_path)
    alb.start_stub()
    alb.start()
    try:
        alb.client("create", "a", image, "--arg", "forever")
        alb.client("create", "b", image, "--arg", "forever")
        assert alb.stop() == 0
        with open(os.path.join(alb.dbdir, "state"), "wb") as fh:
            fh.write(b"\xa6\x03garbage")
        alb.start()
        log = alb.read_log()
        assert "CORRUPT STATE FILE" in log and "started from" in log
        kept = [f for f in os.listdir(alb.dbdir) if f.startswith("state.corrupt-")]
        assert len(kept) == 1 and f"kept as {os.path.join(alb.dbdir, kept[0])}" in log
        assert open(os.path.join(alb.dbdir, kept[0]), "rb").read() == b"\xa6\x03garbage"
        check(alb, {":a"})  # state.bak: the state before the last write (b's create)
        decode_state(open(os.path.join(alb.dbdir, "state"), "rb").read())
    finally:
        alb.teardown()


def test_corrupt_state_and_backup_refused_with_instructions(tmp_path):
    alb = Faulty(tmp_path)
    alb.start_stub()
    for f in ("state", "state.bak"):
        with open(os.path.join(alb.dbdir, f), "wb") as fh:
            fh.write(b"\xa6\x03garbage")
    try:
        p = alb.start(wait=False)
        assert p.wait(30) != 0
        log = alb.read_log()
        assert "bailing out" in log and "To recover:" in log and "state.started" in log
        assert open(os.path.join(alb.dbdir, "state"), "rb").read() == b"\xa6\x03garbage"
        assert not os.path.exists(alb.sock)
    finally:
        alb.teardown()

