"""The ``opplan`` command line: thin glue from files to the library and back.

Every :class:`~simulator.errors.OpplanError` becomes one line on stderr
(``opplan: error: FILE: FIELD: message``) and a non-zero exit; no tracebacks for
problems the user can fix. Each sub-command lives in its own module under
``planner.commands`` and registers itself on :data:`cli`.
"""

from __future__ import annotations

import importlib
import sys

import click

from simulator.errors import OpplanError, ScheduleRejected

__all__ = ["cli", "main"]

#: Modules that add sub-commands to :data:`cli` (imported for their side effect).
COMMAND_MODULES = (
    "planner.commands.simulate",  # simulate, validate
    "planner.commands.schedules",  # schedule, compare
    "planner.commands.describe",  # describe
    "planner.commands.plan",  # plan
    "planner.commands.sweep",  # sweep
    "planner.commands.plot",  # plot
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opplan")
def cli() -> None:
    """Plan and simulate how a model is spread over a GPU cluster."""


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning domain errors into one-line messages."""
    _register_commands()
    try:
        cli.main(args=argv, prog_name="opplan", standalone_mode=False)
    except ScheduleRejected as exc:
        click.echo(f"opplan: error: {exc.file + ': ' if exc.file else ''}schedule rejected", err=True)
        for violation in exc.violations:
            click.echo(f"  - {violation}", err=True)
        return 1
    except OpplanError as exc:
        click.echo(f"opplan: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("opplan: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("opplan: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    # Run as ``python -m planner.cli`` this file is ``__main__``; the commands register
    # on the importable ``planner.cli``, so call that module's entry point.
    from planner.cli import main as _main

    sys.exit(_main())
