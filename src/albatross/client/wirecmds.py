"""Debugging and inspection subcommands: ``wire decode|encode``,
``inspect-dump`` and ``extract-dump``."""

from __future__ import annotations

import json
import os
import sys

import click

from .. import pretty
from ..errors import AlbatrossError
from ..wire import codec, jsonform as J
from ..wire.state import decode_state, encode_state
from ..wire import inflate as Z
from .common import CLI_FAILED, Exit, app, default_dbdir, dump_filename, error, logging_options, parse_name

KINDS = ("wire", "cert", "state")


def decode_hex(kind: str, text: str) -> dict:
    """Decode one hex string of ``kind`` to its JSON form, or {"error": ...}."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as e:
        return {"error": f"invalid hex: {e}"}
    try:
        if kind == "wire":
            return J.wire_to_json(codec.decode_wire(raw))
        if kind == "cert":
            return J.cert_to_json(*codec.decode_cert_extension(raw))
        return J.state_to_json(decode_state(raw))
    except AlbatrossError as e:
        return {"error": e.message}


def encode_json(kind: str, obj: dict) -> bytes:
    if kind == "wire":
        return codec.encode_wire(J.of_json_guarded(J.wire_of_json, obj))
    if kind == "cert":
        version, cmd = J.of_json_guarded(J.cert_of_json, obj)
        return codec.encode_cert_extension(cmd, version)
    return encode_state(J.of_json_guarded(J.state_of_json, obj))


def _state_file(file: str | None, dbdir: str | None) -> str:
    dbdir = dbdir or default_dbdir()
    f = file or "state"
    return os.path.join(dbdir, f) if os.sep not in f else f


def _read_state(file, dbdir):
    path = _state_file(file, dbdir)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        error("dump file not found")
        raise Exit(CLI_FAILED) from None
    except OSError as e:
        error(f"failed to read {path}: {e}")
        raise Exit(CLI_FAILED) from None
    try:
        return decode_state(data)
    except AlbatrossError as e:
        error(f"failed to parse {path}: {e.message}")
        raise Exit(CLI_FAILED) from None


def register(cli: click.Group) -> None:
    @cli.group("wire")
    def wire() -> None:
        """Decode and encode albatross DER messages (one hex string / JSON object per line)."""

    @wire.command("decode")
    @click.option("--kind", type=click.Choice(KINDS), default="wire", show_default=True,
                  help="wire message, certificate extension value, or state file")
    def wire_decode(kind: str) -> int:
        """Read hex strings on stdin, print one JSON object per line."""
        for line in sys.stdin:
            if not line.strip():
                continue
            click.echo(json.dumps(decode_hex(kind, line)))
        return 0

    @wire.command("encode")
    @click.option("--kind", type=click.Choice(KINDS), default="wire", show_default=True)
    def wire_encode(kind: str) -> int:
        """Read JSON objects on stdin (one per line), print their DER as hex."""
        failed = False
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                click.echo(encode_json(kind, json.loads(line)).hex())
            except (AlbatrossError, ValueError) as e:
                msg = e.message if isinstance(e, AlbatrossError) else str(e)
                click.echo(json.dumps({"error": msg}))
                failed = True
        return 1 if failed else 0

    @cli.command("inspect-dump")
    @click.option("--file", "file", default=None, help="State file (a bare name is relative to --dbdir).")
    @click.option("--dbdir", default=None, help="Database directory (default /var/lib/albatross on Linux).")
    @logging_options
    def inspect_dump(file, dbdir) -> int:
        """Print the unikernels and policies of a state file."""
        st = _read_state(file, dbdir)
        app(f"parsed {len(st.unikernels)} unikernels:")
        for name, cfg in st.unikernels:
            app(pretty.config_wrapped(f"{name.pretty()}: ", cfg))
        app(f"parsed {len(st.policies)} policies:")
        for name, pol in st.policies:
            app(f"{name.pretty()}: {pretty.policy(pol)}")
        return 0

    @cli.command("extract-dump")
    @click.argument("name")
    @click.option("--file", "file", default=None, help="State file (a bare name is relative to --dbdir).")
    @click.option("--dbdir", default=None, help="Database directory.")
    @logging_options
    def extract_dump(name, file, dbdir) -> int:
        """Write the image of unikernel NAME from a state file to a file."""
        wanted = parse_name(name)
        st = _read_state(file, dbdir)
        for n, cfg in st.unikernels:
            if n == wanted:
                image = cfg.image
                if cfg.compressed:
                    try:
                        image = Z.inflate(image, Z.DEFAULT_MAX_IMAGE, "image")
                    except Z.InflateError as e:
                        error(f"failed to uncompress image: {e.message}")
                        raise Exit(CLI_FAILED) from None
                path = dump_filename(n)
                with open(path, "wb") as fh:
                    fh.write(image)
                app(f"dumped image to {path}")
                app(pretty.config_wrapped("", cfg, verbose=True))
                return 0
        error("unikernel not found")
        raise Exit(CLI_FAILED)
