"""Helpers of the security tests."""

from __future__ import annotations

def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def nobody() -> tuple[int, int]:
    """A less privileged uid/gid (an attacker's)."""
    return 65534, 65534


