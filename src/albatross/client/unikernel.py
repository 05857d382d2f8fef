"""Unikernel, policy and block device subcommands of albatross-client
(behaviour.md §7.2-§7.4): they build one albatrossd command each and hand
it to :func:`run_command` (local socket, remote TLS or CSR)."""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections.abc import Iterable, Iterator

import click

from ..core import BlockDevice, FailBehaviour, NetDevice, Policy, UnikernelArguments, UnikernelConfig
from ..errors import AlbatrossError, PolicyError
from ..policy.names import Name, mac_of_string, path_of_string
from ..policy import validate
from ..policy.policies import usable
from ..solo5 import elf
from ..wire import jsonform
from ..wire import messages as m
from ..wire.messages import Wire
from .common import (
    CLI_FAILED, SUCCESS, CliError, Exit, ReplyHandler, Target, error, file_chunks, parse_name,
    run_command, target_options, warn,
)

# ------------------------------------------------------------------ parsing


def parse_block(s: str) -> BlockDevice:
    """``name[:host-device][@sector-size]``; the sector size is a power of two >= 512."""
    parts = s.split("@")
    if len(parts) > 2:
        raise click.BadParameter("format is 'name[@sector-size]' or 'name:device-name[@sector-size]'")
    sector = None
    if len(parts) == 2:
        try:
            sector = int(parts[1])
        except ValueError:
            raise click.BadParameter("sector size must be an integer") from None
        if sector < 512 or sector & (sector - 1):
            raise click.BadParameter("sector size must be a power of two greater than or equal 512")
    name, device = _colon_separated(parts[0])
    return BlockDevice(name, device, sector)


def parse_net(s: str) -> NetDevice:
    """``[name:]bridge[@mac]``: ``x`` is name x on bridge x, ``a:b`` is name a on bridge b."""
    parts = s.split("@")
    if len(parts) > 2:
        raise click.BadParameter("format is [name:]bridge[@mac]")
    mac = None
    if len(parts) == 2:
        try:
            mac = mac_of_string(parts[1])
        except AlbatrossError as e:
            raise click.BadParameter(e.message) from None
    name, bridge = _colon_separated(parts[0])
    return NetDevice(name, bridge, mac)


def _colon_separated(s: str) -> tuple[str, str | None]:
    parts = s.split(":")
    if len(parts) == 1:
        return s, None
    if len(parts) == 2:
        return parts[0], parts[1]
    raise click.BadParameter("format is 'name' or 'name:device-name'")


def _block_cb(_ctx, _param, values):
    return tuple(parse_block(v) for v in values)


def _net_cb(_ctx, _param, values):
    return tuple(parse_net(v) for v in values)


def _name_cb(_ctx, _param, value):
    return None if value is None else parse_name(value)


def _path_cb(_ctx, _param, value):
    try:
        return Name.of_path(path_of_string(value))
    except AlbatrossError as e:
        raise click.BadParameter(e.message) from None


# ------------------------------------------------------------------ options

def unikernel_arguments(f):
    """The options shared by create and restart (upstream defaults)."""
    options = [
        click.option("--startup", type=int, default=None, help="Startup priority (default 50)."),
        click.option("--no-add-name", is_flag=True, help="Do not pass --name to the unikernel."),
        click.option("--cpu", "cpus", type=int, multiple=True, default=(0,), show_default=True,
                     help="CPUid to use (repeatable)."),
        click.option("--mem", "memory", type=int, default=32, show_default=True, help="Memory in MB."),
        click.option("--arg", "argv", multiple=True, help="Argument for the unikernel (repeatable)."),
        click.option("--block", "blocks", multiple=True, callback=_block_cb, metavar="NAME[:DEV][@SECTOR]",
                     help="Block device (repeatable)."),
        click.option("--net", "nets", multiple=True, callback=_net_cb, metavar="[NAME:]BRIDGE[@MAC]",
                     help="Network device (repeatable)."),
        click.option("--restart-on-fail", "--restart", "restart_on_fail", is_flag=True,
                     help="Restart the unikernel when it exits."),
        click.option("--exit-code", "exit_codes", type=int, multiple=True,
                     help="Exit code to restart on (repeatable; default all but 1, 60-64)."),
        click.option("--cpus", "numcpus", type=int, default=1, show_default=True, help="Number of CPUs (bhyve)."),
        click.option("--linux-boot", "linux_boot", default=None, help="Linux boot partition (bhyve)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def check_sets(nets: tuple[NetDevice, ...], blocks: tuple[BlockDevice, ...]) -> None:
    if len({n.name for n in nets}) != len(nets):
        raise CliError("Bridge names must be a set")
    if len({b.name for b in blocks}) != len(blocks):
        raise CliError("Block devices must be a set")


def fail_behaviour(restart_on_fail: bool, exit_codes: tuple[int, ...]) -> FailBehaviour:
    if not restart_on_fail:
        return FailBehaviour.quit()
    return FailBehaviour(True, frozenset(exit_codes) if exit_codes else None)


def checked(check, *args) -> None:
    """Run a :mod:`~albatross.policy.validate` check; its failure is a command-line error."""
    try:
        check(*args)
    except PolicyError as e:
        raise CliError(e.message) from None


def check_manifest(image: bytes, nets, blocks) -> None:
    probe = UnikernelConfig(block_devices=blocks, bridges=nets)
    try:
        elf.check_manifest(elf.query_manifest(image), probe)
    except AlbatrossError as e:
        raise CliError(e.message) from None


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise CliError(f"failed to read {path}: {e.strerror}") from None


# ------------------------------------------------------------------ output

class JsonHandler(ReplyHandler):
    """Print the success reply as its JSON form (``--json``)."""

    def handle(self, w: Wire) -> int | None:
        if isinstance(w.payload, m.Reply):
            click.echo(json.dumps(jsonform.wire_to_json(w)))
            return SUCCESS
        return super().handle(w)


def send(target: Target, name: Name, cmd: m.Cmd, as_json: bool = False,
         upload: Iterable[bytes] | None = None) -> int:
    handler = JsonHandler(cmd, name) if as_json else None
    code = run_command(target, name, cmd, upload, handler)
    raise Exit(code)


def with_progress(chunks: Iterable[bytes], total: int, label: str) -> Iterator[bytes]:
    """Pass chunks through, showing a progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield from chunks
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


def _raw_progress_chunks(path: str, level: int) -> Iterator[bytes]:
    """file_chunks, with the progress bar counting raw bytes read."""
    if not sys.stderr.isatty():
        yield from file_chunks(path, level)
        return
    with click.progressbar(length=os.path.getsize(path), label="uploading", file=sys.stderr) as bar:
        yield from file_chunks(path, level, on_read=bar.update)


# ------------------------------------------------------------------ commands

def register(cli: click.Group) -> None:  # noqa: C901 - a flat list of subcommands
    name_arg = click.argument("name", callback=_name_cb)
    level_opt = click.option("--compression-level", "level", type=click.IntRange(0, 9), default=None,
                             help="Compression level 0-9 (default 0 locally, 9 remotely).")
    json_opt = click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")

    @cli.command("create")
    @click.argument("name", callback=_name_cb)
    @click.argument("image", type=click.Path(exists=True, dir_okay=False))
    @click.option("-f", "--force", is_flag=True, help="Replace a running unikernel of the same name.")
    @click.option("--typ", type=click.Choice(["solo5", "bhyve"]), default="solo5", show_default=True)
    @unikernel_arguments
    @level_opt
    @target_options
    def create(name, image, force, typ, startup, no_add_name, cpus, memory, argv, blocks, nets,
               restart_on_fail, exit_codes, numcpus, linux_boot, level, target):
        """Create a unikernel from IMAGE."""
        checked(validate.unikernel_name, name)
        check_sets(nets, blocks)
        level = target.compression(level)
        if typ == "solo5":
            data = read_file(image)
            check_manifest(data, nets, blocks)
            compressed = level > 0
            if compressed:
                data = zlib.compress(data, level)
        else:
            data, compressed = b"", False
        if not cpus:
            raise CliError("CPUids may not be empty")
        config = UnikernelConfig(
            typ=typ, compressed=compressed, image=data,
            fail_behaviour=fail_behaviour(restart_on_fail, exit_codes), startup=startup,
            add_name=not no_add_name, cpuids=frozenset(cpus), memory=memory, block_devices=blocks,
            bridges=nets, argv=tuple(argv) if argv else None, numcpus=numcpus,
            linux_boot_partition=linux_boot)
        checked(validate.config, config)
        send(target, name, m.UnikernelCreate(config, force=force))

    @cli.command("restart")
    @name_arg
    @click.option("--replace-arguments", "replace", is_flag=True, help="Replace the arguments of the unikernel.")
    @unikernel_arguments
    @target_options
    def restart(name, replace, startup, no_add_name, cpus, memory, argv, blocks, nets, restart_on_fail,
                exit_codes, numcpus, linux_boot, target):
        """Restart a unikernel (optionally with new arguments)."""
        checked(validate.unikernel_name, name)
        args = None
        if replace:
            check_sets(nets, blocks)
            if not cpus:
                raise CliError("CPUids cannot be empty")
            checked(validate.config, UnikernelConfig(cpuids=frozenset(cpus), memory=memory, block_devices=blocks,
                                                     bridges=nets, argv=tuple(argv) if argv else None,
                                                     numcpus=numcpus))
            args = UnikernelArguments(
                fail_behaviour=fail_behaviour(restart_on_fail, exit_codes), startup=startup,
                add_name=not no_add_name, cpuids=frozenset(cpus), memory=memory, block_devices=blocks,
                bridges=nets, argv=tuple(argv) if argv else None, numcpus=numcpus,
                linux_boot_partition=linux_boot)
        send(target, name, m.UnikernelRestart(args))

    @cli.command("destroy")
    @name_arg
    @target_options
    def destroy(name, target):
        """Destroy a unikernel."""
        send(target, name, m.UnikernelDestroy())

    @cli.command("info")
    @click.option("-n", "--name", "name", default=":", callback=_name_cb, help="Name or path (default all).")
    @json_opt
    @target_options
    def info(name, as_json, target):
        """Information about unikernels."""
        send(target, name, m.UnikernelInfoCmd(), as_json)

    @cli.command("get")
    @name_arg
    @level_opt
    @target_options
    def get(name, level, target):
        """Download the image of a unikernel."""
        send(target, name, m.UnikernelGet(target.compression(level)))

    # -- policies -----------------------------------------------------------------
    def add_policy(path, unikernels, memory, cpus, block, bridges, target):
        if len(set(bridges)) != len(bridges):
            warn("Bridges is not a set")
        if len(set(cpus)) != len(cpus):
            warn("CPUids is not a set")
        policy = Policy(unikernels, frozenset(cpus), memory, block, frozenset(bridges))
        checked(validate.policy, policy)
        try:
            usable(policy)
        except AlbatrossError as e:
            error(e.message)
            raise Exit(CLI_FAILED) from None
        if not policy.bridges:
            warn("policy without any network access")
        send(target, path, m.PolicyAdd(policy))

    for cmd_name in ("add-policy", "replace-policy"):
        @cli.command(cmd_name)
        @click.argument("path", callback=_path_cb)
        @click.argument("unikernels", type=int)
        @click.option("--mem", "memory", type=int, default=512, show_default=True, help="Memory in MB.")
        @click.option("--cpu", "cpus", type=int, multiple=True, default=(0,), show_default=True,
                      help="CPUid to allow (repeatable).")
        @click.option("--block", "--size", "block", type=int, default=None, help="Block storage in MB.")
        @click.option("--network", "--bridge", "bridges", multiple=True, help="Bridge to allow (repeatable).")
        @target_options
        def _add(path, unikernels, memory, cpus, block, bridges, target):
            """Add or replace a policy."""
            add_policy(path, unikernels, memory, cpus, block, bridges, target)

    @cli.command("remove-policy")
    @click.option("-p", "--path", "path", default="", callback=_path_cb, help="Path (default root).")
    @target_options
    def remove_policy(path, target):
        """Remove a policy."""
        checked(validate.removable_policy, path.path)
        send(target, path, m.PolicyRemove())

    @cli.command("policy")
    @click.option("-p", "--path", "path", default="", callback=_path_cb, help="Path (default root).")
    @json_opt
    @target_options
    def policy(path, as_json, target):
        """Show the policies of a path and below."""
        send(target, path, m.PolicyInfoCmd(), as_json)

    # -- block devices ---------------------------------------------------------------
    def set_block(name: Name, path: str, level: int, target: Target) -> int:
        cmd = m.BlockSet(level > 0)
        return run_command(target, name, cmd, _raw_progress_chunks(path, level))

    @cli.command("create-block")
    @name_arg
    @click.argument("size", type=int)
    @click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Initial content of the block device.")
    @level_opt
    @target_options
    def create_block(name, size, data, level, target):
        """Create a block device of SIZE MB."""
        checked(validate.unikernel_name, name, "block device")
        checked(validate.block_size, size)
        if data is not None and size * 1024 * 1024 < os.path.getsize(data):
            raise CliError("data exceeds size")
        code = run_command(target, name, m.BlockAdd(size))
        if data is None:
            raise Exit(code)
        # upstream sends the data regardless of the add result
        raise Exit(set_block(name, data, target.compression(level), target))

    @cli.command("set-block")
    @name_arg
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @level_opt
    @target_options
    def set_block_cmd(name, file, level, target):
        """Replace the content of a block device with FILE."""
        raise Exit(set_block(name, file, target.compression(level), target))

    @cli.command("dump-block")
    @name_arg
    @level_opt
    @target_options
    def dump_block(name, level, target):
        """Download the content of a block device."""
        send(target, name, m.BlockDump(target.compression(level)))

    @cli.command("destroy-block")
    @name_arg
    @target_options
    def destroy_block(name, target):
        """Destroy a block device."""
        send(target, name, m.BlockRemove())

    @cli.command("block")
    @click.option("--name", "name", default=":", callback=_name_cb, help="Name or path (default all).")
    @json_opt
    @target_options
    def block(name, as_json, target):
        """Information about block devices."""
        send(target, name, m.BlockInfoCmd(), as_json)


__all__ = ["register", "parse_block", "parse_net", "with_progress"]
