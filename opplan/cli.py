"""The ``opplan`` command line: thin glue from files to the library and back.

Every :class:`~simulator.errors.OpplanError` becomes one line on stderr
(``opplan: error: FILE: FIELD: message``) and a non-zero exit; no tracebacks for
problems the user can fix. Each sub-command lives in its own module under
:mod:`opplan.commands`, knows nothing of this group, and is added here with
``cli.add_command``; those modules import their heavy dependencies (CVXPY, pandas,
Dask) inside the command, so ``opplan --help`` stays fast.
"""

from __future__ import annotations

import click

from opplan.commands.describe import describe
from opplan.commands.plan import plan_command
from opplan.commands.plot import plot
from opplan.commands.profile import profile_command
from opplan.commands.schedules import compare_command, schedule_command
from opplan.commands.serve import serve
from opplan.commands.simulate import simulate, validate
from opplan.commands.sweep import sweep
from opplan.startup import note_process_start
from simulator.errors import OpplanError, ScheduleRejected
from simulator.reading import recording_inputs

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opplan")
def cli() -> None:
    """Plan and simulate how a model is spread over a GPU cluster."""


for _command in (simulate, validate, schedule_command, compare_command, describe, plan_command, sweep, plot, profile_command, serve):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning domain errors into one-line messages."""
    if argv is None:  # opplan is the program: its start-up counts against --time-limit
        note_process_start()
    try:
        with recording_inputs():  # so that no output can overwrite any file this run read
            cli.main(args=argv, prog_name="opplan", standalone_mode=False)
    except ScheduleRejected as exc:
        click.echo(f"opplan: error: {exc.file + ': ' if exc.file else ''}schedule rejected", err=True)
        for violation in exc.violations:
            click.echo(f"  - {violation.message}", err=True)
        return 1
    except OpplanError as exc:
        click.echo(f"opplan: error: {exc}", err=True)
        return 2
    except (OverflowError, RecursionError, MemoryError) as exc:  # a last guard: the readers should refuse such input first
        reason = " ".join(str(exc).split())[:120]
        click.echo(f"opplan: error: the input is too large to compute with ({type(exc).__name__}: {reason})", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("opplan: interrupted", err=True)
        return 130
    except click.UsageError as exc:  # one line, like every other error; the command's --help has the rest
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"opplan: error: {exc.format_message()}{where}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("opplan: interrupted", err=True)
        return 130
    return 0
