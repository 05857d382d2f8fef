#!/usr/bin/env python3
"""Write the man pages of albatross' programs, generated from their click
definitions (the same text as ``--help``).

    python3 packaging/manpages.py MANDIR      # writes MANDIR/man1, MANDIR/man8

Pages: albatross-client(1) with its command list, albatross-client-COMMAND(1)
for every command, and albatrossd(8), albatross-console(8),
albatross-stats(8), albatross-influx(8), albatross-tls-endpoint(8).  The date
is taken from SOURCE_DATE_EPOCH when set (reproducible builds), else today.
Run it with the package importable (an installed albatross, or
PYTHONPATH=src from a checkout).
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import sys
from pathlib import Path

import click

from albatross import __version__
from albatross.client import cli
from albatross.client import common as client_common

#: daemon program -> module defining its click ``command``
DAEMONS = {
    "albatrossd": "albatross.daemons.albatrossd",
    "albatross-console": "albatross.daemons.console",
    "albatross-stats": "albatross.daemons.stats",
    "albatross-influx": "albatross.daemons.influx",
    "albatross-tls-endpoint": "albatross.daemons.tls_endpoint",
}

#: albatross-client's exit codes (names in albatross.client.common), as upstream documents them
CLIENT_EXITS = [
    ("SUCCESS", "on success."),
    ("CHAIN_FAILURE", "on a failure while verifying the certificate chain."),
    ("REMOTE_COMMAND_FAILED", "if the remote command failed."),
    ("HTTP_ERROR", "on an HTTP error."),
    ("LOCAL_AUTHENTICATION_FAILED", "if local authentication failed."),
    ("REMOTE_AUTHENTICATION_FAILED", "if remote authentication failed."),
    ("COMMUNICATION_FAILED", "if the communication with the daemon failed."),
    ("CONNECT_FAILED", "if the connection to the daemon failed."),
    ("CLI_FAILED", "on command line parsing errors and failed commands."),
    ("INTERNAL_ERROR", "on unexpected internal errors (bugs)."),
]

SEE_ALSO_DAEMONS = [(d, 8) for d in DAEMONS]


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens and leading control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def paragraphs(text: str | None) -> list[str]:
    """click help text as roff paragraphs (``\\b`` blocks stay as written)."""
    if not text:
        return []
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b\n"):
            out.append(".nf\n" + esc(para[2:]) + "\n.fi")
        else:
            out.append(esc(" ".join(para.split())))
    return out


def section(title: str, body: list[str]) -> list[str]:
    return [f".SH {title}", *("\n.PP\n".join(body).split("\n"))] if body else []


def options(ctx: click.Context) -> list[str]:
    lines = []
    for param in ctx.command.get_params(ctx):
        rec = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if rec is None:
            continue
        names, help_text = rec
        lines += [".TP", f"\\fB{esc(names)}\\fR", esc(help_text) if help_text else ""]
    return [".SH OPTIONS", *lines] if lines else []


def synopsis(ctx: click.Context, prog: str) -> list[str]:
    pieces = " ".join(ctx.command.collect_usage_pieces(ctx))
    return [".SH SYNOPSIS", f"\\fB{esc(prog)}\\fR {esc(pieces)}"]


def see_also(refs: list[tuple[str, int]]) -> list[str]:
    refs = sorted(set(refs))
    return [".SH SEE ALSO", ",\n".join(f"\\fB{esc(n)}\\fR({s})" for n, s in refs)] if refs else []


def page(prog: str, num: int, command: click.Command, ctx: click.Context, *, date: str,
         extra: list[str] = (), refs: list[tuple[str, int]] = (), usage: str | None = None) -> str:
    """One page: ``prog`` names it, ``usage`` (default ``prog``) starts the synopsis."""
    summary = command.get_short_help_str(limit=200).rstrip(".") or prog
    lines = [
        f'.TH "{esc(prog.upper())}" "{num}" "{date}" "albatross {__version__}" "Albatross Manual"',
        ".SH NAME", f"{esc(prog)} \\- {esc(summary)}",
        *synopsis(ctx, usage or prog),
        *section("DESCRIPTION", paragraphs(command.help)),
        *options(ctx),
        *extra,
        *section("NOTES", paragraphs(command.epilog)),
        *see_also(list(refs)),
    ]
    return "\n".join(lines) + "\n"


def client_exit_status() -> list[str]:
    lines = [".SH EXIT STATUS"]
    for name, what in CLIENT_EXITS:
        lines += [".TP", f"{getattr(client_common, name)}", esc(what)]
    return lines


def pages(date: str) -> dict[str, str]:
    """file name -> man page text."""
    out: dict[str, str] = {}
    root = click.Context(cli, info_name="albatross-client", **cli.context_settings)
    names = sorted(n for n in cli.list_commands(root) if not cli.commands[n].hidden)
    cmds = [".SH COMMANDS"]
    for n in names:
        cmds += [".TP", f"\\fB{esc(n)}\\fR", esc(cli.commands[n].get_short_help_str(limit=200))]
    cmds.append(f"See \\fBalbatross\\-client\\-COMMAND\\fR(1) or \\fBalbatross\\-client COMMAND \\-\\-help\\fR.")
    out["albatross-client.1"] = page(
        "albatross-client", 1, cli, root, date=date, extra=cmds + client_exit_status(),
        refs=[(f"albatross-client-{n}", 1) for n in names] + SEE_ALSO_DAEMONS)
    for n in names:
        sub = cli.commands[n]
        ctx = click.Context(sub, info_name=n, parent=root)
        out[f"albatross-client-{n}.1"] = page(
            f"albatross-client-{n}", 1, sub, ctx, date=date, extra=client_exit_status(),
            refs=[("albatross-client", 1)], usage=f"albatross-client {n}")
    for prog, module in DAEMONS.items():
        command = __import__(module, fromlist=["command"]).command
        ctx = click.Context(command, info_name=prog)
        out[f"{prog}.8"] = page(prog, 8, command, ctx, date=date,
                                refs=[("albatross-client", 1)] + [r for r in SEE_ALSO_DAEMONS if r[0] != prog])
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    mandir = Path(argv[0])
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    for name, text in pages(when.strftime("%Y-%m-%d")).items():
        path = mandir / f"man{name.rsplit('.', 1)[1]}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
