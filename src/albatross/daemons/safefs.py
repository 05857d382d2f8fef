"""Files that root opens, writes or hands to a tender, opened safely.

albatrossd runs as root; the other daemons run as the unprivileged user
``albatross``.  Nothing root executes, opens for writing or passes to a
tender may be replaceable by a less privileged user, so:

* the directories albatrossd writes into (``dbdir``, ``dbdir/block``,
  ``tmpdir``, ``tmpdir/fifo``) must be real directories (not symlinks),
  owned by root (albatrossd's effective uid) and not writable by group or
  others; :func:`check_layout` refuses to start otherwise;
* files are opened with ``O_NOFOLLOW | O_NOCTTY | O_CLOEXEC`` and checked
  with ``fstat`` after opening (type and owner), so a symlink or a planted
  file is refused instead of followed;
* images are written to a fresh temporary file (mode 0600) that is renamed
  into place, so neither the umask nor a planted file or symlink matters.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile

from ..errors import AlbatrossError

log = logging.getLogger("albatross.safefs")

SAFE_OPEN = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
#: mode of the image files (read by the tender, which runs as root)
IMAGE_MODE = 0o600


class UnsafePath(AlbatrossError):
    """A path is a symlink, of the wrong type, or writable by a less privileged user."""


def trusted_uids() -> frozenset[int]:
    """Owners whose files root may trust: root and our own effective uid."""
    return frozenset({0, os.geteuid()})


def _describe(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def check_dir(path: str, what: str) -> None:
    """``path`` is a directory (not a symlink), owned by a trusted uid, not group/other-writable."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise UnsafePath(f"{what} {path}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{what} {path} is a symbolic link; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory")
    if st.st_uid not in trusted_uids():
        raise UnsafePath(f"{what} {path} is not owned by root ({_describe(st)}); "
                         f"fix with: chown root {path}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"{what} {path} is writable by group or others ({_describe(st)}); "
                         f"fix with: chmod go-w {path}")


def ensure_dir(path: str, what: str, mode: int = 0o700) -> None:
    """Create ``path`` (``mode``) if missing, then :func:`check_dir` it."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as e:
        raise UnsafePath(f"{what} {path}: {e.strerror or e}") from None
    check_dir(path, what)


def check_layout(dbdir: str, tmpdir: str) -> None:
    """What albatrossd checks before it starts (raises UnsafePath with the fix)."""
    check_dir(dbdir, "database directory")
    ensure_dir(os.path.join(dbdir, "block"), "block device directory")
    check_dir(tmpdir, "runtime directory")
    fifo = os.path.join(tmpdir, "fifo")
    if os.path.lexists(fifo):
        check_dir(fifo, "fifo directory")
    else:
        ensure_dir(fifo, "fifo directory", 0o750)


def check_file(fd: int, path: str, kind: str = "regular") -> os.stat_result:
    """fstat an opened ``fd``: of ``kind`` (regular / fifo) and owned by a trusted uid."""
    st = os.fstat(fd)
    ok = stat.S_ISREG(st.st_mode) if kind == "regular" else stat.S_ISFIFO(st.st_mode)
    if not ok:
        raise UnsafePath(f"{path} is not a {kind} file")
    if st.st_uid not in trusted_uids():
        raise UnsafePath(f"{path} is not owned by root ({_describe(st)})")
    return st


def open_checked(path: str, flags: int, kind: str = "regular", mode: int = 0o600) -> int:
    """``os.open`` without following symlinks, then :func:`check_file`; the fd."""
    try:
        fd = os.open(path, flags | SAFE_OPEN, mode)
    except OSError as e:
        if e.errno == 40:  # ELOOP: the last component is a symbolic link
            raise UnsafePath(f"{path} is a symbolic link; refusing to open it") from None
        raise
    try:
        check_file(fd, path, kind)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file_atomic(path: str, data: bytes, mode: int = IMAGE_MODE) -> None:
    """Write ``data`` to a new temporary file beside ``path`` with ``mode``, rename it over ``path``.

    A symlink or file planted at ``path`` is replaced, never followed.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def trusted_executable(path: str) -> str | None:
    """Why the executable at ``path`` (and its directory) must not be run by root; None if fine.

    Both must be owned by a trusted uid and not writable by group or others.
    """
    for p, what in ((path, "file"), (os.path.dirname(os.path.abspath(path)), "directory")):
        try:
            st = os.stat(p)
        except OSError as e:
            return f"{what} {p}: {e.strerror or e}"
        if st.st_uid not in trusted_uids():
            return f"{what} {p} is not owned by root ({_describe(st)})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{what} {p} is writable by group or others ({_describe(st)})"
    return None


__all__ = ["UnsafePath", "SAFE_OPEN", "IMAGE_MODE", "check_dir", "ensure_dir", "check_layout", "check_file",
           "open_checked", "write_file_atomic", "trusted_executable", "trusted_uids"]
