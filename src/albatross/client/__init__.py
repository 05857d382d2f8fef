"""albatross-client: every command, local and remote, and the PKI operations.

Subcommands live in the modules of this package; each module has a
``register(cli)`` function that adds its commands to the group.
"""

from __future__ import annotations

import importlib
import sys

import click

from .common import CLI_FAILED, INTERNAL_ERROR, CliError, Exit, error

#: modules contributing subcommands (each defines ``register(cli)``)
MODULES = ["wirecmds", "unikernel", "console_stats", "pki", "update"]


class _Group(click.Group):
    def resolve_command(self, ctx, args):
        cmd_name = args[0] if args else None
        if cmd_name is not None and cmd_name not in self.commands and cmd_name != "help":
            raise click.UsageError(
                f"unknown command '{cmd_name}', available commands: " + ", ".join(sorted(self.commands)))
        return super().resolve_command(ctx, args)


@click.group(cls=_Group, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="albatross", message="version %(version)s protocol version 5")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Manage MirageOS unikernels supervised by albatross, locally or remotely."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command("help")
@click.argument("topic", required=False)
@click.pass_context
def help_cmd(ctx: click.Context, topic: str | None) -> None:
    """Show help for a subcommand."""
    if topic is None:
        click.echo(ctx.parent.get_help())
        return
    sub = cli.commands.get(topic)
    if sub is None:
        click.echo(f"unknown command '{topic}', available commands: " + ", ".join(sorted(cli.commands)))
        raise Exit(CLI_FAILED)
    with click.Context(sub, info_name=topic, parent=ctx.parent) as sctx:
        click.echo(sub.get_help(sctx))


def _load() -> None:
    for mod in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{mod}":
                continue  # that part of the client is not written yet
            raise
        module.register(cli)


_load()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to upstream's exit codes."""
    try:
        rv = cli.main(args=argv, prog_name="albatross-client", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except Exit as e:
        code = e.code
    except CliError as e:
        error(e.message)
        code = CLI_FAILED
    except click.exceptions.Abort:
        code = CLI_FAILED
    except click.ClickException as e:
        e.show()
        code = CLI_FAILED
    except click.exceptions.Exit as e:
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as e:  # noqa: BLE001 - the CLI's last resort, like cmdliner's
        error(f"internal error: {e!r}")
        code = INTERNAL_ERROR
    sys.exit(code)
