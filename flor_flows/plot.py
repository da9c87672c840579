"""`flor plot NAME --by runid [--x step] [-o out.png]`: a logged value against its loop position.

One line per value of `--by` (a run-level column: runid, vid, or any arg such as hidden). x defaults
to the innermost loop's position flattened across the outer loops (epoch 1 continues where epoch 0
ended); `--x LOOP` uses that loop's own index instead. Sweep and replay flows attach the same kind of
figure to their Prefect run as a markdown artifact (flow_artifact). matplotlib is imported only when
drawing, and only through its Agg canvas (no pyplot state, no display), so flows may draw from threads.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import typer

from flor_lib.errors import FlorError

MAX_PANELS = 4  # a flow figure stays small enough to embed in an artifact
MAX_LEGEND = 12


def flat_x(df, loops: list[str]):
    """Per run: the innermost loop index, offset by the sizes of the outer positions before it."""
    import pandas as pd

    if not loops:
        return pd.Series(range(len(df)), index=df.index, dtype="int64")
    inner, outer = loops[-1], loops[:-1]
    x = pd.Series(0, index=df.index, dtype="int64")
    for _, run in df.groupby("runid", sort=False):
        run = run.sort_values(loops)
        if not outer:
            x.loc[run.index] = run[inner].fillna(0).astype("int64")
            continue
        sizes = run.groupby(outer, sort=True, dropna=False)[inner].max().fillna(0).astype("int64") + 1
        offsets = sizes.cumsum() - sizes
        keys = run[outer].apply(tuple, axis=1) if len(outer) > 1 else run[outer[0]]
        off = keys.map(offsets.to_dict()).fillna(0).astype("int64")
        x.loc[run.index] = off + run[inner].fillna(0).astype("int64")
    return x


def _series(df, name: str, by: str, x: str | None):
    """The rows of name with _x and _y columns, and the x label; FlorError when there is nothing to plot."""
    cols = list(df.columns)
    loops = cols[4:cols.index(name)] if name in cols else []
    df = df[df[name].notna()] if name in df else df.iloc[0:0]
    if df.empty:
        raise FlorError(f"no values logged as {name!r}")
    if by not in df.columns:
        raise FlorError(f"--by {by!r} is not a column; try runid, vid or one of the args")
    if x is None:
        df = df.assign(_x=flat_x(df, loops))
        xlabel = f"{loops[-1]} (across {', '.join(loops[:-1])})" if len(loops) > 1 else (loops[0] if loops else "n")
    elif x in df.columns:
        df = df.assign(_x=df[x])
        xlabel = x
    else:
        raise FlorError(f"--x {x!r} is not a loop of {name!r}; loops: {', '.join(loops) or 'none'}")
    try:
        df = df.assign(_y=df[name].astype(float))
    except (TypeError, ValueError):
        raise FlorError(f"{name!r} has non-numeric values; nothing to plot") from None
    return df, xlabel, loops


def _draw(ax, df, name: str, by: str, xlabel: str, title: str) -> None:
    groups = list(df.groupby(by, sort=False, dropna=False))
    for key, group in groups:
        group = group.sort_values("_x")
        label = str(key) if by == "runid" else f"{by}={key}"
        ax.plot(group["_x"], group["_y"], marker="." if len(group) < 50 else None, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(groups) <= MAX_LEGEND:
        ax.legend(fontsize="small", loc="best")


def _draw_bars(ax, df, name: str, by: str, title: str) -> None:
    """A name logged outside every loop: one value per run, so one bar per group."""
    last = df.groupby(by, sort=False, dropna=False)["_y"].last()
    bars = ax.bar([str(k) for k in last.index], last.to_numpy())
    ax.bar_label(bars, fmt="%.4g", fontsize="small")  # bars from 0 hide small differences: print the values
    ax.margins(y=0.15)
    ax.set_ylabel(name)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.tick_params(axis="x", labelrotation=30 if len(last) > 4 else 0, labelsize="small")


def _new_figure(figsize: tuple[float, float], dpi: int, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def figure(name: str, by: str = "runid", x: str | None = None, where: str | None = None,
           out: str | Path = "plot.png", title: str | None = None) -> Path:
    """Plot name per `by` group and save the PNG to out; returns its path."""
    import flor_lib as flor

    try:
        df, xlabel, _ = _series(flor.dataframe(name, where=where), name, by, x)
    except FlorError as exc:
        if where and str(exc).startswith("no values"):
            raise FlorError(f"{exc} in runs where {where}") from None
        raise
    fig, (ax,) = _new_figure((8, 4.5), 100)
    _draw(ax, df, name, by, xlabel, title or f"{name} by {by}")
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def runs_where(keys: list[tuple[str, str]]) -> str:
    """A --where condition selecting exactly these (projid, runid) runs."""
    def lit(text: str) -> str:
        return "'" + str(text).replace("'", "''") + "'"

    return " OR ".join(f"(projid = {lit(p)} AND runid = {lit(r)})" for p, r in keys) or "FALSE"


def runs_png(names: list[str], keys: list[tuple[str, str]], store: Any = None, dpi: int = 80) -> bytes | None:
    """A small PNG: one panel per numeric name (at most MAX_PANELS), one line (or bar) per run; None if none."""
    import flor_lib as flor

    where = runs_where(keys)
    panels = []
    for name in names:
        if len(panels) == MAX_PANELS:
            break
        try:
            df, xlabel, loops = _series(flor.dataframe(name, where=where, store=store), name, "runid", None)
        except FlorError:  # not logged by these runs, or not numbers: leave it out
            continue
        panels.append((name, df, xlabel, not loops or df[loops].isna().all(axis=None)))
    if not panels:
        return None
    fig, axes = _new_figure((7, 2.8 * len(panels)), dpi, rows=len(panels))
    for ax, (name, df, xlabel, top_level) in zip(axes, panels, strict=True):
        if top_level:
            _draw_bars(ax, df, name, "runid", f"{name} per run")
        else:
            _draw(ax, df, name, "runid", xlabel, f"{name} per run")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def markdown_png(png: bytes, title: str, caption: str = "") -> str:
    """Markdown embedding a PNG as a base64 data: URI (Prefect artifacts cannot reference local files)."""
    data = base64.b64encode(png).decode("ascii")
    return f"## {title}\n\n![{title}](data:image/png;base64,{data})\n" + (f"\n{caption}\n" if caption else "")


def flow_artifact(names: list[str], keys: list[tuple[str, str]], *, key: str, title: str, store: Any = None,
                  caption: str = "") -> str | None:
    """Attach the runs' plot to the current flow run as a markdown artifact; returns its key, or None.

    Never fails the flow: nothing numeric to plot, or a plotting error, is one log line.
    """
    from prefect.artifacts import create_markdown_artifact

    from flor_flows.runtime import run_logger

    log = run_logger()
    try:
        png = runs_png(list(names), list(keys), store=store)
    except Exception as exc:  # a figure is a courtesy: the flow's results are already in the store
        log.warning("no plot attached: %s: %s", type(exc).__name__, exc)
        return None
    if png is None:
        log.info("no plot attached: no numeric values of %s in %d run(s)", ", ".join(names) or "any name", len(keys))
        return None
    create_markdown_artifact(markdown_png(png, title, caption), key=key, description=title)
    return key


def plot(name: str = typer.Argument(..., help="The logged name to plot (e.g. loss)."),
         by: str = typer.Option("runid", "--by", "-b", help="One line per value of this run-level column."),
         x: str | None = typer.Option(None, "--x", help="A loop to use as x (default: innermost, flattened)."),
         where: str | None = typer.Option(None, "--where", "-w", help="SQL condition on run-level columns."),
         out: str = typer.Option("plot.png", "--output", "-o", help="The PNG to write."),
         title: str | None = typer.Option(None, "--title", help="Figure title.")) -> None:
    """Plot a logged value per run (or per arg) against its loop position, as a PNG.

    Examples: `flor plot loss --by runid -o loss.png` | `flor plot loss --by hidden --where "lr = 0.001"` |
    `flor plot loss --x epoch`
    """
    path = figure(name, by=by, x=x, where=where, out=out, title=title)
    print(f"wrote {path}")
