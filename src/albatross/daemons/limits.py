"""Surviving floods of local connections: file descriptor limits and EMFILE.

* :func:`raise_nofile` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at
  start (systemd's default soft limit of 1024 is reached at ~500 unikernels:
  albatrossd keeps a pidfd and a fifo end per unikernel).
* :func:`quiet_accept_errors` replaces asyncio's report of a failed
  ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM: asyncio then pauses the
  listening socket for a second by itself) by one log line per episode
  instead of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource

log = logging.getLogger("albatross")

#: what the shipped units set (LimitNOFILE=); enough for 10,000+ unikernels
WANTED_NOFILE = 65536
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raise the soft limit of open files towards ``wanted`` (up to the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, e)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        log.warning("open files limit is %d: raise LimitNOFILE (systemd) or kern.maxfilesperproc", soft)
    return soft


def is_out_of_resources(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES


class AcceptErrors:
    """The loop's exception handler: one line per episode of refused accepts."""

    def __init__(self, quiet_for: float = 10.0):
        self.quiet_for = quiet_for
        self.last = float("-inf")
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if context.get("message", "").startswith("socket.accept() out of system resource") \
                or is_out_of_resources(exc):
            now = loop.time()
            if now - self.last >= self.quiet_for:
                more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
                log.error("cannot accept connections: %s; pausing the listening socket%s", exc, more)
                self.last = now
                self.suppressed = 0
            else:
                self.suppressed += 1
            return
        loop.default_exception_handler(context)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop | None = None) -> AcceptErrors:
    loop = loop or asyncio.get_running_loop()
    handler = AcceptErrors()
    loop.set_exception_handler(handler)
    return handler


__all__ = ["WANTED_NOFILE", "raise_nofile", "quiet_accept_errors", "AcceptErrors", "is_out_of_resources"]
