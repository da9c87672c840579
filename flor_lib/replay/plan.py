"""Planning a replay: which runs, which code, and the least re-execution each run needs."""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flor_lib import ckpt_files, versions
from flor_lib.errors import FlorError
from flor_lib.replay.segment import Segment
from flor_lib.replay.transplant import TransplantError, find_log_statements, transplant
from flor_lib.store import Store


@dataclass
class ReplayPlan:
    """Every segment to run, and every run that cannot be replayed with the reason."""

    replay_id: str
    names: list[str]
    segments: list[Segment] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    force: bool = False

    def describe(self) -> str:
        """The plan as text, with a cost estimate from recorded timings (for --dry-run)."""
        named = ", ".join(f"{n} ({self.levels.get(n, '?')})" for n in self.names)
        lines = [f"replay {self.replay_id}: {named}"]
        runs = sorted({s.runid for s in self.segments})
        total = sum(s.estimate_s for s in self.segments)
        lines.append(f"{len(runs)} run(s), {len(self.segments)} segment(s), ~{total:.1f}s of work in all")
        lines += ["  " + s.describe() for s in self.segments]
        lines += [f"  skip {d['runid']}: {d['reason']}" for d in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _level_kind(stmt, first_loop_line: int | None) -> str:
    if stmt.level == "outside":
        return "after" if first_loop_line is not None and stmt.lineno > first_loop_line else "before"
    if stmt.level in ("inner", "outer_before", "outer"):
        return "inner"
    return "outer_after"


def iteration_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into at most parts contiguous, nearly equal ranges."""
    parts = max(1, min(parts, n))
    size = math.ceil(n / parts)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _segments_for_run(meta: dict, kinds: set[str], nested: bool, parts: int) -> list[tuple[int, int, int, list[int], bool]]:
    """(start, stop, record_from, restore, final) per segment for one run."""
    n = int(meta.get("outer_iters") or 0)
    have = sorted(c["iter"] for c in meta.get("checkpoints", []))
    if "inner" in kinds or ("outer_after" in kinds and not nested):
        out = []
        for a, b in iteration_ranges(n, parts) or [(0, 0)]:
            warm = max((c for c in have if c <= a - 1), default=None) if a > 0 else None
            if warm is None:
                out.append((0, b, a, [], b >= n))
            else:  # nested: iteration warm restores its nested loop; otherwise the loop starts after warm
                out.append((warm if nested else warm + 1, b, a, [warm], b >= n))
        return out
    if "outer_after" in kinds:
        out = []
        for a, b in iteration_ranges(n, parts):
            warm = a if a in have else max((c for c in have if c < a), default=None)
            start = warm if warm is not None else 0
            restore = [i for i in have if start <= i < b]
            out.append((start, b, a, restore, b >= n))
        return out
    if "after" in kinds:
        if not have:  # no checkpoint at all: re-execute the loops
            return _segments_for_run(meta, {"inner"}, nested, 1)
        last = have[-1]  # the final one, or the nearest earlier one (then the iterations after it re-execute)
        return [(last if nested else last + 1, n, n, [last], True)]
    return [(0, 0, 0, [], False)]  # statements before the loops: setup only


def plan_replay(names: list[str], where: str | None = None, force: bool = False, workers: int = 2,
                store: Store | None = None, script: str | None = None, prewarm: bool = False) -> ReplayPlan:
    """Select runs by where, carry the statements logging names into each run's code, and split the work."""
    from flor_lib.query import Connection

    store = store or Store()
    if not names:
        raise FlorError("name at least one value to replay, e.g. `flor replay accuracy`")
    conn = Connection(store)
    selected = conn.select_runs(where)
    plan = ReplayPlan(replay_id=uuid.uuid4().hex[:12], names=list(names), force=force)
    done = _backfilled(conn)
    metas = [store.run_meta(p, r) for p, r in zip(selected["projid"], selected["runid"], strict=True)]
    metas = [m for m in metas if m]
    new_sources: dict[tuple[str, str], tuple[str, list]] = {}
    todo = []
    for meta in metas:
        if not meta.get("vid") or not meta.get("repo"):
            plan.skipped.append({"runid": meta["runid"], "vid": None, "reason": "recorded without a code version"})
            continue
        key = (meta["repo"], meta["filename"])
        if key not in new_sources:
            path = Path(script) if script else Path(meta["repo"]) / meta["filename"]
            try:
                source = path.read_text()
            except OSError as exc:
                raise FlorError(f"cannot read {path} ({exc.strerror}): replay runs from the repository") from exc
            new_sources[key] = (source, find_log_statements(source, names, path.name), _first_loop_line(source))
        source, stmts, first_loop_line = new_sources[key]
        wanted = [s for s in stmts if force or (meta["runid"], s.name) not in done]
        if not wanted:
            plan.skipped.append({"runid": meta["runid"], "vid": meta["vid"],
                                 "reason": "already backfilled (use --force to replay again)"})
            continue
        todo.append((meta, wanted, first_loop_line))
    for _, stmts, _ in todo:
        for s in stmts:
            plan.levels[s.name] = s.level
    parts = max(1, math.ceil(workers / max(1, len(todo))))
    patched: dict[tuple[str, tuple[str, ...]], str | TransplantError] = {}
    for meta, stmts, first_loop_line in todo:
        pkey = (meta["vid"], tuple(s.name for s in stmts))
        if pkey not in patched:
            try:
                old = versions.show_file(Path(meta["repo"]), meta["vid"], meta["filename"])
                patched[pkey] = transplant(old, stmts, meta["filename"]).source
            except TransplantError as exc:
                patched[pkey] = exc
            except Exception as exc:  # the snapshot or repo is gone
                patched[pkey] = TransplantError(f"cannot read version {meta['vid'][:8]}: {exc}")
        code = patched[pkey]
        if prewarm and not isinstance(code, TransplantError):
            prewarm = False  # one server, for the first version's imports: the others start on demand
            _prewarm(plan.replay_id, code, meta["repo"])
        if isinstance(code, TransplantError):
            plan.skipped.append({"runid": meta["runid"], "vid": meta["vid"], "reason": str(code)})
            continue
        meta = _with_existing_checkpoints(store, meta, plan)
        nested = _has_nested_loop(code)
        kinds = {_level_kind(s, first_loop_line) for s in stmts}
        per_iter = _seconds_per_iteration(meta)
        for i, (start, stop, record_from, restore, final) in enumerate(
                _segments_for_run(meta, kinds, nested, _worth_splitting(meta, parts, per_iter))):
            executed = (stop - start) - len([r for r in restore if start <= r < stop and nested])
            plan.segments.append(Segment(
                replay_id=plan.replay_id, key=f"{meta['runid']}-{i}", projid=meta["projid"], runid=meta["runid"],
                vid=meta["vid"], names=[s.name for s in stmts], start=start, stop=stop, record_from=record_from,
                restore=restore, final=final, first=(i == 0), nested=nested, patched_source=code, meta=meta,
                store_root=store.root, estimate_s=round(1.0 + executed * per_iter, 2)))
    return plan


def worktrees_root() -> Path:
    """Where each replay checks out the old versions it runs (one folder per replay)."""
    return Path.home() / ".cache" / "flor" / "worktrees"


def local_roots(repo: str) -> list[str]:
    """Folders whose modules are the user's own code: never imported by a fork server."""
    return [repo, str(worktrees_root())]


def _prewarm(replay_id: str, code: str, repo: str) -> None:
    # the first version's libraries import while the other runs are planned and worktrees are made
    from flor_lib.replay import zygote

    zygote.POOL.prewarm(replay_id, zygote.imports_of(code), local_roots(repo), dict(os.environ))


def _with_existing_checkpoints(store: Store, meta: dict, plan: ReplayPlan) -> dict:
    """Drop checkpoints listed in metadata whose files are gone, and say so in the plan."""
    listed = meta.get("checkpoints", [])
    if not listed:
        return meta
    try:
        files = {i["name"].rsplit("/", 1)[-1]: i.get("size") or 0
                 for i in store.fs.ls(store.checkpoint_dir(meta["projid"], meta["runid"]), detail=True)}
    except FileNotFoundError:
        files = {}
    kept = ckpt_files.present(listed, files)  # a file gone, or a pack cut short
    kept_ids = {id(c) for c in kept}  # (a 2500-epoch run: no list scan per checkpoint)
    missing = [c["iter"] for c in listed if id(c) not in kept_ids]
    if missing:
        plan.notes.append(f"{meta['runid']}: checkpoint(s) at iteration {', '.join(map(str, missing))} missing; "
                          "re-executing from the nearest earlier one")
    return {**meta, "checkpoints": kept}


def backfilled(conn) -> set[tuple[str, str]]:
    """(runid, name) pairs that a replay has already landed."""
    return _backfilled(conn)


def _backfilled(conn) -> set[tuple[str, str]]:
    rows = conn.con.execute("SELECT DISTINCT runid, name FROM logs WHERE source = 'replay'").fetchall()
    return {(r, n) for r, n in rows}


def _has_nested_loop(source: str) -> bool:
    import ast

    return _nested_by_ast(ast.parse(source))


def _is_flor_loop(node) -> bool:
    import ast

    return isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and (
        getattr(node.iter.func, "attr", None) == "loop" or getattr(node.iter.func, "id", None) == "loop")


def _first_loop_line(source: str) -> int | None:
    import ast

    lines = [n.lineno for n in ast.walk(ast.parse(source)) if _is_flor_loop(n)]
    return min(lines) if lines else None


def _nested_by_ast(tree) -> bool:
    import ast

    is_loop = _is_flor_loop
    for node in ast.walk(tree):
        if is_loop(node) and any(is_loop(sub) for sub in ast.walk(node) if sub is not node):
            return True
    return False


def _worth_splitting(meta: dict, parts: int, per_iter: float) -> int:
    """How many segments one run's work is split into: a part must outweigh a segment's start-up."""
    min_s = float(os.environ.get("FLOR_REPLAY_MIN_SEGMENT_S", "10"))
    work = per_iter * int(meta.get("outer_iters") or 0)
    return max(1, min(parts, int(work // min_s) if min_s > 0 else parts))


def _seconds_per_iteration(meta: dict) -> float:
    n = meta.get("outer_iters") or 0
    attempts = meta.get("attempts") or [{}]
    try:
        from datetime import datetime

        total = (datetime.fromisoformat(meta["end"]) - datetime.fromisoformat(attempts[0]["start"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return 1.0
    return total / n if n else total
