"""The lock, tender records, tombstones and reconciliation of albatrossd (daemons/runrecords.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from albatross.daemons import runrecords as R
from albatross.daemons.common import StartupError


def test_lock_excludes_and_names_the_holder(tmp_path):
    lock = R.DaemonLock.acquire(str(tmp_path), "/run/x")
    with open(tmp_path / "albatrossd.lock") as fh:
        assert fh.read() == f"{os.getpid()}\n/run/x\n"
    with pytest.raises(StartupError) as e:
        R.DaemonLock.acquire(str(tmp_path), "/run/y")
    assert e.value.message == f"albatrossd already running on {tmp_path} (pid {os.getpid()})"
    with open(tmp_path / "albatrossd.lock") as fh:  # the refused one changed nothing
        assert fh.read() == f"{os.getpid()}\n/run/x\n"
    os.close(lock.fd)  # what the kernel does when the holder dies
    again = R.DaemonLock.acquire(str(tmp_path), "/run/y")
    assert again.previous_tmpdir == "/run/x"
    os.close(again.fd)


def test_lock_fd_not_inherited(tmp_path):
    lock = R.DaemonLock.acquire(str(tmp_path), "/t")
    assert not os.get_inheritable(lock.fd)
    os.close(lock.fd)


def test_record_round_trip(tmp_path):
    rs = R.Records(str(tmp_path))
    rec = R.TenderRecord(":a", "/t/:a.img", "/t/fifo/:a", "boot", ["vmmtap3"], [1, 2], 77, 99)
    rs.write(rec)
    assert rs.load() == [(rs.path(":a"), rec)]
    (tmp_path / "tenders" / ":junk.rec").write_bytes(b"{not json")
    loaded = dict(rs.load())
    assert loaded[rs.path(":junk")] is None
    rs.remove(":a")
    rs.remove(":a")
    assert rs.path(":a") not in dict(rs.load())


def test_proc_start_time_and_stop_process_checks_identity():
    p = subprocess.Popen(["sleep", "600"])
    try:
        start = R.proc_start_time(p.pid)
        assert isinstance(start, int) and start > 0
        assert R.stop_process(p.pid, start + 1) is None  # another process with that pid: untouched
        assert p.poll() is None
        assert R.stop_process(p.pid, start, term_timeout=10) == "SIGTERM"
        assert p.wait(10) == -15
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_reconcile_removes_files_and_records(tmp_path):
    rs = R.Records(str(tmp_path))
    img, fifo = tmp_path / ":a.img", tmp_path / ":a"
    img.write_bytes(b"x")
    os.mkfifo(fifo)
    p = subprocess.Popen(["sleep", "600"])
    try:
        rs.write(R.TenderRecord(":a", str(img), str(fifo), R.boot_id(), [], None, p.pid, R.proc_start_time(p.pid)))
        destroyed = []
        lines = R.reconcile([rs], destroyed.append)
        assert p.wait(10) == -15
        assert not img.exists() and not fifo.exists() and rs.load() == []
        assert lines == [f"reclaimed from a previous albatrossd: :a: stopped tender pid {p.pid} (SIGTERM), "
                         f"removed {fifo}, removed {img}"]
        assert destroyed == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_reconcile_finds_tender_by_fifo_inode(tmp_path):
    """Killed between spawn and recording the pid: the process writing to that fifo inode."""
    rs = R.Records(str(tmp_path))
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(fifo, os.O_WRONLY)
    p = subprocess.Popen(["sleep", "600"], stdout=wfd, stderr=wfd)
    os.close(wfd)
    other = subprocess.Popen(["sleep", "600"])  # not on the fifo: untouched
    try:
        st = os.stat(fifo)
        rs.write(R.TenderRecord(":b", str(tmp_path / "img"), str(fifo), R.boot_id(), [], [st.st_dev, st.st_ino]))
        R.reconcile([rs], lambda tap: None)
        assert p.wait(10) == -15
        assert other.poll() is None
    finally:
        os.close(rfd)
        for q in (p, other):
            if q.poll() is None:
                q.kill()
                q.wait()


def test_tombstones(tmp_path):
    db, tmp = tmp_path / "db", tmp_path / "run"
    db.mkdir()
    tmp.mkdir()
    path, err = R.write_tombstone(str(db), str(tmp), ":a")
    assert path == str(db / "state.destroyed.:a") and err is None
    os.mkdir(db / "state.destroyed.:b")  # the dbdir refuses this one: the tmpdir gets it
    path, err = R.write_tombstone(str(db), str(tmp), ":b")
    assert path == str(tmp / "destroyed" / ":b") and "state.destroyed.:b" in err
    os.rmdir(db / "state.destroyed.:b")
    assert R.tombstones(str(db), [str(tmp)])[":b"] == str(tmp / "destroyed" / ":b")
    R.clear_tombstones(str(db), [str(tmp)])
    assert R.tombstones(str(db), [str(tmp)]) == {}


def test_crash_points_inert_without_file(tmp_path):
    R.CrashPoints(None)("anything")
    cp = R.CrashPoints(str(tmp_path / "c"))
    cp("no file: nothing")
    (tmp_path / "c").write_text("3")
    cp("one")
    cp("two")
    assert (tmp_path / "c").read_text() == "1"
    assert (tmp_path / "c.log").read_text() == "one\ntwo\n"
