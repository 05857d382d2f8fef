"""Tap devices and bridges on Linux, through netlink (pyroute2).

Equivalent to upstream's ``ip tuntap add vmmtapN mode tap``, ``ip link set
dev vmmtapN up`` and ``ip link set dev vmmtapN master <bridge>``.  All
functions are synchronous and act on the network namespace of the calling
process; callers in an event loop should run them in a thread.
"""

from __future__ import annotations

import re
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .elf import Solo5Error

TAP_PREFIX = "vmmtap"
_TAP_RE = re.compile(re.escape(TAP_PREFIX) + r"(\d+)\Z")


def _ifname(link: Any) -> str:
    return link.get_attr("IFLA_IFNAME")


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _describe(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        return f"{e.args[1] if len(e.args) > 1 else e} (netlink error {e.code})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def link_names() -> set[str]:
    """Names of all network interfaces."""
    with IPRoute() as ipr:
        return {_ifname(link) for link in ipr.get_links()}


def bridge_exists(name: str) -> bool:
    """Whether an interface called ``name`` exists.

    Like upstream (``ip link show <br>``) this only checks the name; attaching
    a tap to an interface that is not a bridge fails later, in create_tap.
    """
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def list_bridges() -> list[str]:
    """Names of all bridge interfaces (``ip link show type bridge``)."""
    with IPRoute() as ipr:
        return [_ifname(link) for link in ipr.get_links() if _kind(link) == "bridge"]


def free_tap_name(existing: set[str]) -> str:
    """The lowest ``vmmtapN`` (N >= 0) not among ``existing``."""
    used = {int(m.group(1)) for m in (_TAP_RE.match(n) for n in existing) if m}
    n = 0
    while n in used:
        n += 1
    return f"{TAP_PREFIX}{n}"


def create_tap(bridge: str, reserve=None) -> str:
    """Create the lowest free vmmtapN, bring it up and enslave it to ``bridge``.

    If a step fails the tap (if already created) is removed again and a
    Solo5Error is raised.  Returns the tap's name.  ``reserve(name)``, if
    given, is called with the chosen name before the tap is created (albatrossd
    records it there, so that a crash never leaves an unrecorded tap).
    """
    with IPRoute() as ipr:
        tap = free_tap_name({_ifname(link) for link in ipr.get_links()})
        if reserve is not None:
            reserve(tap)
        try:
            ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
        except (NetlinkError, OSError) as e:
            raise Solo5Error(f"failed to create tap {tap}: {_describe(e)}") from None
        try:
            (index,) = ipr.link_lookup(ifname=tap)
            ipr.link("set", index=index, state="up")
            bridges = ipr.link_lookup(ifname=bridge)
            if not bridges:
                raise Solo5Error(f"failed to attach tap {tap} to bridge {bridge}: interface {bridge} does not exist")
            ipr.link("set", index=index, master=bridges[0])
        except Exception as e:
            _remove_quietly(ipr, tap)
            if isinstance(e, Solo5Error):
                raise
            raise Solo5Error(f"failed to set up tap {tap} on bridge {bridge}: {_describe(e)}") from None
    return tap


def _remove_quietly(ipr: IPRoute, tap: str) -> None:
    try:
        for index in ipr.link_lookup(ifname=tap):
            ipr.link("del", index=index)
    except (NetlinkError, OSError):
        pass


def destroy_tap(name: str) -> None:
    """Remove the tap device ``name``; Solo5Error if it is missing, not a tun/tap, or removal fails."""
    with IPRoute() as ipr:
        links = [link for link in ipr.get_links() if _ifname(link) == name]
        if not links:
            raise Solo5Error(f"failed to destroy tap {name}: no such interface")
        if _kind(links[0]) != "tun":
            raise Solo5Error(f"failed to destroy tap {name}: not a tap device")
        try:
            ipr.link("del", index=links[0]["index"])
        except (NetlinkError, OSError) as e:
            raise Solo5Error(f"failed to destroy tap {name}: {_describe(e)}") from None


__all__ = [
    "TAP_PREFIX", "link_names", "bridge_exists", "list_bridges", "free_tap_name",
    "create_tap", "destroy_tap",
]
