"""`flor plot NAME --by runid [--x step] [-o out.png]`: a logged value against its loop position.

One line per value of `--by` (a run-level column: runid, vid, or any arg such as hidden). x defaults
to the innermost loop's position flattened across the outer loops (epoch 1 continues where epoch 0
ended); `--x LOOP` uses that loop's own index instead. matplotlib with the Agg backend: no display.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flor_lib.errors import FlorError


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


def figure(name: str, by: str = "runid", x: str | None = None, where: str | None = None,
           out: str | Path = "plot.png", title: str | None = None) -> Path:
    """Plot name per `by` group and save the PNG to out; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import flor_lib as flor

    df = flor.dataframe(name, where=where)
    cols = list(df.columns)
    loops = cols[4:cols.index(name)] if name in cols else []
    df = df[df[name].notna()] if name in df else df.iloc[0:0]
    if df.empty:
        raise FlorError(f"no values logged as {name!r}" + (f" in runs where {where}" if where else ""))
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

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, group in df.groupby(by, sort=False, dropna=False):
        group = group.sort_values("_x")
        label = str(key) if by == "runid" else f"{by}={key}"
        ax.plot(group["_x"], group["_y"], marker="." if len(group) < 50 else None, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(name)
    ax.set_title(title or f"{name} by {by}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
