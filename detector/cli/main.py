"""The ``syncguard`` command group: global options and the one place errors are shown.

Commands live one per module in this package and are registered in :data:`COMMANDS`
by name; a command's module is imported only when that command runs or help lists it,
so ``syncguard score`` does not pay for the imports of ``demo`` or ``backtest``. Each
command returns an exit code (or raises :class:`~detector.errors.SyncguardError`), and only
this module decides what a person sees when something goes wrong.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
from typing import Any

import click

from detector import __version__
from detector.errors import EXIT_INTERNAL, SyncguardError
from detector.home import DEFAULT_HOME, HOME_ENV, resolve_home

__all__ = ["cli", "main", "COMMANDS", "FIT_COMMANDS", "RARE_GC_THRESHOLD", "QUICK_EXIT_COMMANDS"]

COMMANDS: dict[str, str] = {
    name: f"detector.cli.{module}" for name, module in (
        ("simulate", "simulate"), ("ingest", "ingest"), ("status", "status"),
        ("backtest", "backtest"), ("demo", "demo"), ("train", "train"),
        ("models", "models"), ("score", "score"), ("resume", "resume"),
        ("label", "label"), ("check-freshness", "freshness"))
}
"""Registered subcommands: name -> the module whose ``command`` it is; a new command
module adds itself here."""

DEBUG_ENV = "SYNCGUARD_DEBUG"

RARE_GC_THRESHOLD = 50_000
"""Container allocations between young-generation garbage collections in a syncguard
process (CPython's default is 700)."""

FIT_COMMANDS = frozenset({"train", "backtest", "demo"})
"""Commands that fit models: polars' allocator is tuned for fitting before they import
polars (:func:`training.allocator.tune_polars`)."""

QUICK_EXIT_COMMANDS = frozenset({"score"})
"""Commands whose process ends without the interpreter's teardown (see :func:`main`): each
has committed, fsynced and closed everything it writes by the time it returns or raises."""


class SyncguardGroup(click.Group):
    """A click group that turns errors into one line on stderr and an exit code.

    - :class:`SyncguardError`: ``error: <message>`` and the error's ``exit_code``;
    - any other exception: ``error: internal error: <type>: <message>`` and exit 1.

    Click's own usage errors keep click's handling (exit 2). Set ``SYNCGUARD_DEBUG=1``
    to get the traceback instead.

    Commands come from :data:`COMMANDS`, each module imported on first use (a cold
    ``syncguard score`` imports the score path only).
    """

    resolved: str | None = None
    """The command last looked up (the one that runs, unless help lists them all)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        if cmd_name in FIT_COMMANDS:
            from training import allocator  # no polars: its settings must come first

            allocator.tune_polars()
        command: click.Command = importlib.import_module(module).command
        self.resolved = cmd_name
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except SyncguardError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:  # the edge: nothing may escape as a traceback
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(f"error: internal error: {type(exc).__name__}: {exc} "
                       f"(set {DEBUG_ENV}=1 for details)", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=SyncguardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", metavar="DIR", envvar=HOME_ENV, show_envvar=True,
              help=f"State directory (store, MLflow, model cache). Default: ./{DEFAULT_HOME}")
@click.version_option(__version__, "--version", prog_name="syncguard")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """syncguard: score identity-connector syncs against each connector's learned normal
    behaviour, and pause the ones that cannot be trusted."""
    ctx.obj = resolve_home(home)


def main() -> None:
    """The ``syncguard`` program: :func:`cli`, collecting garbage rarely.

    A command's imports and a scoring batch allocate a few hundred thousand container
    objects that live on (modules, classes) or that reference counting frees (records,
    events), with few cycles among them; at CPython's default threshold the collector ran
    ~300 times in a cold ``syncguard score`` of 3,087 syncs, 0.1-0.15 s of CPU finding
    next to nothing. Cycles are still collected, only later; the process ends after its
    one command, so nothing needs restoring. A command in :data:`QUICK_EXIT_COMMANDS`
    ends its process without the interpreter's teardown (:func:`_quick_exit`).
    """
    gc.set_threshold(RARE_GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        cli()
    except SystemExit as exc:
        if cli.resolved in QUICK_EXIT_COMMANDS:
            _quick_exit(exc.code)
        raise


def _quick_exit(code: object) -> None:
    """End the process with ``code`` now, skipping the interpreter's teardown.

    The teardown frees every module and object one by one (polars' and numpy's modules,
    a batch's records and events): ~0.1 s of CPU at the end of every ``syncguard
    score``, for memory the kernel takes back at once anyway. It only runs after the
    command returned or raised, so the store is committed and closed and the event files
    fsynced and closed; the standard streams are flushed here. Returns, so the caller
    exits the ordinary way, when that could lose something: a code that is not a
    number, another Python thread still running, or a stream that does not flush (a
    closed pipe: the ordinary exit reports it as before).
    """
    code = 0 if code is None else code
    if type(code) is not int or threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


if __name__ == "__main__":  # python -m detector.cli.main, used by tests and benchmarks
    main()
