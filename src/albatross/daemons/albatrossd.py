"""albatrossd: the privileged daemon that creates and supervises unikernels.

This is the asyncio shell around :mod:`.vmmd_core`: it owns the sockets,
the tender processes, the files (images, fifos, block devices, the state
file) and the tap devices, executes the core's effects and feeds results
back (behaviour.md §2, wire.md §5.2).

A single :class:`asyncio.Lock` serialises command evaluation, unikernel
creation (including the console and stats round trips) and exit handling,
as upstream's ``create_lock``; waiting for a unikernel to exit happens
outside of it.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import stat
import tempfile
import termios
import time
import zlib
from dataclasses import dataclass

import click

from ..core import Ptime, UnikernelConfig
from ..errors import AlbatrossError, DecodeError, FrameError
from ..policy.names import ROOT, Name, path_of_string
from ..solo5 import elf, taps as taps_mod, tender as tender_mod
from ..wire import messages as m
from ..wire.framing import END
from ..wire.messages import Header, Wire
from ..wire import inflate as Z
from ..wire import encode_wire, frame
from ..wire.state import State, decode_state, encode_state
from . import host, limits, safefs
from . import runrecords as R
from . import vmmd_core as V
from .common import (
    run_cli,
    Conn, StartupError, daemon_options, default_dbdir, open_unix, sd_notify, service_socket,
    setup_logging, socket_path,
)
from .metrics import influx_option, resource_lines, run_with_metrics
from .vmmd_core import ExitStatus, Spawned, Vmmd

log = logging.getLogger("albatross.vmmd")

CHUNK = 4096
CONSOLE_FAILED = "could not create unikernel: console failed"
#: seconds albatross-console may take to answer (the lock is held meanwhile)
CONSOLE_TIMEOUT = 10.0
#: seconds albatross-stats may take to answer one message (never under the lock)
STATS_TIMEOUT = 5.0
#: stats messages queued for albatross-stats before a peer that lags is dropped
STATS_BACKLOG = 10_000
#: payloads whose evaluation may inflate or deflate up to an image or a block:
#: evaluated in a thread so that the event loop keeps serving
HEAVY = (m.UnikernelGet, m.UnikernelRestart, m.UnikernelCreate, m.OldBlockAdd, m.OldBlockSet)
#: console lines logged for a tender dying within Settings.early_exit seconds
EARLY_EXIT_LINES = 10


class CreateError(AlbatrossError):
    """Preparing or starting a unikernel failed; the message is the failure reply."""


@dataclass(frozen=True)
class Settings:
    tmpdir: str
    dbdir: str
    drop_path: bool = True
    max_image_size: int = Z.DEFAULT_MAX_IMAGE
    early_exit: float = 1.0  # a tender dying this soon is logged with its console's tail

    def image_path(self, name: Name) -> str:
        return os.path.join(self.tmpdir, name.image_file())

    def fifo_path(self, name: Name) -> str:
        return os.path.join(self.tmpdir, "fifo", name.fifo_file())

    def block_path(self, name: Name) -> str:
        return os.path.join(self.dbdir, "block", name.to_string())

    @property
    def state_path(self) -> str:
        return os.path.join(self.dbdir, "state")

    @property
    def records(self) -> R.Records:
        return R.Records(self.tmpdir)


@dataclass
class Prepared:
    tender: str
    abi_version: int
    digest: bytes
    taps: list[str]


# --------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------

def write_state(dbdir: str, state: State, data: bytes | None = None) -> None:
    """Write ``dbdir/state`` crash-safely, keeping the previous one as ``state.bak``.

    The new content goes to a temporary file which is fsynced; the old state
    is hard-linked to ``state.bak`` (so ``state`` never disappears) and the
    temporary file is renamed over ``state``; finally the directory is fsynced.
    A crash at any point leaves ``state`` holding the old or the new content.
    ``data``: the encoded ``state`` if the caller has it already.
    """
    data = encode_state(state) if data is None else data
    path = os.path.join(dbdir, "state")
    fd, tmp = tempfile.mkstemp(prefix="state.", suffix=".tmp", dir=dbdir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if os.path.exists(path):
            bak_tmp = tmp + ".bak"
            os.link(path, bak_tmp)
            os.replace(bak_tmp, os.path.join(dbdir, "state.bak"))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + ".bak"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise
    dfd = os.open(dbdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_state(dbdir: str) -> State | None:
    """The stored state; None if there is none; AlbatrossError if unreadable."""
    try:
        with open(os.path.join(dbdir, "state"), "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AlbatrossError(f"while reading state: {e}") from None
    try:
        return decode_state(data)
    except AlbatrossError as e:
        raise AlbatrossError(f"couldn't parse state: {e.message}") from None


def load_state(dbdir: str) -> tuple[State | None, bytes | None]:
    """The stored state (and its bytes), recovering from a corrupt ``state``.

    A ``state`` that cannot be decoded is renamed to ``state.corrupt-<UTC time>``
    (kept for inspection) and ``state.bak`` -- the state before the last write --
    is decoded and written as ``state``, with a loud error; the last command
    before the corruption may thus be undone.  If there is no usable
    ``state.bak`` either, StartupError says how to recover by hand.
    """
    try:
        state = read_state(dbdir)
    except AlbatrossError as e:
        path = os.path.join(dbdir, "state")
        bak = os.path.join(dbdir, "state.bak")
        try:
            with open(bak, "rb") as fh:
                bak_data = fh.read()
            bak_state = decode_state(bak_data)
        except (OSError, AlbatrossError) as e2:
            why = e2.message if isinstance(e2, AlbatrossError) else (e2.strerror or str(e2))
            raise StartupError(
                f"bailing out: {e.message} ({path}); no usable {bak} either ({why}). To recover: move {path} "
                f"away (mv {path} {path}.corrupt) and put a good copy in its place (e.g. {dbdir}/state.started, "
                f"written at the previous start: cp {dbdir}/state.started {path}), or start with no unikernels "
                f"(the policies are lost too), then start albatrossd again") from None
        kept = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        try:
            os.rename(path, kept)
            write_state(dbdir, bak_state, bak_data)
        except OSError as e3:
            raise StartupError(
                f"bailing out: {e.message} ({path}), and recovering from {bak} failed: {e3.strerror}. To recover: "
                f"cp {bak} {path} on a writable {dbdir}, then start albatrossd again") from None
        log.critical("CORRUPT STATE FILE: %s (%s); kept as %s for inspection; started from %s instead "
                     "(%d unikernels, %d policies): the last change before the corruption may be lost",
                     path, e.message, kept, bak, len(bak_state.unikernels), len(bak_state.policies))
        return bak_state, bak_data
    if state is None:
        return None, None
    try:
        with open(os.path.join(dbdir, "state"), "rb") as fh:
            return state, fh.read()
    except OSError:
        return state, None


def backup_state(dbdir: str) -> None:
    src = os.path.join(dbdir, "state")
    if os.path.exists(src):
        try:
            shutil.copyfile(src, os.path.join(dbdir, "state.started"))
            log.info("backing up state to state.started")
        except OSError as e:
            log.error("backing up state failed: %s", e)


# --------------------------------------------------------------------------
# Preparing and freeing system resources (blocking; run in a thread)
# --------------------------------------------------------------------------

def _image_of(config: UnikernelConfig, max_size: int = Z.DEFAULT_MAX_IMAGE) -> bytes:
    if not config.compressed:
        if len(config.image) > max_size:
            raise CreateError(f"image exceeds the maximum of {max_size} bytes (--max-image-size)")
        return config.image
    try:
        return Z.inflate(config.image, max_size, "image")
    except Z.InflateError as e:
        raise CreateError(e.message) from None


def make_fifo(path: str) -> None:
    """Create the console fifo (0640: albatross-console reads it through the group).

    An existing entry is used only if it is a fifo owned by root (``lstat``:
    a symlink is refused); the open in :func:`spawn_tender` checks again.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        old = os.umask(0)
        os.umask(old & 0o707)
        try:
            os.mkfifo(path, 0o640)
        finally:
            os.umask(old)
        return
    if not stat.S_ISFIFO(st.st_mode):
        raise CreateError(f"file {path} exists and is not a fifo")
    if st.st_uid not in safefs.trusted_uids():
        raise CreateError(f"fifo {path} exists and is not owned by root")


def free_system_resources(settings: Settings, name: Name, taps: list[str] | tuple[str, ...]) -> None:
    """Delete image and fifo, destroy the taps; raises CreateError listing what failed."""
    problems = []
    for path in (settings.image_path(name), settings.fifo_path(name)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"failed to remove {path}: {e.strerror}")
    for tap in taps:
        try:
            taps_mod.destroy_tap(tap)
        except AlbatrossError as e:
            problems.append(e.message)
    if problems:
        raise CreateError(", ".join(problems))


def prepare(settings: Settings, name: Name, config: UnikernelConfig, reserve_tap=None) -> Prepared:
    """Image, tender, manifest, bridges, fifo and taps for a Solo5 unikernel (§2.4 step 3).

    ``reserve_tap(name)`` is called before each tap is created (to record it; may raise OSError).
    """
    if config.typ != "solo5":
        raise CreateError("BHyve virtual machines are only supported on FreeBSD")
    try:
        image = _image_of(config, settings.max_image_size)
        digest = hashlib.sha256(image).digest()
        abi = elf.query_abi(image)
        tender = tender_mod.find_tender(abi.target, abi.version, settings.dbdir)
        tender_mod.check_tender_version(tender, abi.version)
        elf.check_manifest(elf.query_manifest(image), config)
    except elf.Solo5Error as e:
        raise CreateError(e.message) from None
    # a fresh 0600 file renamed into place: neither the umask nor a planted symlink matter
    safefs.write_file_atomic(settings.image_path(name), image)
    created: list[str] = []
    try:
        for bridge in config.host_bridges():
            if not taps_mod.bridge_exists(bridge):
                raise CreateError(f"interface {bridge} does not exist")
        make_fifo(settings.fifo_path(name))
        for bridge in config.host_bridges():
            created.append(taps_mod.create_tap(bridge, reserve_tap))
    except (AlbatrossError, OSError) as e:
        try:
            free_system_resources(settings, name, created)
        except CreateError as e2:
            log.error("cleanup after failed prepare: %s", e2.message)
        raise CreateError(e.message if isinstance(e, AlbatrossError) else str(e)) from None
    return Prepared(tender, abi.version, digest, created)


def spawn_tender(argv: list[str], fifo: str) -> int:
    """Spawn ``argv`` with stdin, stdout and stderr all on the fifo opened write-only.

    The console has the fifo open for reading already (console add came
    first), so opening does not block; without a reader it fails (ENXIO).
    The tender gets a blocking descriptor, as upstream's.
    """
    try:
        fd = safefs.open_checked(fifo, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK, "fifo")
    except safefs.UnsafePath as e:
        raise CreateError(e.message) from None
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.posix_spawn(
            argv[0], argv, os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1),
                          (os.POSIX_SPAWN_DUP2, fd, 2)],
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            setsigmask=(),
        )
    finally:
        os.close(fd)


def fifo_pending(fd: int) -> int:
    """Bytes waiting in the pipe/fifo ``fd``."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


def status_of_wait(status: int) -> ExitStatus:
    if os.WIFEXITED(status):
        return ExitStatus("exit", os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return ExitStatus("signal", os.WTERMSIG(status))
    if os.WIFSTOPPED(status):
        return ExitStatus("stop", os.WSTOPSIG(status))
    return ExitStatus("exit", 23)


# --------------------------------------------------------------------------
# Block device files (blocking; small and done under the lock like upstream)
# --------------------------------------------------------------------------

def _block_dir(settings: Settings) -> str:
    d = os.path.join(settings.dbdir, "block")
    try:
        safefs.ensure_dir(d, "block device directory")
    except safefs.UnsafePath as e:
        raise CreateError(e.message) from None
    return d


def open_block_file(settings: Settings, name: Name, flags: int = os.O_RDONLY) -> int:
    """Open an existing block file: a regular file owned by root, never through a symlink."""
    _block_dir(settings)
    try:
        return safefs.open_checked(settings.block_path(name), flags)
    except safefs.UnsafePath as e:
        raise CreateError(e.message) from None


def create_block_file(settings: Settings, name: Name, size: int, data: bytes | None = None,
                      exclusive: bool = True) -> None:
    _block_dir(settings)
    path = settings.block_path(name)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = safefs.open_checked(path, flags, mode=0o600)
    except FileExistsError:
        raise CreateError("file already exists") from None
    except safefs.UnsafePath as e:
        raise CreateError(e.message) from None
    try:
        if data:
            os.write(fd, data)
        os.ftruncate(fd, V.bytes_of_mb(size))
    finally:
        os.close(fd)


def remove_block_file(settings: Settings, name: Name) -> None:
    try:
        os.unlink(settings.block_path(name))
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------

class Daemon:
    def __init__(self, settings: Settings, core: Vmmd, console: Conn):
        self.settings = settings
        self.core = core
        self.console = console
        self.stats: Conn | None = None
        # a read end of every running unikernel's fifo, so that a tender never gets
        # EPIPE/SIGPIPE while albatross-console is restarted (it blocks instead)
        self.fifo_keepers: dict[Name, int] = {}
        self.lock = asyncio.Lock()
        self.futures: dict[int, asyncio.Future] = {}
        self.server: asyncio.base_events.Server | None = None
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.taskset = shutil.which("taskset") or "taskset"
        self.shutting_down = False
        # stats messages go out from a queue, outside the lock (see send_stats)
        self.stats_queue: asyncio.Queue[tuple[Conn, Wire]] = asyncio.Queue()
        self.stats_worker: asyncio.Task | None = None
        self.records = settings.records
        #: test-only fault injection (a no-op unless $ALBATROSSD_CRASH_FILE is set)
        self.crash = R.CrashPoints.from_env()
        #: the bytes of the state file on disk, as far as this daemon knows
        self.written: bytes | None = None
        #: a state write failed: retry (retry_dump) until one succeeds
        self.dump_pending = False
        #: tmpdirs whose tombstones count (ours and the previous instance's)
        self.tombstone_dirs = [settings.tmpdir]
        self.have_tombstones = False

    def spawn_task(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- round trips with console and stats ----------------------------------------
    @staticmethod
    async def _round_trip(conn: Conn, request: Wire, timeout: float = CONSOLE_TIMEOUT) -> str | None:
        """Send ``request``, await the reply with the same sequence; None or an error text.

        A peer that takes more than ``timeout`` seconds (to take the request or
        to answer) is a communication failure: it never holds the caller forever.
        """
        try:
            # asyncio.timeout, not wait_for: wait_for of 3.11 may swallow a cancellation
            async with asyncio.timeout(timeout):
                await conn.write_wire(request)
                reply = await conn.read_wire()
        except TimeoutError:
            return f"communication failure: no answer within {timeout:g} s"
        except (OSError, AlbatrossError) as e:
            return f"communication failure: {e}"
        if reply is None:
            return "communication failure"
        if reply.header.sequence != request.header.sequence:
            return "wrong sequence number received"
        if isinstance(reply.payload, m.Failure):
            return reply.payload.message
        if not isinstance(reply.payload, m.Reply):
            return "unexpected data"
        return None

    async def console_add(self, name: Name) -> str | None:
        """Register ``name`` with albatross-console; None or an error text.

        Unlike upstream, a console connection that broke (albatross-console was
        restarted) is opened again, so creates keep working without restarting
        albatrossd (see also :meth:`watch_console`).
        """
        err = await self._round_trip(self.console, self.core.console_add(name))
        if err is None or not err.startswith("communication failure"):
            return err
        err = await self._reconnect_console()
        if err is not None:
            return err
        return await self._round_trip(self.console, self.core.console_add(name))

    async def _reconnect_console(self) -> str | None:
        """Open the console connection again and re-register every running unikernel."""
        path = socket_path(self.settings.tmpdir, "console")
        self.console.close()
        try:
            self.console = await open_unix(path)
        except OSError as e:
            return f"reconnecting to {path} failed: {e}"
        log.warning("reconnected to albatross-console")
        for running in list(self.fifo_keepers):
            err = await self._round_trip(self.console, self.core.console_add(running))
            if err is not None:
                log.error("console add for %s failed: %s", running.pretty(), err)
        return None

    async def watch_console(self, interval: float = 1.0) -> None:
        """Notice a lost console connection while idle and reconnect, so that the
        output of running unikernels is read again soon after albatross-console restarts."""
        while True:
            await asyncio.sleep(interval)
            if self.console.reader.at_eof():
                async with self.lock:
                    if self.console.reader.at_eof():
                        err = await self._reconnect_console()
                        if err is not None:
                            log.warning("albatross-console is gone: %s", err)

    async def send_stats(self, wire: Wire) -> None:
        """Queue ``wire`` for albatross-stats; never waits for it.

        Unlike upstream, which awaits each reply under its lock, the messages
        go out in order from :meth:`_stats_sender`: a stats peer that stalls
        (any local client may send ``Stats_initial``) cannot freeze albatrossd.
        It is dropped after :data:`STATS_TIMEOUT` seconds without an answer or
        :data:`STATS_BACKLOG` queued messages.
        """
        conn = self.stats
        if conn is None:
            log.info("ignoring stat %s", type(wire.payload).__name__)
            return
        if self.stats_queue.qsize() >= STATS_BACKLOG:
            self._drop_stats(conn, f"more than {STATS_BACKLOG} messages unanswered")
            return
        self.stats_queue.put_nowait((conn, wire))
        if self.stats_worker is None or self.stats_worker.done():
            self.stats_worker = asyncio.get_running_loop().create_task(self._stats_sender())

    def _drop_stats(self, conn: Conn, why: str) -> None:
        log.error("error while writing to stats: %s", why)
        conn.close()
        if self.stats is conn:
            self.stats = None

    async def _stats_sender(self) -> None:
        while True:
            conn, wire = await self.stats_queue.get()
            if conn is not self.stats:
                continue  # for a channel that was replaced or dropped
            err = await self._round_trip(conn, wire, STATS_TIMEOUT)
            if err is not None:
                self._drop_stats(conn, err)

    # -- effects --------------------------------------------------------------------------
    async def run(self, effects: list[V.Effect], conn: Conn | None = None) -> list[V.Effect]:
        """Carry out effects (caller holds the lock); returns those needing the lock released."""
        later: list[V.Effect] = []
        for eff in effects:
            if isinstance(eff, V.Reply):
                if conn is not None:
                    await self.write(conn, eff.wire)
            elif isinstance(eff, V.DumpState):
                err = self.dump(eff.state)
                self.crash("state written" if err is None else "state write failed")
                decision = None if err is None else self.core.dump_failed(eff, err)
                if decision is not None:
                    # the core's answer replaces the rest of this batch (the success reply)
                    later.extend(await self.run(decision, conn))
                    return later
            elif isinstance(eff, V.Tombstone):
                path, err = R.write_tombstone(self.settings.dbdir, self.settings.tmpdir, eff.name.to_string())
                self.have_tombstones = self.have_tombstones or path is not None
                await self.run(self.core.tombstone_done(eff, path, err), conn)
            elif isinstance(eff, V.RollBack):
                later.append(eff)
            elif isinstance(eff, V.PrepareAndSpawn):
                reply = await self.create(eff)
                if conn is not None and eff.reply is not None:
                    await self.write(conn, Wire(eff.reply, reply))
                if eff.reply is None and isinstance(reply, m.Failure):  # a restart failed
                    await self.run(self.core.restart_failed(eff.name, eff.config, reply.message,
                                                            time.monotonic()))
            elif isinstance(eff, V.Kill):
                self.kill(eff.name, eff.pid)
            elif isinstance(eff, V.AwaitExit):
                self.futures[eff.waiter] = asyncio.get_running_loop().create_future()
                later.append(eff)
            elif isinstance(eff, V.Cleanup):
                await self.cleanup(eff)
            elif isinstance(eff, V.StatsMessage):
                await self.send_stats(eff.wire)
            elif isinstance(eff, V.Wake):
                fut = self.futures.pop(eff.waiter, None)
                if fut is not None and not fut.done():
                    fut.set_result(eff.status)
            elif isinstance(eff, V.RestartDecision):
                self.spawn_task(self.restart_handler(eff))
            elif isinstance(eff, V.ScheduleRestart):
                self.spawn_task(self.delayed_restart(eff))
            elif isinstance(eff, V.AdoptStats):
                if self.stats is not None:
                    self.stats.close()
                self.stats = conn
                if conn is not None:
                    await self.write(conn, eff.reply)
                for w in eff.messages:
                    await self.send_stats(w)
            elif isinstance(eff, V.BlockIO):
                if eff.op in ("recv", "send"):
                    later.append(eff)
                else:
                    await self.run(await asyncio.to_thread(self.block_io, eff), conn)
            elif isinstance(eff, V.Loop):
                later.append(eff)
            self.crash(f"effect {type(eff).__name__}")
        return later

    @staticmethod
    async def write(conn: Conn, wire: Wire) -> None:
        """Queue a reply without waiting for the peer to take it (the lock may be held);
        :meth:`_serve` waits for it to drain, outside the lock, before reading on."""
        try:
            conn.writer.write(frame(encode_wire(wire)))
        except (OSError, RuntimeError, AlbatrossError) as e:
            log.warning("failed to write reply: %s", e)

    @staticmethod
    async def flush(conn: Conn) -> bool:
        """Wait (without the lock) until ``conn`` took its replies; False if it is gone."""
        try:
            await conn.writer.drain()
        except (OSError, RuntimeError) as e:
            log.info("failed to write reply: %s", e)
            return False
        return True

    def dump(self, state: State, quiet: bool = False) -> str | None:
        """Write the state file; None or what went wrong (then a retry is pending)."""
        data = encode_state(state)
        if data != self.written:
            try:
                write_state(self.settings.dbdir, state, data)
            except (OSError, AlbatrossError) as e:
                if isinstance(e, OSError):
                    msg = f"{e.strerror or e} ({self.settings.state_path})"
                else:
                    msg = e.message
                if not quiet:
                    log.error("failed to dump unikernels: %s", msg)
                self.dump_pending = True
                return msg
            self.written = data
            log.info("dumped current state")
        self.dump_pending = False
        if self.have_tombstones:
            # the file on disk is the truth again
            R.clear_tombstones(self.settings.dbdir, self.tombstone_dirs)
            self.have_tombstones = False
        return None

    async def retry_dump(self, interval: float = 1.0) -> None:
        """Write the state again after a failed write (disk full, read-only) until it works."""
        while True:
            await asyncio.sleep(interval)
            if self.dump_pending and not self.shutting_down:
                async with self.lock:
                    if self.dump_pending and not self.core.shutting_down:
                        if self.dump(self.core.state(), quiet=True) is None:
                            log.warning("state written after earlier failures")

    def kill(self, name: Name, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            log.warning("kill of %s failed: %s", name.pretty(), e.strerror)

    async def cleanup(self, eff: V.Cleanup) -> None:
        self._release_fifo(eff.name)
        try:
            await asyncio.to_thread(free_system_resources, self.settings, eff.name, eff.taps)
        except CreateError as e:
            log.error("%s while shutdown unikernel %s", e.message, eff.name.pretty())
        self.crash("cleanup: resources freed")
        self.records.remove(eff.name.to_string())

    # -- create ----------------------------------------------------------------------------
    async def create(self, eff: V.PrepareAndSpawn) -> m.Reply | m.Failure:
        """Create a unikernel (lock held); returns the reply payload."""
        name, config = eff.name, eff.config
        try:
            self.core.check_create(name, config)
        except AlbatrossError as e:
            log.error("failed to create %s: %s", name.pretty(), e.message)
            return m.Failure(e.message)
        # the tender record is written before each effect it describes (runrecords)
        rec = R.TenderRecord(name.to_string(), self.settings.image_path(name), self.settings.fifo_path(name),
                             R.boot_id())
        try:
            await asyncio.to_thread(self.records.write, rec)
        except OSError as e:
            self.core.create_failed(name)
            msg = f"could not create unikernel: writing the tender record failed: {e.strerror or e}"
            log.error("failed to create %s: %s", name.pretty(), msg)
            return m.Failure(msg)
        self.crash("create: record written")

        def reserve_tap(tap: str) -> None:  # in prepare's thread, before the tap exists
            rec.taps.append(tap)
            self.records.write(rec)
            self.crash(f"create: {tap} recorded")

        try:
            prepared = await asyncio.to_thread(prepare, self.settings, name, config, reserve_tap)
        except (AlbatrossError, OSError) as e:
            self.core.create_failed(name)
            self.records.remove(rec.name)
            msg = e.message if isinstance(e, AlbatrossError) else str(e)
            log.error("failed to create %s: %s", name.pretty(), msg)
            return m.Failure(msg)
        self.crash("create: prepared")
        err = await self.console_add(name)
        if err is not None:
            log.error("console add for %s failed: %s", name.pretty(), err)
            return await self._create_failed(name, prepared)
        self.crash("create: console added")
        try:
            self.core.recheck(name, config)
            st = os.stat(self.settings.fifo_path(name))
            rec.fifo_inode = [st.st_dev, st.st_ino]
            self.records.write(rec)
            self.crash("create: spawn recorded")
            pid = await self._exec(name, config, prepared)
        except (AlbatrossError, OSError) as e:
            log.error("create (exec) failed %s", e)
            return await self._create_failed(name, prepared)
        self.crash("create: spawned")
        watch = self._watch(pid)
        rec.pid, rec.start = pid, R.proc_start_time(pid)
        try:
            self.records.write(rec)
        except OSError as e:
            log.error("recording the tender of %s failed: %s", name.pretty(), e)
            await self._stop_spawned(name, pid, watch)
            return await self._create_failed(
                name, prepared, f"could not create unikernel: writing the tender record failed: {e.strerror or e}")
        self.crash("create: pid recorded")
        macs = tender_mod.macs_in_use(name, config)
        started = time.monotonic()
        proc = Spawned(pid, tuple(zip(prepared.taps, macs)), prepared.digest, Ptime.now(), started)
        try:
            effects = self.core.created(name, config, proc, eff.needs_dump, eff.reply)
        except AlbatrossError as e:
            log.error("create (accounting) failed %s", e.message)
            self.kill(name, pid)
            await watch
            return await self._create_failed(name, prepared)
        log.log(V.APP, "started %s: pid %d, taps %s, cpus %s, %d MB", name.pretty(), pid,
                ",".join(prepared.taps) or "none", ",".join(map(str, sorted(config.cpuids))), config.memory)
        later = await self.run(effects)
        rollback = next((e for e in later if isinstance(e, V.RollBack)), None)
        if rollback is not None:
            # the state could not be written: the core had the tender killed
            await self._stop_spawned(name, pid, watch, signalled=True)
            await self.run(self.core.rolled_back(name))
            log.error("create of %s rolled back: %s", name.pretty(), rollback.message)
            return m.Failure(rollback.message)
        self.spawn_task(self.exit_watcher(name, watch, started))
        return m.String("created unikernel")

    async def _stop_spawned(self, name: Name, pid: int, watch: asyncio.Future, signalled: bool = False,
                            bound: float = 10.0) -> ExitStatus:
        """Stop a tender whose exit is not watched yet: SIGTERM, SIGKILL after ``bound`` seconds."""
        if not signalled:
            self.kill(name, pid)
        try:
            return await asyncio.wait_for(asyncio.shield(watch), bound)
        except asyncio.TimeoutError:
            log.warning("%s did not stop within %.0fs, sending SIGKILL", name.pretty(), bound)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            return await watch

    async def _exec(self, name: Name, config: UnikernelConfig, prepared: Prepared) -> int:
        await asyncio.to_thread(tender_mod.check_tender_version, prepared.tender, prepared.abi_version)
        argv = tender_mod.tender_argv(
            name=name, config=config, tender=prepared.tender, taskset=self.taskset,
            image_path=self.settings.image_path(name), taps=prepared.taps, dbdir=self.settings.dbdir,
            drop_path=self.settings.drop_path)
        log.debug("executing %s", " ".join(argv))
        fifo = self.settings.fifo_path(name)
        pid = spawn_tender(argv, fifo)
        self._release_fifo(name)
        try:
            self.fifo_keepers[name] = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | safefs.SAFE_OPEN)
        except OSError as e:
            log.warning("could not keep %s open: %s", fifo, e)
        return pid

    def _release_fifo(self, name: Name) -> None:
        fd = self.fifo_keepers.pop(name, None)
        if fd is not None:
            os.close(fd)

    async def _create_failed(self, name: Name, prepared: Prepared, message: str = CONSOLE_FAILED) -> m.Failure:
        self.core.create_failed(name)
        self._release_fifo(name)
        try:
            await asyncio.to_thread(free_system_resources, self.settings, name, prepared.taps)
        except CreateError as e:
            return m.Failure(f"{message}, and also {e.message} while cleaning resources")
        finally:
            self.records.remove(name.to_string())
        return m.Failure(message)

    # -- exits -------------------------------------------------------------------------------
    def _watch(self, pid: int) -> asyncio.Future:
        """A future resolving to the ExitStatus of ``pid`` (reaped through a pidfd)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        pidfd = os.pidfd_open(pid)

        def ready() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
                result = status_of_wait(status)
            except ChildProcessError:
                result = ExitStatus("exit", 23)
            if not fut.done():
                fut.set_result(result)

        loop.add_reader(pidfd, ready)
        return fut

    async def exit_watcher(self, name: Name, watch: asyncio.Future, started: float) -> None:
        status = await watch
        ran = time.monotonic() - started
        early = None
        vm = self.core.vms.get(name)
        asked = vm is None or vm.state == "stopping"  # destroy, restart, shutdown: not a death
        if ran < self.settings.early_exit and not asked and name in self.fifo_keepers:
            # what the tender printed: once albatross-console has read all of it from the
            # fifo (our read end tells how much is left), it is in its history
            early = os.dup(self.fifo_keepers[name])
        async with self.lock:
            await self.run(self.core.on_exit(name, status))
        if early is not None:
            self.spawn_task(self.report_early_exit(name, status, ran, early))

    async def report_early_exit(self, name: Name, status: ExitStatus, ran: float, fd: int) -> None:
        """Log a tender that died within its first second, with the tail of its console."""
        try:
            deadline = time.monotonic() + 2.0
            while fifo_pending(fd) > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            os.close(fd)
        tail = await self.console_tail(name, EARLY_EXIT_LINES)
        log.warning("%s died %.2f s after its start with %s; console: %s", name.pretty(), ran,
                    status.describe(), tail)

    async def console_tail(self, name: Name, count: int) -> str:
        """The last ``count`` console lines of ``name`` as albatross-console has them."""
        path = socket_path(self.settings.tmpdir, "console")
        lines: list[str] = []
        try:
            conn = await asyncio.wait_for(open_unix(path), 2.0)
        except (OSError, asyncio.TimeoutError) as e:
            return f"(unavailable: {e or 'timeout'})"
        try:
            await conn.write_wire(Wire(Header(name), m.ConsoleSubscribe(count=count)))
            reply = await asyncio.wait_for(conn.read_wire(), 2.0)
            if reply is None or not isinstance(reply.payload, m.String):
                return f"(unavailable: {reply.payload if reply is not None else 'no reply'})"
            while len(lines) < count:  # the history comes at once; then only live lines would follow
                w = await asyncio.wait_for(conn.read_wire(), 0.2)
                if w is None or not isinstance(w.payload, m.ConsoleData):
                    break
                lines.append(w.payload.line.decode("utf-8", "replace"))
        except asyncio.TimeoutError:
            pass
        except (OSError, AlbatrossError) as e:
            lines.append(f"(console: {e})")
        finally:
            conn.close()
        return " | ".join(lines) if lines else "(empty)"

    async def restart_handler(self, eff: V.RestartDecision) -> None:
        async with self.lock:
            await self.run(self.core.decide_restart(eff.name, eff.config, eff.status,
                                                    now=time.monotonic(), started=eff.started))

    async def delayed_restart(self, eff: V.ScheduleRestart) -> None:
        """The back-off wait; the core decides whether the restart still happens."""
        await asyncio.sleep(eff.delay)
        if self.shutting_down:
            return
        async with self.lock:
            await self.run(self.core.restart_due(eff.name, eff.token))

    # -- block I/O ---------------------------------------------------------------------------
    def block_io(self, io: V.BlockIO) -> list[V.Effect]:
        """Create / remove / overwrite / read a block file (lock held; run in a thread)."""
        data = None
        try:
            if io.op == "create":
                create_block_file(self.settings, io.name, io.size, io.data)
            elif io.op == "remove":
                remove_block_file(self.settings, io.name)
            elif io.op == "write":
                remove_block_file(self.settings, io.name)
                create_block_file(self.settings, io.name, io.size, io.data)
            elif io.op == "read":
                with os.fdopen(open_block_file(self.settings, io.name), "rb") as fh:
                    data = fh.read(V.bytes_of_mb(io.size) + 1)
        except CreateError as e:
            return self.core.block_done(io, e.message)
        except OSError as e:
            return self.core.block_done(io, f"{e.strerror or e} ({self.settings.block_path(io.name)})")
        return self.core.block_done(io, None, data)

    async def receive_block(self, conn: Conn, io: V.BlockIO) -> None:
        """Block set: the device was erased; write the streamed chunks, then reply.

        Compressed chunks are inflated in a thread, at most the block's size in
        total (pieces of 1 MiB), so neither memory nor the event loop suffer.
        """
        limit = V.bytes_of_mb(io.size)
        error: str | None = None
        inflater = Z.BoundedInflater(limit, "block data") if io.compressed else None
        written = 0
        try:
            remove_block_file(self.settings, io.name)
            create_block_file(self.settings, io.name, 0)
            fh = os.fdopen(open_block_file(self.settings, io.name, os.O_RDWR), "r+b")
        except (OSError, AlbatrossError) as e:
            await self._send(conn, Wire(io.reply, m.Failure(e.message if isinstance(e, AlbatrossError) else str(e))))
            return

        def store(chunk: bytes) -> int:
            if inflater is None:
                if written + len(chunk) > limit:
                    raise Z.InflateError("stream exceeds size")
                fh.write(chunk)
                return len(chunk)
            before = inflater.produced
            inflater.feed(chunk, fh.write)
            return inflater.produced - before

        with fh:
            while True:
                try:
                    chunk = await conn.read_frame()
                except FrameError as e:
                    error = error or e.message
                    break
                if chunk is None:
                    error = error or "error while reading stream"
                    break
                if chunk is END:
                    break
                if error is not None:
                    continue
                try:
                    written += await asyncio.to_thread(store, chunk)
                except Z.InflateError as e:
                    error = "stream exceeds size" if "exceeds" in e.message else "error writing to file descriptor"
                except OSError:
                    error = "error writing to file descriptor"
            if error is None and inflater is not None and not inflater.eof:
                error = "error writing to file descriptor"
            try:
                fh.truncate(limit)
            except OSError:
                error = error or "error writing to file descriptor"
        reply = m.Failure(error) if error else m.String("set block device")
        await self._send(conn, Wire(io.reply, reply))

    async def send_block(self, conn: Conn, io: V.BlockIO) -> None:
        """Block dump: success, data chunks, end of data (and a failure if reading failed)."""
        try:
            level = Z.check_level(io.level)
            fh = os.fdopen(open_block_file(self.settings, io.name), "rb")
        except (OSError, AlbatrossError) as e:
            why = e.message if isinstance(e, AlbatrossError) else e.strerror
            await self._send(conn, Wire(io.reply, m.Failure(f"dump block: {why}")))
            return
        await self._send(conn, Wire(io.reply, m.BlockDeviceImage(level != 0)))
        comp = zlib.compressobj(level) if level else None
        error = None
        with fh:
            try:
                while True:
                    piece = fh.read(CHUNK)
                    if not piece:
                        break
                    out = comp.compress(piece) if comp else piece
                    if out:
                        await conn.write_wire(Wire(io.reply, m.BlockData(out)))
                if comp:
                    tail = comp.flush()
                    if tail:
                        await conn.write_wire(Wire(io.reply, m.BlockData(tail)))
            except OSError as e:
                error = str(e)
        await self._send(conn, Wire(io.reply, m.BlockData(None)))
        if error:
            await self._send(conn, Wire(io.reply, m.Failure(error)))

    @staticmethod
    async def _send(conn: Conn, wire: Wire) -> None:
        """Write and wait for the peer to take it (outside the lock only)."""
        try:
            await conn.write_wire(wire)
        except (OSError, AlbatrossError) as e:
            log.warning("failed to write reply: %s", e)

    # -- connections ----------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer)
        retain = False
        try:
            retain = await self._serve(conn)
        except Exception:  # noqa: BLE001 - one broken connection must not stop the daemon
            log.exception("error while handling a connection")
        finally:
            if not retain:
                conn.close()

    async def _serve(self, conn: Conn) -> bool:
        """Serve commands on ``conn``; True if it became the stats channel."""
        while True:
            try:
                w = await conn.read_wire()
            except (DecodeError, FrameError) as e:
                log.error("bad request: %s", e.message)
                await self._send(conn, Wire(Header(ROOT), m.Failure(f"bad request: {e.message}")))
                return False
            if w is None:
                return False
            if self.shutting_down:
                await self._send(conn, Wire(w.header, m.Failure("albatrossd is shutting down")))
                return False
            async with self.lock:
                if isinstance(w.payload, HEAVY):
                    # may inflate/deflate an image or a block: keep the event loop serving
                    effects = await asyncio.to_thread(self.core.handle_command, w.header, w.payload)
                else:
                    effects = self.core.handle_command(w.header, w.payload)
                later = await self.run(effects, conn)
                if self.stats is conn:
                    return True
            if not await self.flush(conn):
                return False
            if not any(isinstance(e, V.Loop) for e in later):
                for eff in later:
                    await self._after_lock(conn, eff)
                return False

    async def _after_lock(self, conn: Conn, eff: V.Effect) -> None:
        if isinstance(eff, V.AwaitExit):
            status = await self.futures[eff.waiter]
            if eff.then == "destroy":
                # under the lock: commands may be evaluated in a thread meanwhile (HEAVY)
                async with self.lock:
                    await self.run(self.core.destroy_done(eff.reply, status), conn)
                await self.flush(conn)
            else:
                async with self.lock:
                    await self.run([eff.then], conn)
                await self.flush(conn)
        elif isinstance(eff, V.BlockIO) and eff.op == "recv":
            await self.receive_block(conn, eff)
        elif isinstance(eff, V.BlockIO) and eff.op == "send":
            await self.send_block(conn, eff)

    # -- lifecycle ----------------------------------------------------------------------------
    async def restore(self, unikernels: list[tuple[Name, UnikernelConfig]]) -> None:
        # no state write per restored unikernel (unlike upstream): the file already lists
        # them all, and a crash in the middle of the restore must not lose the rest
        for name, config in V.startup_order(unikernels):
            async with self.lock:
                reply = await self.create(V.PrepareAndSpawn(name, config, False, None))
            if isinstance(reply, m.Failure):
                log.error("failed to restart %s: %s", name.pretty(), reply.message)

    async def shutdown(self) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        log.info("shutting down")
        async with self.lock:
            if self.server is not None:
                self.server.close()
            effects, idents = self.core.shutdown()
            loop = asyncio.get_running_loop()
            waits = []
            for ident in idents:
                self.futures[ident] = loop.create_future()
                waits.append(self.futures[ident])
            await self.run(effects)
        if waits:
            await asyncio.gather(*waits)
        # let the exit handlers (cleanup of taps, image, fifo) finish
        async with self.lock:
            pass
        self.done.set()


# --------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------

async def serve(settings: Settings, core: Vmmd, unikernels: list[tuple[Name, UnikernelConfig]],
                systemd: bool, persisted: "Persisted | None" = None) -> None:
    console_path = socket_path(settings.tmpdir, "console")
    try:
        console = await open_unix(console_path)
    except OSError:
        raise StartupError(f"Failed to connect to {console_path}, is albatross-console started?") from None
    daemon = Daemon(settings, core, console)
    limits.quiet_accept_errors()
    if persisted is not None:
        daemon.written = persisted.written
        daemon.tombstone_dirs = persisted.tombstone_dirs
        daemon.have_tombstones = persisted.have_tombstones
        daemon.dump_pending = persisted.dump_pending
    try:
        sock = service_socket(settings.tmpdir, "vmmd", systemd)
    except OSError as e:
        raise StartupError(f"unable to create server socket {socket_path(settings.tmpdir, 'vmmd')}: {e}") from None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: daemon.spawn_task(daemon.shutdown()))
    await daemon.restore(unikernels)
    daemon.server = await asyncio.start_unix_server(daemon.handle, sock=sock, limit=1 << 20)
    sd_notify("READY=1")
    watcher = asyncio.get_running_loop().create_task(daemon.watch_console())
    retry = asyncio.get_running_loop().create_task(daemon.retry_dump())
    await daemon.done.wait()
    watcher.cancel()
    retry.cancel()


@dataclass
class Persisted:
    """What startup learnt about the files on disk, for the Daemon."""

    written: bytes | None = None
    tombstone_dirs: list[str] | None = None
    have_tombstones: bool = False
    dump_pending: bool = False


def reclaim(settings: Settings, lock: R.DaemonLock | None) -> list[str]:
    """Stop and remove what a previous albatrossd on this dbdir left behind; the tmpdirs searched."""
    tmpdirs = [settings.tmpdir]
    if lock is not None and lock.previous_tmpdir and os.path.realpath(lock.previous_tmpdir) != \
            os.path.realpath(settings.tmpdir):
        tmpdirs.append(lock.previous_tmpdir)
    lines = R.reconcile([R.Records(d) for d in tmpdirs], taps_mod.destroy_tap)
    for line in lines:
        log.warning("%s", line)
    if not lines:
        log.info("nothing left behind by a previous albatrossd")
    return tmpdirs


def startup(settings: Settings, zvol_path: tuple[str, ...] | None,
            lock: R.DaemonLock | None = None,
            restart_policy: V.RestartPolicy | None = None) -> tuple[Vmmd, list, Persisted]:
    """Steps 2-8 of behaviour.md §2.2 (no sockets yet), after reclaiming leftovers (the lock is held)."""
    tmpdirs = reclaim(settings, lock)
    core = Vmmd.create(zvol_path, restart_policy)
    for msg in core.init_block_devices(host.scan_block_devices(settings.dbdir)):
        log.error("%s", msg)
    try:
        host.check_commands()
        root = host.root_policy(settings.dbdir)
    except host.HostError as e:
        raise StartupError(e.message) from None
    logging.getLogger("albatross").log(logging.WARNING + 5, "root policy: %s", root.describe())
    state, written = load_state(settings.dbdir)
    persisted = Persisted(written, tmpdirs)
    if state is None:
        log.warning("no state dump found, starting with no unikernels")
        state = State()
    else:
        log.info("restored %d unikernels and %d policies", len(state.unikernels), len(state.policies))
        backup_state(settings.dbdir)
    graves = R.tombstones(settings.dbdir, tmpdirs)
    if graves:
        kept = tuple((n, c) for n, c in state.unikernels if n.to_string() not in graves)
        for n, _ in state.unikernels:
            if n.to_string() in graves:
                log.warning("not restoring %s: it was destroyed, but the state file could not be written "
                            "then (tombstone %s)", n.pretty(), graves[n.to_string()])
        state = State(kept, state.policies)
        persisted.have_tombstones = True
        try:
            data = encode_state(state)
            if data != written:
                write_state(settings.dbdir, state, data)
                persisted.written = data
            R.clear_tombstones(settings.dbdir, tmpdirs)
            persisted.have_tombstones = False
        except OSError as e:
            log.error("failed to write the state without the destroyed unikernels (will retry): %s", e)
            persisted.dump_pending = True
    try:
        for w in core.restore_policies(list(state.policies), root):
            log.warning("%s", w)
    except AlbatrossError as e:
        raise StartupError(e.message) from None
    return core, list(state.unikernels), persisted


@click.command("albatrossd")
@daemon_options
@click.option("--dbdir", default=None, metavar="DIR", help="Database directory (default /var/lib/albatross).")
@click.option("--no-drop-path", is_flag=True,
              help="Do not drop the unikernel path for --name (use --name=path:hello).")
@click.option("--allow-zvol-for", default=None, metavar="PATH", help="Allow /dev/zvol access for this path.")
@click.option("--max-image-size", type=click.IntRange(min=1), default=Z.DEFAULT_MAX_IMAGE // (1024 * 1024),
              show_default=True, metavar="MB",
              help="Largest unikernel image accepted, uncompressed, in MB (compressed images are "
                   "inflated at most to this size).")
@click.option("--restart-delay", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="S",
              help="Seconds before the first restart of a failed unikernel; doubles with every failure "
                   "in a row (0: restart at once, as upstream).")
@click.option("--restart-max-delay", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="S", help="Longest wait before a restart.")
@click.option("--restart-reset", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="S",
              help="A unikernel that ran this long starts the back-off afresh.")
@click.option("--restart-max", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="Give up (mark failed) after N failures within --restart-window (0: never, as upstream).")
@click.option("--restart-window", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, metavar="S", help="The window of --restart-max.")
@click.option("--early-exit", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="S",
              help="Log a tender that dies within S seconds of its start as a warning, with the tail "
                   "of its console.")
@influx_option
def command(tmpdir: str, systemd: bool, verbosity: int, use_syslog: bool, dbdir: str | None,
            no_drop_path: bool, allow_zvol_for: str | None, max_image_size: int, restart_delay: float, restart_max_delay: float,
            restart_reset: float, restart_max: int, restart_window: float, early_exit: float,
            influx: str | None) -> None:
    """Albatross daemon: creates and supervises unikernels."""
    setup_logging("albatrossd", verbosity, use_syslog)
    logging.addLevelName(logging.WARNING + 5, "APP")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    dbdir = dbdir or default_dbdir()
    if not os.path.isdir(dbdir):
        raise click.BadParameter(f"{dbdir} is not a directory", param_hint="--dbdir")
    zvol = None
    if allow_zvol_for is not None:
        try:
            zvol = path_of_string(allow_zvol_for)
        except AlbatrossError as e:
            raise click.BadParameter(e.message, param_hint="--allow-zvol-for") from None
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    settings = Settings(tmpdir, dbdir, not no_drop_path, max_image_size * 1024 * 1024, early_exit)
    restart_policy = V.RestartPolicy(restart_delay, max(restart_delay, restart_max_delay), restart_reset,
                                     restart_max, restart_window)
    # one supervisor per dbdir: before anything else (sockets, tenders, files)
    lock = R.DaemonLock.acquire(dbdir, tmpdir)
    try:
        safefs.check_layout(dbdir, tmpdir)
    except safefs.UnsafePath as e:
        raise StartupError(f"refusing to start: {e.message}") from None
    limits.raise_nofile()
    core, unikernels, persisted = startup(settings, zvol, lock, restart_policy)
    core.max_image_size = settings.max_image_size
    if restart_policy.delay <= 0 and not restart_policy.max_failures:
        log.log(V.APP, "restart on failure: at once, never giving up (as upstream)")
    else:
        log.log(V.APP, "restart on failure: after %g s doubling up to %g s (reset after a run of %g s), %s",
                restart_policy.delay, restart_policy.max_delay, restart_policy.reset_after,
                f"giving up after {restart_max} failures within {restart_window:g} s" if restart_max
                else "never giving up")
    asyncio.run(run_with_metrics(serve(settings, core, unikernels, systemd, persisted), influx, "albatross",
                                 lambda: resource_lines(core.resources)))


def main(argv: list[str] | None = None) -> None:
    run_cli(command, argv, "albatrossd")


if __name__ == "__main__":
    main()


__all__ = ["main", "command", "Daemon", "Settings", "write_state", "read_state", "prepare",
           "free_system_resources", "spawn_tender"]
