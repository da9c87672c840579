"""Carry flor.log statements added to the newest version of a script into its older versions.

The old file is patched as text (inserted source lines), never re-generated from the AST, so its comments
and formatting survive. Scopes are matched version-independently: flor loops by loop name, functions by
name, other compound statements by header similarity; within a block the statement goes next to the best
match of its neighbours in the new version.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from flor_lib.replay.statements import (
    Analysis,
    Scope,
    Site,
    TransplantError,
    assigned_in_loop_and_read_after,
    child_blocks,
    compound_kind,
    header,
    iter_blocks_bfs,
    reindent,
)

__all__ = ["LogStatement", "Scope", "TransplantError", "TransplantResult", "assigned_in_loop_and_read_after",
           "find_log_statements", "statement_level", "transplant"]

FUZZY_MIN = 0.6
_MOVABLE = ("def", "class", "loop")  # scopes that may sit elsewhere in another version


@dataclass(frozen=True)
class LogStatement:
    """A statement of the new version that logs `name`, with what is needed to place it in old versions.

    level: "outside" (in no flor.loop), "inner" (in a nested flor.loop), or, inside the outermost flor.loop
    only, "outer_before" / "outer_after" the (first) nested flor.loop, or "outer" when it has none.
    """

    name: str
    text: str  # exact source lines, dedented
    anchor: tuple[Scope, ...]  # enclosing scopes, outermost first
    prev: str | None  # normalised text of the previous sibling statement (None: first of its block)
    next: str | None  # normalised text of the next sibling statement (None: last of its block)
    level: str
    lineno: int = 0
    index: int = 0  # position in its block
    loops_before: int = 0  # siblings before it that are or contain a flor loop
    loops_after: int = 0  # ... and after it
    lift: LogStatement | None = None  # the enclosing if/with/for/... to carry whole when it is missing

    @property
    def loops(self) -> tuple[str, ...]:
        """Names of the enclosing flor loops, outermost first (the version-independent anchor)."""
        return tuple(s.name for s in self.anchor if s.kind == "loop")


@dataclass
class TransplantResult:
    """The patched old source and what happened to each requested name."""

    source: str
    inserted: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)


def _record(an: Analysis, site: Site, name: str) -> LogStatement:
    blk, i, st = site.block, site.index, site.stmt
    lift = None
    parent = site.parent
    if parent is not None and compound_kind(parent.stmt) not in ("def", "class") \
            and an.loop_name(parent.stmt) is None:
        lift = _record(an, parent, name)
    return LogStatement(
        name=name, text=an.text(st), anchor=site.anchor,
        prev=an.norm(blk[i - 1]) if i > 0 else None,
        next=an.norm(blk[i + 1]) if i + 1 < len(blk) else None,
        level=an.level(site), lineno=st.lineno, index=i,
        loops_before=sum(an.contains_loop(s) for s in blk[:i]),
        loops_after=sum(an.contains_loop(s) for s in blk[i + 1:]), lift=lift,
    )


def find_log_statements(source: str, names: Iterable[str], filename: str = "train.py") -> list[LogStatement]:
    """Locate the statements of source that call flor.log(name, ...) for each requested name."""
    an = Analysis(source, filename)
    out: list[LogStatement] = []
    for name in dict.fromkeys([names] if isinstance(names, str) else names):
        sites = [s for s in an.sites if name in an.log_names(s.stmt)]
        if not sites:
            raise TransplantError(f"no flor.log('{name}', ...) in {filename}: add the statement and commit first")
        out += [_record(an, s, name) for s in sites]
    return out


def statement_level(source: str, name: str, filename: str = "train.py") -> str:
    """The level (outside / outer_before / outer_after / outer / inner) of the first flor.log(name)."""
    return find_log_statements(source, [name], filename)[0].level


def _branch(st: ast.stmt, branch: str) -> list[ast.stmt] | None:
    return dict(child_blocks(st)).get(branch)


def similarity(a: str, b: str) -> float:
    """difflib ratio of two normalised statements, by characters or by tokens, whichever is higher."""
    # by tokens, a renamed identifier costs one token rather than all its characters
    chars = difflib.SequenceMatcher(None, a, b).ratio()
    return max(chars, difflib.SequenceMatcher(None, _tokens(a), _tokens(b), autojunk=False).ratio())


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|'[^']*'|\S", text)


def _neighbours_agree(an: Analysis, st: ast.stmt, rec: LogStatement) -> bool:
    site = an.site_of[id(st)]
    blk, i = site.block, site.index
    prev = an.norm(blk[i - 1]) if i > 0 else None
    nxt = an.norm(blk[i + 1]) if i + 1 < len(blk) else None
    return any(a == b if a is None or b is None else similarity(a, b) >= FUZZY_MIN
               for a, b in ((rec.prev, prev), (rec.next, nxt)))


def _find_scope(an: Analysis, block: list[ast.stmt], scope: Scope,
                rec: LogStatement | None = None) -> list[ast.stmt] | None:
    if scope.kind == "loop":
        for st in iter_blocks_bfs(block):
            if an.loop_name(st) == scope.name:
                return _branch(st, scope.branch)
        return None
    if scope.kind in ("def", "class"):
        for st in iter_blocks_bfs(block):
            if compound_kind(st) == scope.kind and getattr(st, "name", None) == scope.name:
                return _branch(st, scope.branch)
        return None
    cands = [st for st in block if compound_kind(st) == scope.kind and an.loop_name(st) is None]
    want = rec.index if rec else 0
    exact = [st for st in cands if header(st) == scope.name]
    if exact:
        return _branch(min(exact, key=lambda st: abs(block.index(st) - want)), scope.branch)
    # an edited header (`if i % 10` -> `if i % 20`) only counts where it sits among the same neighbours,
    # else a brand-new `if i == 1:` would be taken for an old `if i % 2 == 0:`
    scored = [(similarity(scope.name, header(st)), -abs(block.index(st) - want), st) for st in cands
              if rec is None or _neighbours_agree(an, st, rec)]
    best = max(scored, default=None, key=lambda t: t[:2])
    return _branch(best[2], scope.branch) if best and best[0] >= FUZZY_MIN else None


def _resolve(an: Analysis, s: LogStatement) -> tuple[list[ast.stmt], int]:
    """Follow s's anchor down the old tree; return the deepest block reached and how many scopes matched."""
    anchor = s.anchor
    enclosing: dict[int, LogStatement] = {}  # anchor depth -> the new compound statement at that depth
    rec = s.lift
    while rec is not None:
        enclosing[len(rec.anchor)] = rec
        rec = rec.lift
    block = an.tree.body
    for k, scope in enumerate(anchor):
        sub = _find_scope(an, block, scope, enclosing.get(k))
        if sub is None:
            # a wrapper (function, with, if) may come and go between versions; the flor loops decide
            if scope.kind == "def" or any(s.kind == "loop" for s in anchor[k + 1:]):
                continue
            return block, k
        block = sub
    return block, len(anchor)


def _best_match(norms: list[str], text: str | None, want: int) -> int | None:
    """Index of the statement equal to text, else the most similar one (ratio >= 0.6), nearest want first."""
    if text is None:
        return None
    exact = [j for j, n in enumerate(norms) if n == text]
    if exact:
        return min(exact, key=lambda j: (abs(j - want), j))
    scored = [(similarity(text, n), -abs(j - want), j) for j, n in enumerate(norms)]
    best = max(scored, default=None)
    return best[2] if best and best[0] >= FUZZY_MIN else None


def _position(an: Analysis, s: LogStatement, block: list[ast.stmt]) -> tuple[int, str]:
    """Index in block to insert before, and whether to go "after" block[pos-1] or "before" block[pos]."""
    norms = [an.norm(st) for st in block]
    found = _best_match(norms, s.prev, s.index - 1)
    if found is not None:
        pos, mode = found + 1, "after"
    elif (found := _best_match(norms, s.next, s.index + 1)) is not None:
        pos, mode = found, "before"
    elif s.prev is None and s.next is not None:
        pos, mode = 0, "before"
    else:
        pos, mode = len(block), "after"
    # keep the statement on the same side of each flor loop: that is what its level means to replay
    loops = [j for j, st in enumerate(block) if an.contains_loop(st)]
    lo, hi = _loops_before_bounds(s.loops_before, s.loops_after, len(loops))
    before = sum(j < pos for j in loops)
    if before < lo:
        pos, mode = loops[lo - 1] + 1, "after"
    elif before > hi:
        pos, mode = loops[hi], "before"
    if pos == 0:  # never above a docstring or a `from __future__` import
        skip = 1 if _is_docstring(block[0]) else 0
        while block is an.tree.body and skip < len(block) and _is_future(block[skip]):
            skip += 1
        pos, mode = (skip, "after") if skip else (pos, mode)
    if pos == len(block):
        mode = "after"
    return pos, mode


def _loops_before_bounds(k: int, a: int, n: int) -> tuple[int, int]:
    """How many of the old block's n loop siblings may precede the statement (new: k before, a after)."""
    if not n or not (k or a):
        return 0, n
    if k + a == n:
        return k, k
    if not a:
        return n, n
    if not k:
        return 0, 0
    return min(1, n), max(n - 1, min(1, n))


def _is_docstring(st: ast.stmt) -> bool:
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)


def _is_future(st: ast.stmt) -> bool:
    return isinstance(st, ast.ImportFrom) and st.module == "__future__"


def _insertion_line(an: Analysis, block: list[ast.stmt], pos: int, mode: str) -> int:
    """0-based line index before which the new lines go."""
    if mode == "after":
        return block[pos - 1].end_lineno  # type: ignore[return-value]
    st = block[pos]
    line = min([st.lineno] + [d.lineno for d in getattr(st, "decorator_list", [])]) - 1
    indent = an.indent_of(st)
    # comment lines right above a statement belong to it: go above them
    while line > 0 and an.lines[line - 1].lstrip().startswith("#") and an.lines[line - 1].startswith(indent) \
            and not an.lines[line - 1][len(indent):len(indent) + 1].isspace():
        line -= 1
    return line


def _insert(an: Analysis, s: LogStatement, filename: str) -> str:
    block, matched = _resolve(an, s)
    if matched < len(s.anchor):
        scope = s.anchor[matched]
        lifted: LogStatement | None = s
        while lifted is not None and len(lifted.anchor) > matched:
            lifted = lifted.lift
        if lifted is None or scope.branch != "body" or scope.kind in _MOVABLE:
            loops = [sc for sc in s.anchor[:matched] if sc.kind == "loop"]
            inside = f" inside {loops[-1].describe()}" if loops and scope.kind != "loop" else ""
            raise TransplantError(f"cannot place flor.log('{s.name}'): no {scope.describe()}{inside}"
                                  f" in this version of {filename}")
        s = lifted  # the enclosing block is new too: carry it whole
    if not an.starts_line(block[0]):
        raise TransplantError(f"cannot place flor.log('{s.name}'): its block in {filename} is on one line"
                              f" (line {block[0].lineno}); put the block's body on its own lines first")
    pos, mode = _position(an, s, block)
    at = _insertion_line(an, block, pos, mode)
    lines = an.source.split("\n")  # keeps any "\r" of "\r\n" on each line
    cr = "\r" if lines and lines[0].endswith("\r") else ""
    new = [ln + cr for ln in reindent(s.text, an.indent_of(block[0]))]
    at = min(at, len(lines))  # a final newline leaves "" last, so the inserted lines come before it
    return "\n".join(lines[:at] + new + lines[at:])


def transplant(old_source: str, statements: list[LogStatement], filename: str = "train.py") -> TransplantResult:
    """Insert each statement into old_source at the matching scope unless that scope already logs its name."""
    src = old_source
    result = TransplantResult(src)
    for s in sorted(statements, key=lambda s: s.lineno):  # new-source order, so new neighbours chain up
        an = Analysis(src, filename)
        present = any(s.name in an.log_names(site.stmt) and an.loop_chain(site) == s.loops for site in an.sites)
        if present:
            if s.name not in result.already_present:
                result.already_present.append(s.name)
            continue
        src = _insert(an, s, filename)
        if s.name not in result.inserted:
            result.inserted.append(s.name)
    try:
        ast.parse(src, filename)
    except SyntaxError as exc:
        raise TransplantError(f"patched {filename} does not parse (line {exc.lineno}: {exc.msg})") from None
    result.source = src
    return result
