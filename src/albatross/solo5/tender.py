"""Finding a Solo5 tender and building its command line.

``tender_candidates`` / ``find_tender`` / ``check_tender_version`` implement
the discovery of behaviour.md §2.9; ``tender_argv`` and ``macs_in_use`` are
pure and build the command line of §2.5 (Linux pinning with taskset).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from ..core import UnikernelConfig
from ..policy.names import Name, mac_to_string
from ..daemons.safefs import trusted_executable
from .elf import Solo5Error

log = logging.getLogger("albatross.tender")

SUPPORTED_TARGETS = ("hvt", "spt")
VERSION_TIMEOUT = 10.0


def tender_base(target: str) -> str:
    """``solo5-hvt`` / ``solo5-spt``; other targets are not supported."""
    if target not in SUPPORTED_TARGETS:
        raise Solo5Error(f"unsupported solo5 target {target}")
    return "solo5-" + target


def tender_candidates(target: str, abi_version: int) -> list[str]:
    """Tender names in the order they are tried: versioned name first."""
    base = tender_base(target)
    return [f"{base}.{abi_version}", base]


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_tender(target: str, abi_version: int, dbdir: str, path_env: str | None = None) -> str:
    """Locate the tender: per candidate name, ``dbdir/<name>`` then ``<name>`` in PATH.

    ``path_env`` is the PATH to search (default: the process's PATH).  The
    result is the path of the executable found.
    """
    looked_for: list[str] = []
    for name in tender_candidates(target, abi_version):
        in_dbdir = os.path.join(dbdir, name)
        if _is_executable_file(in_dbdir):
            # albatrossd runs the tender as root: one that a less privileged user could
            # have planted or modified is skipped
            unsafe = trusted_executable(in_dbdir)
            if unsafe is None:
                return in_dbdir
            log.warning("not using tender %s: %s", in_dbdir, unsafe)
        in_path = shutil.which(name, path=path_env)
        if in_path is not None:
            return in_path
        looked_for += [in_dbdir, name]
    raise Solo5Error("tender does not exist, looked for " + ", ".join(looked_for))


def _has_abi_line(lines: list[str], abi_version: int) -> bool:
    for line in lines:
        words = line.split(" ")
        if len(words) == 3 and words[0] == "ABI" and words[1] == "version":
            try:
                if int(words[2]) == abi_version:
                    return True
            except ValueError:
                pass
    return False


def check_tender_version(tender_path: str, abi_version: int) -> None:
    """Run ``<tender> --version``; one output line must be ``ABI version <abi_version>``."""
    try:
        proc = subprocess.run(
            [tender_path, "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=VERSION_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Solo5Error(f"{tender_path} --version did not finish within {VERSION_TIMEOUT:g} seconds") from None
    except OSError as e:
        raise Solo5Error(f"failed to run {tender_path} --version: {e.strerror or e}") from None
    output = proc.stdout.decode("utf-8", "replace")
    lines = output.splitlines()
    if proc.returncode != 0:
        raise Solo5Error(
            f"{tender_path} --version exited with status {proc.returncode}, output: " + "\n".join(lines)
        )
    if not _has_abi_line(lines, abi_version):
        raise Solo5Error(
            "unexpected solo5 tender --version output, expected one line with "
            f"'ABI version {abi_version}', got " + "\n".join(lines)
        )


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def macs_in_use(name: Name, config: UnikernelConfig) -> list[bytes]:
    """The MAC of each network device, in config order: configured or derived."""
    return [net.mac if net.mac is not None else name.mac(net.name) for net in config.bridges]


def name_argument(name: Name, drop_path: bool) -> str:
    """The injected ``--name=`` value: label when dropping the path, else the full name."""
    if drop_path and name.label is not None:
        return name.label
    return name.to_string()


def block_file(dbdir: str, name: Name, host_device: str) -> str:
    """``<dbdir>/block/<path:host_device>`` for a unikernel ``name``."""
    return os.path.join(dbdir, "block", name.block_name(host_device).to_string())


def tender_argv(
    *,
    name: Name,
    config: UnikernelConfig,
    tender: str,
    taskset: str,
    image_path: str,
    taps: list[str],
    dbdir: str,
    drop_path: bool,
) -> list[str]:
    """The full argv: ``taskset -c <cpus> <tender> --mem=.. ... -- <image> [--name=..] argv..``.

    ``taps`` holds one tap name per network device, in config order.
    """
    if len(taps) != len(config.bridges):
        raise Solo5Error(f"{len(config.bridges)} network devices but {len(taps)} taps")
    cpus = ",".join(str(c) for c in sorted(config.cpuids))
    argv = [taskset, "-c", cpus, tender, f"--mem={config.memory}"]
    argv += [f"--net:{net.name}={tap}" for net, tap in zip(config.bridges, taps)]
    argv += [
        f"--net-mac:{net.name}={mac_to_string(mac)}"
        for net, mac in zip(config.bridges, macs_in_use(name, config))
    ]
    argv += [f"--block:{b.name}={block_file(dbdir, name, b.host_device)}" for b in config.block_devices]
    argv += [
        f"--block-sector-size:{b.name}={b.sector_size}"
        for b in config.block_devices
        if b.sector_size is not None
    ]
    argv += ["--", image_path]
    if config.add_name:
        argv.append("--name=" + name_argument(name, drop_path))
    argv += list(config.argv or ())
    return argv


__all__ = [
    "SUPPORTED_TARGETS", "tender_base", "tender_candidates", "find_tender",
    "check_tender_version", "macs_in_use", "name_argument", "block_file", "tender_argv",
]
