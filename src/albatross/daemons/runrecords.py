"""What albatrossd keeps on disk about itself, so that exactly one supervisor
runs per database directory and a new instance finds what a crashed one left.

* :class:`DaemonLock` -- an exclusive ``flock`` on ``DBDIR/albatrossd.lock``
  (holding the pid and the tmpdir of the holder).  The kernel drops the lock
  when its holder dies, so a stale file never blocks a start.
* :class:`Records` -- one small JSON file per unikernel being created or
  running, ``TMPDIR/tenders/NAME.rec``, written (atomically) *before* each effect
  it describes: before the first file or tap of a create exists, before each
  tap is added, before the tender is spawned (with the inode of its console
  fifo) and after (with its pid and its start time from ``/proc/PID/stat``).
  It is removed once the unikernel's resources are freed.  The records live in
  the tmpdir (a tmpfs, like the tenders and taps they describe, gone at
  reboot): a full or read-only dbdir does not stop a tender from being
  recorded.
* :func:`reconcile` -- at start, before restoring: stop every tender a
  record names (pid *and* start time must match, so a reused pid is never
  signalled; SIGTERM, then SIGKILL after a bound), remove its taps (unless a
  live process holds them), its fifo and image, and the record.  Leftover
  tenders are restarted from the state file, not adopted: a new albatrossd
  cannot wait for the exit status of a process that is not its child.
* Tombstones -- ``DBDIR/state.destroyed.NAME`` (or, if the dbdir refuses,
  ``TMPDIR/destroyed/NAME``): an empty file created when a destroy
  killed a tender but the state file could not be written; the unikernel is
  not restored at the next start.  Every successful state write removes them.
* :class:`CrashPoints` -- test-only fault injection: with
  ``ALBATROSSD_CRASH_FILE`` set, the daemon counts the effect boundaries it
  passes while that file holds a positive number and SIGKILLs itself at the
  boundary where the count reaches zero.  Unset (production) it does nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import signal
import time
from dataclasses import asdict, dataclass, field

from .common import StartupError

log = logging.getLogger("albatross.vmmd")

LOCK_FILE = "albatrossd.lock"
RECORDS_DIR = "tenders"
RECORD_SUFFIX = ".rec"  # temporary files end in .tmp: no unikernel name makes one look like the other
TOMBSTONE_PREFIX = "state.destroyed."
TOMBSTONE_DIR = "destroyed"


# --------------------------------------------------------------------------
# small file helpers
# --------------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` via a fsynced temporary file renamed over it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain anything
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return None
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


# --------------------------------------------------------------------------
# One supervisor per dbdir
# --------------------------------------------------------------------------

class DaemonLock:
    """The exclusive lock on ``DBDIR/albatrossd.lock`` (kept until the process ends)."""

    def __init__(self, fd: int, path: str, previous_tmpdir: str | None):
        self.fd = fd
        self.path = path
        #: the tmpdir the previous holder recorded (None if unknown)
        self.previous_tmpdir = previous_tmpdir

    @staticmethod
    def _read(fd: int) -> tuple[int | None, str | None]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            return None, None
        first, _, rest = text.partition("\n")
        try:
            pid = int(first.strip())
        except ValueError:
            pid = None
        tmpdir = rest.strip() or None
        return pid, tmpdir

    @classmethod
    def acquire(cls, dbdir: str, tmpdir: str) -> "DaemonLock":
        """Take the lock or raise StartupError("albatrossd already running on DBDIR (pid N)")."""
        path = os.path.join(dbdir, LOCK_FILE)
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES):
                raise StartupError(f"cannot open lock file {path}: {e.strerror}") from None
            try:  # a read-only dbdir: flock works on a read-only descriptor too
                fd = os.open(path, os.O_RDONLY | flags)
            except OSError:
                raise StartupError(f"cannot create lock file {path}: {e.strerror}") from None
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid, _ = cls._read(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f"pid {pid}" if pid is not None else "pid unknown"
                raise StartupError(f"albatrossd already running on {dbdir} ({who})") from None
            raise StartupError(f"cannot lock {path}: {e.strerror}") from None
        _, previous = cls._read(fd)
        if writable:
            data = f"{os.getpid()}\n{tmpdir}\n".encode()
            try:
                # overwrite in place (no new block needed on a full disk), then cut
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            except OSError as e:
                log.warning("could not write the pid into %s: %s", path, e.strerror)
        else:
            log.warning("%s is read-only: the lock is held, but the file names an old pid", dbdir)
        return cls(fd, path, previous)


# --------------------------------------------------------------------------
# Tender records
# --------------------------------------------------------------------------

@dataclass
class TenderRecord:
    """What a create did so far, in the order it did it."""

    name: str                      # Name.to_string()
    image: str                     # paths to remove
    fifo: str
    boot_id: str = ""
    taps: list[str] = field(default_factory=list)   # added before each tap is created
    fifo_inode: list[int] | None = None   # (st_dev, st_ino), written right before the spawn
    pid: int | None = None
    start: int | None = None       # /proc/PID/stat start time of ``pid``

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> "TenderRecord":
        d = json.loads(data)
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError("not a tender record")
        return cls(name=d["name"], image=str(d["image"]), fifo=str(d["fifo"]), boot_id=str(d.get("boot_id", "")),
                   taps=[str(t) for t in d.get("taps") or []],
                   fifo_inode=list(d["fifo_inode"]) if d.get("fifo_inode") else None,
                   pid=d.get("pid"), start=d.get("start"))


class Records:
    """The record files in ``TMPDIR/tenders``."""

    def __init__(self, tmpdir: str):
        self.dir = os.path.join(tmpdir, RECORDS_DIR)

    def ensure(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name + RECORD_SUFFIX)

    def write(self, rec: TenderRecord) -> None:
        """Raises OSError."""
        self.ensure()
        write_atomically(self.path(rec.name), rec.encode())

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("could not remove tender record %s: %s", self.path(name), e.strerror)

    def load(self) -> list[tuple[str, TenderRecord | None]]:
        """(file, record or None if unreadable) for every record file."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out: list[tuple[str, TenderRecord | None]] = []
        for f in names:
            path = os.path.join(self.dir, f)
            if f.endswith(".tmp"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            if not f.endswith(RECORD_SUFFIX):
                continue
            try:
                with open(path, "rb") as fh:
                    out.append((path, TenderRecord.decode(fh.read())))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("unreadable tender record %s: %s", path, e)
                out.append((path, None))
        return out


# --------------------------------------------------------------------------
# Tombstones
# --------------------------------------------------------------------------

def tombstone_paths(dbdir: str, tmpdir: str, name: str) -> tuple[str, str]:
    return (os.path.join(dbdir, TOMBSTONE_PREFIX + name),
            os.path.join(tmpdir, TOMBSTONE_DIR, name))


def write_tombstone(dbdir: str, tmpdir: str, name: str) -> tuple[str | None, str | None]:
    """An empty file marking ``name`` destroyed: (path written or None, error of the dbdir attempt).

    An empty file needs no data block, so this usually works on a full disk;
    on a read-only dbdir the tmpdir copy is used (it survives a crash, not a reboot).
    """
    primary, fallback = tombstone_paths(dbdir, tmpdir, name)
    errors = []
    for path in (primary, fallback):
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
            _fsync_dir(os.path.dirname(path))
            return path, (errors[0] if errors else None)
        except OSError as e:
            errors.append(f"{path}: {e.strerror}")
    return None, "; ".join(errors)


def tombstones(dbdir: str, tmpdirs: list[str]) -> dict[str, str]:
    """name -> tombstone path, from the dbdir and the given tmpdirs."""
    found: dict[str, str] = {}
    try:
        for f in os.listdir(dbdir):
            if f.startswith(TOMBSTONE_PREFIX):
                found[f[len(TOMBSTONE_PREFIX):]] = os.path.join(dbdir, f)
    except OSError:
        pass
    for tmpdir in tmpdirs:
        d = os.path.join(tmpdir, TOMBSTONE_DIR)
        try:
            for f in os.listdir(d):
                found.setdefault(f, os.path.join(d, f))
        except OSError:
            pass
    return found


def clear_tombstones(dbdir: str, tmpdirs: list[str]) -> None:
    """After a successful state write: the file on disk is the truth again."""
    for path in tombstones(dbdir, tmpdirs).values():
        try:
            os.unlink(path)
        except OSError as e:
            log.warning("could not remove tombstone %s: %s", path, e.strerror)


# --------------------------------------------------------------------------
# Reconciliation at start
# --------------------------------------------------------------------------

def _wait_fd(fd: int, timeout: float) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


def stop_process(pid: int, start: int, term_timeout: float = 5.0, kill_timeout: float = 5.0) -> str | None:
    """Stop ``pid`` if it is still the process that started at ``start``; how it ended, or None."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        # the pidfd pins the process: check it is still the one we recorded
        if proc_start_time(pid) != start:
            return None
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if _wait_fd(pidfd, term_timeout):
            return "SIGTERM"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if _wait_fd(pidfd, kill_timeout):
            return "SIGKILL"
        return "SIGKILL (still not gone)"
    except ProcessLookupError:
        return None
    finally:
        os.close(pidfd)


def processes_on(inode: tuple[int, int]) -> list[tuple[int, int]]:
    """(pid, start) of processes whose stdin/stdout/stderr is the file ``inode`` (st_dev, st_ino)."""
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        for fd in (1, 2, 0):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == inode:
                start = proc_start_time(pid)
                if start is not None:
                    out.append((pid, start))
                break
    return out


def _tap_in_use(tap: str) -> bool:
    """Whether a process holds the tap open (its carrier is up)."""
    try:
        with open(f"/sys/class/net/{tap}/carrier") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


def _tap_exists(tap: str) -> bool:
    return os.path.exists(f"/sys/class/net/{tap}")


def reconcile(records: list[Records], destroy_tap, term_timeout: float = 5.0) -> list[str]:
    """Stop and remove what the records of a previous instance name; returns log lines."""
    lines: list[str] = []
    this_boot = boot_id()
    for rs in records:
        for path, rec in rs.load():
            if rec is None:
                _unlink(path)
                continue
            done = []
            same_boot = rec.boot_id == this_boot
            if same_boot:
                victims: list[tuple[int, int]] = []
                if rec.pid is not None and rec.start is not None:
                    victims.append((rec.pid, rec.start))
                elif rec.fifo_inode is not None:
                    # killed between the spawn and recording its pid: the tender is
                    # the process writing to the very fifo inode created for it
                    victims.extend(processes_on((rec.fifo_inode[0], rec.fifo_inode[1])))
                for pid, start in victims:
                    how = stop_process(pid, start, term_timeout)
                    if how is not None:
                        done.append(f"stopped tender pid {pid} ({how})")
                for tap in rec.taps:
                    if not _tap_exists(tap):
                        continue
                    if _tap_in_use(tap):
                        lines.append(f"{rec.name}: not removing {tap}: a live process holds it")
                        continue
                    try:
                        destroy_tap(tap)
                        done.append(f"removed {tap}")
                    except Exception as e:  # noqa: BLE001 - report and go on
                        lines.append(f"{rec.name}: could not remove {tap}: {getattr(e, 'message', e)}")
            for f in (rec.fifo, rec.image):
                if _unlink(f):
                    done.append(f"removed {f}")
            _unlink(path)
            if done:
                lines.append(f"reclaimed from a previous albatrossd: {rec.name}: " + ", ".join(done))
    return lines


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        log.error("could not remove %s: %s", path, e.strerror)
        return False


# --------------------------------------------------------------------------
# Test-only fault injection
# --------------------------------------------------------------------------

CRASH_ENV = "ALBATROSSD_CRASH_FILE"


class CrashPoints:
    """``crash(label)`` at each effect boundary; SIGKILL when the armed count runs out.

    The file named by ``$ALBATROSSD_CRASH_FILE`` holds a count k: each boundary
    decrements it, the k-th kills the process (after writing its label to
    FILE.hit).  Every boundary passed while armed is appended to FILE.log.
    Without the variable (production) every call returns at once.
    """

    def __init__(self, path: str | None):
        self.path = path or None

    @classmethod
    def from_env(cls) -> "CrashPoints":
        return cls(os.environ.get(CRASH_ENV))

    def __call__(self, label: str) -> None:
        if self.path is None:
            return
        try:
            with open(self.path) as fh:
                n = int(fh.read().strip() or "0")
        except (OSError, ValueError):
            return
        if n <= 0:
            return
        with open(self.path + ".log", "a") as fh:
            fh.write(label + "\n")
        if n == 1:
            with open(self.path + ".hit", "w") as fh:
                fh.write(label + "\n")
            os.unlink(self.path)
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # never reached
        with open(self.path, "w") as fh:
            fh.write(str(n - 1))


__all__ = ["DaemonLock", "TenderRecord", "Records", "reconcile", "write_tombstone", "tombstones",
           "clear_tombstones", "CrashPoints", "proc_start_time", "stop_process", "boot_id"]
