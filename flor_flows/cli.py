"""The `flor` command: record, sweep, replay and workers on Prefect; ls/show/sql/dataframe over the store.

User errors print one line `flor: error: ...` and exit non-zero (a traceback only with FLOR_DEBUG=1).
"""

from __future__ import annotations

import sys

import click
import typer

from flor_flows import cli_flows, cli_query, plot
from flor_lib import config
from flor_lib.errors import FlorError

app = typer.Typer(
    name="flor", no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Hindsight logging for model training, on Prefect.\n\n"
         "Record: `python train.py --flor NAME` or `flor run train.py -- --hidden 75`. "
         "Look: `flor ls`, `flor show RUN`, `flor dataframe loss`. Scale: `flor sweep`, `flor worker --gpu 0`. "
         "Backfill: `flor replay NAME --where ...`. The store is FLOR_STORE (default ~/.flor).")

app.command("run")(cli_flows.run)
app.command("sweep")(cli_flows.sweep)
app.command("replay")(cli_flows.replay)
app.command("worker")(cli_flows.worker)
app.command("status")(cli_query.status_cmd)
app.command("ls")(cli_query.ls)
app.command("show")(cli_query.show)
app.command("dataframe")(cli_query.dataframe)
app.command("sql")(cli_query.sql)
app.command("resume")(cli_flows.resume)
app.command("sync")(cli_flows.sync)
app.command("plot")(plot.plot)

_HINTS = {"No such option": " (the script's own flags go after --, e.g. flor run train.py -- --hidden 75)"}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `flor` console script; returns (and exits with) the status code."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="flor", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except (typer.Exit, click.exceptions.Exit) as exc:
        code = exc.exit_code
    except (typer.Abort, click.exceptions.Abort):
        print("flor: aborted", file=sys.stderr)
        code = 130
    except (typer.TyperException, click.ClickException) as exc:  # typer vendors its own click
        msg = _one_line(exc.format_message() if hasattr(exc, "format_message") else exc)
        if not msg:  # `flor` alone: the help was shown
            return 0
        words = sys.argv[1:] if argv is None else argv
        if words and words[0] in ("run", "sweep"):
            msg += next((hint for key, hint in _HINTS.items() if key in msg), "")
        print(f"flor: error: {msg}", file=sys.stderr)
        code = getattr(exc, "exit_code", 2)
    except FlorError as exc:
        if config.debug():
            raise
        print(f"flor: error: {_one_line(exc)}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("flor: interrupted", file=sys.stderr)
        code = 130
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
