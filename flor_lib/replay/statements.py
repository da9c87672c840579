"""Static analysis of flor training scripts: aliases, flor.loop scopes, log statements and loop dataflow."""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flor_lib.errors import FlorError

FLOR_MODULES = frozenset({"flor_lib", "flor"})
# FlorDB's unnamed `Flor.loop(it)` takes its name from the nesting depth, as flor_lib.loop does at run time.
POSITIONAL_LOOP_NAMES = ("epoch", "step")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_TRY = (ast.Try, getattr(ast, "TryStar", ast.Try))
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class TransplantError(FlorError):
    """A log statement cannot be found in, or carried into, a version of a script (one-line message)."""


@dataclass(frozen=True)
class Aliases:
    """The names under which a script reaches flor: modules (`flor.log`) and bare functions (`log`)."""

    namespaces: frozenset[str]
    log_funcs: frozenset[str]
    loop_funcs: frozenset[str]


def flor_aliases(tree: ast.Module) -> Aliases:
    """Collect the aliases bound by `import flor_lib as x`, `from flor_lib import log, MTK as Flor`, ..."""
    ns: set[str] = set()
    logs: set[str] = set()
    loops: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in FLOR_MODULES and (a.asname is None or a.name == top):
                    ns.add(a.asname or top)
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in FLOR_MODULES:
            for a in node.names:
                bound = a.asname or a.name
                if a.name == "*":
                    logs.add("log")
                    loops.add("loop")
                elif a.name == "log":
                    logs.add(bound)
                elif a.name == "loop":
                    loops.add(bound)
                else:  # MTK, or a submodule: both expose .log/.loop
                    ns.add(bound)
    if not (ns or logs or loops):  # a fragment without imports: assume the documented spellings
        ns = {"flor", "Flor", "flor_lib"}
    return Aliases(frozenset(ns), frozenset(logs), frozenset(loops))


def _is_flor_call(node: ast.AST, aliases: Aliases, attr: str, funcs: frozenset[str]) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr == attr and isinstance(f.value, ast.Name) and f.value.id in aliases.namespaces
    return isinstance(f, ast.Name) and f.id in funcs


def literal_name(call: ast.Call) -> str | None:
    """The string-literal name of a flor.log/flor.loop call (first positional or `name=`), else None."""
    cands = call.args[:1] + [kw.value for kw in call.keywords if kw.arg == "name"]
    for c in cands:
        if isinstance(c, ast.Constant) and isinstance(c.value, str):
            return c.value
    return None


def header_nodes(st: ast.stmt) -> list[ast.AST]:
    """The parts of a statement that are not nested statements (a simple statement is all header)."""
    if isinstance(st, (ast.If, ast.While)):
        return [st.test]
    if isinstance(st, (ast.For, ast.AsyncFor)):
        return [st.target, st.iter]
    if isinstance(st, (ast.With, ast.AsyncWith)):
        return list(st.items)
    if isinstance(st, ast.Match):
        return [st.subject]
    if isinstance(st, _DEFS + _TRY):
        return []
    return [st]


def child_blocks(st: ast.stmt) -> list[tuple[str, list[ast.stmt]]]:
    """The statement lists nested in st, each with the field that holds it (body, orelse, handlers[0], ...)."""
    out: list[tuple[str, list[ast.stmt]]] = []
    for fld in ("body", "orelse", "finalbody"):
        blk = getattr(st, fld, None)
        if isinstance(blk, list) and blk and isinstance(blk[0], ast.stmt):
            out.append((fld, blk))
    out += [(f"handlers[{i}]", h.body) for i, h in enumerate(getattr(st, "handlers", None) or [])]
    out += [(f"cases[{i}]", c.body) for i, c in enumerate(getattr(st, "cases", None) or [])]
    return out


def compound_kind(st: ast.stmt) -> str:
    """A short kind for a compound statement: def, class, for, while, if, with, try, match."""
    if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return "def"
    kinds = {ast.ClassDef: "class", ast.For: "for", ast.AsyncFor: "for", ast.While: "while", ast.If: "if",
             ast.With: "with", ast.AsyncWith: "with", ast.Match: "match"}
    return "try" if isinstance(st, _TRY) else kinds.get(type(st), type(st).__name__.lower())


def header(st: ast.stmt) -> str:
    """The normalised header of a compound statement (comments and spacing gone), or the whole statement."""
    u = ast.unparse
    if isinstance(st, _DEFS):
        return f"{compound_kind(st)} {st.name}"
    if isinstance(st, _TRY):
        return "try"
    if isinstance(st, (ast.For, ast.AsyncFor)):
        return f"for {u(st.target)} in {u(st.iter)}"
    if isinstance(st, (ast.With, ast.AsyncWith)):
        return "with " + ", ".join(u(i) for i in st.items)
    if isinstance(st, (ast.If, ast.While)):
        return f"{compound_kind(st)} {u(st.test)}"
    if isinstance(st, ast.Match):
        return f"match {u(st.subject)}"
    return u(st)


@dataclass(frozen=True)
class Scope:
    """One enclosing scope: a function/class by name, a flor.loop by loop name, else kind + header."""

    kind: str
    name: str
    branch: str = "body"

    def describe(self) -> str:
        """How the scope reads in an error message."""
        if self.kind == "loop":
            return f"flor.loop({self.name!r})"
        if self.kind in ("def", "class"):
            return f"{'function' if self.kind == 'def' else 'class'} {self.name!r}"
        return f"`{self.name}:` block" + ("" if self.branch == "body" else f" ({self.branch} branch)")


@dataclass(eq=False)
class Site:
    """Where a statement sits: its block, index, enclosing scopes and enclosing flor loops."""

    stmt: ast.stmt
    block: list[ast.stmt]
    index: int
    anchor: tuple[Scope, ...]
    loops: tuple[ast.stmt, ...]
    parent: Site | None


class Analysis:
    """A parsed script with every statement's site and every flor.loop's name."""

    def __init__(self, source: str, filename: str = "train.py") -> None:
        try:
            self.tree = ast.parse(source, filename)
        except SyntaxError as exc:
            raise TransplantError(f"{filename} does not parse: {exc.msg} (line {exc.lineno})") from None
        self.source = source
        self.lines = [ln.rstrip("\r") for ln in source.split("\n")]
        self.aliases = flor_aliases(self.tree)
        self.loop_names: dict[int, str] = {}
        self.sites: list[Site] = []
        self.site_of: dict[int, Site] = {}
        self._walk(self.tree.body, (), (), None)

    def _walk(self, block: list[ast.stmt], anchor: tuple[Scope, ...], loops: tuple[ast.stmt, ...],
              parent: Site | None) -> None:
        for i, st in enumerate(block):
            site = Site(st, block, i, anchor, loops, parent)
            self.sites.append(site)
            self.site_of[id(st)] = site
            name = self._flor_loop_name(st, len(loops))
            if name is not None:
                self.loop_names[id(st)] = name
            for branch, sub in child_blocks(st):
                if name is not None and branch == "body":
                    self._walk(sub, anchor + (Scope("loop", name),), loops + (st,), site)
                else:
                    scope_name = st.name if isinstance(st, _DEFS) else header(st)
                    self._walk(sub, anchor + (Scope(compound_kind(st), scope_name, branch),), loops, site)

    def _flor_loop_name(self, st: ast.stmt, depth: int) -> str | None:
        if not isinstance(st, (ast.For, ast.AsyncFor)):
            return None
        for node in ast.walk(st.iter):  # also `enumerate(flor.loop(...))`
            if _is_flor_call(node, self.aliases, "loop", self.aliases.loop_funcs):
                name = literal_name(node)  # type: ignore[arg-type]
                return name or (POSITIONAL_LOOP_NAMES[depth] if depth < 2 else f"loop{depth}")
        return None

    def loop_name(self, st: ast.AST) -> str | None:
        """The flor.loop name of a `for` statement, or None when it is not a flor loop."""
        return self.loop_names.get(id(st))

    def loop_chain(self, site: Site) -> tuple[str, ...]:
        """Names of the flor loops around a site, outermost first."""
        return tuple(self.loop_names[id(lp)] for lp in site.loops)

    def contains_loop(self, st: ast.stmt) -> bool:
        """Whether st is, or contains, a flor loop."""
        return any(id(n) in self.loop_names for n in ast.walk(st))

    def log_names(self, st: ast.stmt) -> list[str]:
        """Names logged by st itself (anywhere in its expressions, not in nested statements)."""
        out: list[str] = []
        for part in header_nodes(st):
            for node in ast.walk(part):
                if _is_flor_call(node, self.aliases, "log", self.aliases.log_funcs):
                    name = literal_name(node)  # type: ignore[arg-type]
                    if name is not None:
                        out.append(name)
        return out

    def norm(self, st: ast.stmt) -> str:
        """Normalised text of a statement for neighbour matching; flor loops match on their name only."""
        name = self.loop_name(st)
        return f"flor.loop({name!r})" if name is not None else header(st)

    def level(self, site: Site) -> str:
        """outside / outer / outer_before / outer_after / inner (see transplant.LogStatement)."""
        if not site.loops:
            return "outside"
        if len(site.loops) > 1:
            return "inner"
        outer = site.loops[0]
        nested = [n.lineno for n in ast.walk(outer) if n is not outer and id(n) in self.loop_names]
        if not nested:
            return "outer"
        return "outer_before" if site.stmt.lineno < min(nested) else "outer_after"

    def starts_line(self, st: ast.stmt) -> bool:
        """Whether only whitespace precedes st on its first line (no `if x: st` or `a; st`)."""
        return not self.lines[st.lineno - 1].encode()[: st.col_offset].strip()

    def indent_of(self, st: ast.stmt) -> str:
        """The whitespace that indents st's line."""
        line = self.lines[st.lineno - 1]
        return line[: len(line) - len(line.lstrip())]

    def text(self, st: ast.stmt) -> str:
        """The statement's exact source lines (with a trailing comment), dedented."""
        first = min([st.lineno] + [d.lineno for d in getattr(st, "decorator_list", [])])
        last = self.lines[st.end_lineno - 1].encode()  # type: ignore[operator]
        tail = last[st.end_col_offset:].strip()
        if self.starts_line(st) and (not tail or tail.startswith(b"#")):
            raw = "\n".join(self.lines[first - 1: st.end_lineno])
        else:  # shares a line with another statement: take just its own segment
            raw = ast.get_source_segment(self.source, st) or ast.unparse(st)
        return "\n".join(reindent(raw, ""))

    def find_loop(self, name: str) -> ast.stmt | None:
        """The first flor loop with this name, in source order."""
        for site in self.sites:
            if self.loop_name(site.stmt) == name:
                return site.stmt
        return None


def _string_interior_lines(text: str) -> set[int]:
    # lines inside a multi-line string literal must not be re-indented: that would change the string
    out: set[int] = set()
    kinds = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in kinds:
                out.update(range(tok.start[0], tok.end[0]))  # 0-based indices of the lines after the start
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def reindent(text: str, indent: str) -> list[str]:
    """Lines of text with the first line's indentation replaced by indent (string interiors untouched)."""
    lines = text.split("\n")
    keep = _string_interior_lines(text)
    prefix = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    out = []
    for i, ln in enumerate(lines):
        if i in keep:
            out.append(ln)
        elif not ln.strip():
            out.append("")
        else:
            out.append(indent + (ln[len(prefix):] if ln.startswith(prefix) else ln.lstrip()))
    return out


def iter_blocks_bfs(block: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement in block and below it, shallowest first."""
    queue = list(block)
    while queue:
        st = queue.pop(0)
        yield st
        for _, sub in child_blocks(st):
            queue.extend(sub)


def _stored_names(nodes: Iterable[ast.AST]) -> set[str]:
    out: set[str] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if isinstance(n, _DEFS + (ast.Lambda, ast.Import, ast.ImportFrom)):
            continue  # their own scope, or excluded anyway
        if isinstance(n, _COMPREHENSIONS):  # only a walrus escapes a comprehension's scope
            out.update(w.target.id for w in ast.walk(n) if isinstance(w, ast.NamedExpr))
            continue
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        stack.extend(ast.iter_child_nodes(n))
    return out


def _loads(nodes: Iterable[ast.AST]) -> Iterator[ast.Name]:
    # a comprehension's, lambda's or function's own names are not reads of the enclosing variables
    stack: list[tuple[ast.AST, frozenset[str]]] = [(n, frozenset()) for n in nodes]
    while stack:
        n, local = stack.pop()
        if isinstance(n, _COMPREHENSIONS):
            local |= {t.id for g in n.generators for t in ast.walk(g.target) if isinstance(t, ast.Name)}
        elif isinstance(n, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
            local |= {a.arg for a in ast.walk(n.args) if isinstance(a, ast.arg)}
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in local:
            yield n
        stack.extend((c, local) for c in ast.iter_child_nodes(n))


def assigned_in_loop_and_read_after(source: str, loop_name: str) -> set[str]:
    """Names bound inside flor.loop(loop_name) (target and body) that code running after it reads."""
    an = Analysis(source)
    loop = an.find_loop(loop_name)
    if loop is None:
        raise TransplantError(f"no flor.loop({loop_name!r}) in this source")
    assigned = _stored_names([loop.target, *loop.body])  # type: ignore[attr-defined]
    start, end = (loop.lineno, loop.col_offset), (loop.end_lineno, loop.end_col_offset)
    scope: ast.AST = an.tree
    enclosing_loops: list[ast.stmt] = []
    site = an.site_of[id(loop)].parent
    while site is not None:
        if isinstance(site.stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = site.stmt
            break
        if isinstance(site.stmt, (ast.For, ast.AsyncFor, ast.While)):
            enclosing_loops.append(site.stmt)
        site = site.parent
    reads = {n.id for n in _loads([scope]) if (n.lineno, n.col_offset) >= end}
    # the next iteration of an enclosing loop runs its body's statements before this loop again
    for enc in enclosing_loops:
        heads = [enc.test] if isinstance(enc, ast.While) else []
        reads |= {n.id for n in _loads(heads + enc.body) if (n.lineno, n.col_offset) < start}  # type: ignore
    bound_elsewhere: set[str] = set()
    for n in ast.walk(an.tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            bound_elsewhere.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, _DEFS):
            bound_elsewhere.add(n.name)
    return (assigned & reads) - bound_elsewhere
