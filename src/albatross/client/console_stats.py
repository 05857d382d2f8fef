"""Console and statistics subcommands (behaviour.md §7.5): ``console``,
``inactive-consoles``, ``stats``, ``stats-add``, ``stats-remove``."""

from __future__ import annotations

import datetime as _dt

import click

from ..core import Ptime
from ..errors import AlbatrossError
from ..policy.names import ROOT, Name, path_of_string
from ..wire import messages as m
from .common import CliError, Exit, parse_name, run_command, target_options


def parse_since(s: str) -> Ptime:
    """RFC 3339 (e.g. 2023-03-12T23:42:15Z) or a bare date YYYY-MM-DD (midnight UTC)."""
    text = s.strip()
    try:
        if len(text) == 10:
            d = _dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc)
        else:
            if text[-1:] in ("z", "Z"):
                text = text[:-1] + "+00:00"
            d = _dt.datetime.fromisoformat(text.replace("t", "T", 1))
            if d.tzinfo is None:
                raise ValueError("no time zone")
    except ValueError:
        raise CliError(f"invalid timestamp {s!r} (expected RFC 3339, e.g. 2023-03-12T23:42:15Z, "
                       "or YYYY-MM-DD)") from None
    return Ptime.of_datetime(d)


def parse_bridge_tap(s: str) -> tuple[str, str]:
    parts = s.split(":")
    if len(parts) != 2:
        raise CliError("broken, format is bridge:tap")
    return parts[0], parts[1]


def parse_path(s: str) -> Name:
    try:
        return Name.of_path(path_of_string(s))
    except AlbatrossError as e:
        raise CliError(f"invalid path {s!r}: {e.message}") from None


def _opt_name(s: str | None) -> Name:
    return ROOT if s is None else parse_name(s)


def register(cli: click.Group) -> None:
    @cli.command("console")
    @click.argument("name")
    @click.option("--since", default=None, metavar="TIMESTAMP",
                  help="Receive all lines since timestamp (RFC 3339, e.g. '--since=2023-03-12T23:42:15Z').")
    @click.option("--count", type=int, default=20, show_default=True, help="Receive this many lines.")
    @target_options
    def console(name: str, since: str | None, count: int, target) -> int:
        """Displays the console output of a unikernel."""
        cmd = m.ConsoleSubscribe(since=parse_since(since)) if since is not None else m.ConsoleSubscribe(count=count)
        try:
            return run_command(target, parse_name(name), cmd)
        except KeyboardInterrupt:
            # Ctrl-C ends the stream: exit 130 quietly (click would turn the
            # interrupt into Abort, exit 124, after printing a blank line)
            raise Exit(130) from None

    @cli.command("inactive-consoles")
    @click.option("-p", "--path", default="", help="Path to unikernels.")
    @target_options
    def inactive_consoles(path: str, target) -> int:
        """Displays the inactive but available consoles."""
        return run_command(target, parse_path(path), m.ConsoleListInactive())

    @cli.command("stats")
    @click.option("-n", "--name", default=None, help="Name of unikernel (default: everything).")
    @target_options
    def stats(name: str | None, target) -> int:
        """Statistics of unikernels (streams until the server closes)."""
        return run_command(target, _opt_name(name), m.StatsSubscribe())

    @cli.command("stats-add")
    @click.argument("pid", type=int)
    @click.option("--vmmdev", default=None, help="VMM device name for gathering VMM statistics (/dev/vmm/<YYY>).")
    @click.option("--bridge", "bridges", multiple=True, metavar="BRIDGE:TAP",
                  help="Bridge and tap device names (format is 'bridge:tap'), repeatable.")
    @click.option("-n", "--name", default=None, help="Name of unikernel.")
    @target_options
    def stats_add(pid: int, vmmdev: str | None, bridges: tuple[str, ...], name: str | None, target) -> int:
        """Add unikernel to statistics gathering."""
        taps = tuple(parse_bridge_tap(b) for b in bridges)
        return run_command(target, _opt_name(name), m.StatsAdd(vmmdev or "", pid, taps))

    @cli.command("stats-remove")
    @click.option("-n", "--name", default=None, help="Name of unikernel.")
    @target_options
    def stats_remove(name: str | None, target) -> int:
        """Remove unikernel from statistics gathering."""
        return run_command(target, _opt_name(name), m.StatsRemove())
