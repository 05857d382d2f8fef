"""What albatrossd learns from the host at start-up (Linux).

* the root policy: CPUs, physical memory, size of the file system holding
  ``dbdir/block``, all bridges (behaviour.md §2.2 step 4);
* the block devices already present in ``dbdir/block`` (step 2);
* whether the commands albatrossd relies on are installed (step 3).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat

from ..core import MAX_INT, Policy
from ..errors import AlbatrossError
from ..policy.names import Name

log = logging.getLogger("albatross.host")

MB = 1024 * 1024
REQUIRED_COMMANDS = ("uname", "ip", "taskset")


class HostError(AlbatrossError):
    """The host cannot run albatrossd (missing command, missing directory...)."""


def check_commands(path_env: str | None = None) -> None:
    for cmd in REQUIRED_COMMANDS:
        if shutil.which(cmd, path=path_env) is None:
            raise HostError(f"required command {cmd} not found in PATH")


def cpu_count() -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN")


def memory_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MB


def block_fs_mb(block_dir: str) -> int:
    st = os.statvfs(block_dir)
    return st.f_blocks * st.f_frsize // MB


def bridges() -> list[str]:
    from ..solo5.taps import list_bridges
    return list_bridges()


def root_policy(dbdir: str) -> Policy:
    """The policy of the root path, discovered from the host."""
    block_dir = os.path.join(dbdir, "block")
    try:
        block = block_fs_mb(block_dir)
        return Policy(MAX_INT, frozenset(range(cpu_count())), memory_mb(), block, frozenset(bridges()))
    except Exception as e:  # noqa: BLE001 - any failure aborts start-up with this message
        raise HostError(f"root policy failed: {e}") from None


def scan_block_devices(dbdir: str) -> list[tuple[Name, int]]:
    """Block device files in ``dbdir/block``: MB-aligned, non-empty, named like a name."""
    block_dir = os.path.join(dbdir, "block")
    try:
        entries = sorted(os.listdir(block_dir))
    except OSError as e:
        log.warning("couldn't find block devices %s", e)
        return []
    found = []
    for entry in entries:
        path = os.path.join(block_dir, entry)
        try:
            st = os.lstat(path)  # a symlink is never a block device (it could point anywhere)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            log.warning("block device %s is a symbolic link, ignored", path)
            continue
        if not stat.S_ISREG(st.st_mode):
            log.warning("block device %s is not a regular file, ignored", path)
            continue
        if st.st_size == 0 or st.st_size % MB != 0:
            log.warning("block device %s has a size of %d bytes, not a non-zero multiple of 1MB, ignored",
                        path, st.st_size)
            continue
        try:
            name = Name.of_string(entry)
        except AlbatrossError as e:
            log.warning("block device %s: invalid name (%s), ignored", path, e.message)
            continue
        if name.label is None:
            log.warning("block device %s: no label, ignored", path)
            continue
        found.append((name, st.st_size // MB))
    return found


__all__ = ["HostError", "check_commands", "root_policy", "scan_block_devices", "cpu_count", "memory_mb",
           "block_fs_mb", "bridges", "MB"]
