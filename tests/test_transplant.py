"""Stories for carrying hindsight flor.log statements from the newest version of train.py into old ones."""

from __future__ import annotations

import ast
import difflib
import sys
import types

import pytest

from flor_lib.replay.transplant import (
    TransplantError,
    assigned_in_loop_and_read_after,
    find_log_statements,
    statement_level,
    transplant,
)

# The newest version: the user added device, grad_norm (with its own line computing it) and val_acc.
NEW = '''\
import flor_lib as flor


def build(hidden):
    return {"w": hidden}


def step(x, y):
    return float(x + y)


def evaluate(model):
    return 0.5


loader = [(1, 2), (3, 4), (5, 6)]
hidden = flor.arg("hidden", default=500)
device = "cpu"
flor.log("device", str(device))
model = build(hidden)
flor.checkpoints(model)
for epoch in flor.loop("epoch", range(2)):
    epoch_loss = 0.0
    for i, (x, y) in flor.loop("step", enumerate(loader)):
        loss = step(x, y)
        total_norm = loss * 2
        flor.log("grad_norm", total_norm)
        epoch_loss += loss
        if i % 2 == 0:
            flor.log("loss", loss)
    flor.log("epoch_loss", epoch_loss)
    flor.log("val_acc", evaluate(model))
flor.log("accuracy", evaluate(model))
'''

# An old version: other hidden-layer code, comments, a renamed accumulator, an extra print, odd spacing.
OLD = '''\
import flor_lib as flor
# -- helpers --------------------------------------------------------------


def build(hidden):
    layers = [hidden, hidden // 2]   # two hidden layers back then
    return {"w": layers}


def step(x, y):
    return float(x + y)


def evaluate(model):
    return 0.5


loader = [(1, 2), (3, 4), (5, 6)]
hidden = flor.arg("hidden", default=250)
device = "cpu"
model = build(hidden)
flor.checkpoints(model)
print("starting")  # extra print
for epoch in flor.loop("epoch", range(2)):
    running   = 0.0
    for i, (x, y) in flor.loop("step", enumerate(loader)):
        # forward + backward
        loss = step(x, y)
        running += loss
        if i % 2 == 0:
            flor.log("loss", loss)
    # end of epoch


flor.log("accuracy", evaluate(model))
'''


def fake_flor() -> tuple[types.ModuleType, list[str]]:
    logged: list[str] = []
    mod = types.ModuleType("flor_lib")

    def log(name, value):
        logged.append(name)
        return value

    mod.log = log
    mod.loop = lambda name, it=None: iter(it if it is not None else name)
    mod.arg = lambda name, default=None: default
    mod.checkpoints = lambda *objs: None
    mod.MTK = mod
    return mod, logged


def run_script(source: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    mod, logged = fake_flor()
    monkeypatch.setitem(sys.modules, "flor_lib", mod)
    exec(compile(source, "train.py", "exec"), {"__name__": "__main__"})
    return logged


def inserted_lines(old: str, new: str) -> list[str]:
    """Lines added by the patch; fails if any old line was changed or removed."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    added = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        assert op in ("equal", "insert"), (op, a[i1:i2], b[j1:j2])
        added += b[j1:j2] if op == "insert" else []
    return added


def line_of(source: str, text: str) -> int:
    return next(n for n, ln in enumerate(source.splitlines()) if text in ln)


def patch(names: list[str], old: str = OLD, new: str = NEW):
    return transplant(old, find_log_statements(new, names))


def test_levels_of_the_new_statements_are_reported():
    assert statement_level(NEW, "device") == "outside"
    assert statement_level(NEW, "accuracy") == "outside"
    assert statement_level(NEW, "val_acc") == "outer_after"
    assert statement_level(NEW, "grad_norm") == "inner"
    assert statement_level(NEW, "loss") == "inner"
    before = NEW.replace("    epoch_loss = 0.0\n", "    epoch_loss = 0.0\n    flor.log('lr', 0.1)\n")
    assert statement_level(before, "lr") == "outer_before"
    no_nested = "import flor_lib as flor\nfor e in flor.loop('epoch', range(3)):\n    flor.log('x', e)\n"
    assert statement_level(no_nested, "x") == "outer"


def test_found_statement_records_text_anchor_and_neighbours():
    (s,) = find_log_statements(NEW, ["grad_norm"])
    assert s.text == 'flor.log("grad_norm", total_norm)'
    assert [(sc.kind, sc.name) for sc in s.anchor] == [("loop", "epoch"), ("loop", "step")]
    assert s.prev == "total_norm = loss * 2" and s.next == "epoch_loss += loss"
    (loss,) = find_log_statements(NEW, ["loss"])
    assert [sc.kind for sc in loss.anchor] == ["loop", "loop", "if"] and loss.prev is None
    (semi,) = find_log_statements("import flor_lib as flor\nif x:\n    y = 1; flor.log('y', y)  # c\n", ["y"])
    assert semi.text == "flor.log('y', y)" and semi.prev == "y = 1"


def test_device_statement_outside_loops_lands_after_its_neighbour_in_old_version():
    res = patch(["device"])
    assert res.inserted == ["device"]
    assert line_of(res.source, 'flor.log("device"') == line_of(res.source, 'device = "cpu"') + 1


def test_epoch_level_statement_lands_after_nested_loop_in_old_version():
    res = patch(["val_acc"])
    lines = res.source.splitlines()
    at = line_of(res.source, 'flor.log("val_acc"')
    assert lines[at] == '    flor.log("val_acc", evaluate(model))'
    assert at > line_of(res.source, 'flor.log("loss"') and at < line_of(res.source, 'flor.log("accuracy"')
    assert lines[at - 1] == '            flor.log("loss", loss)'  # right after the step loop, its new neighbour


def test_step_level_statement_lands_inside_step_loop_of_old_version():
    res = patch(["grad_norm"])
    lines = res.source.splitlines()
    at = line_of(res.source, 'flor.log("grad_norm"')
    assert lines[at] == '        flor.log("grad_norm", total_norm)'
    # its neighbour `epoch_loss += loss` is `running += loss` in the old version: the fuzzy match places it
    assert lines[at + 1] == "        running += loss"
    ast.parse(res.source)


def test_patched_old_version_runs_and_logs_in_the_right_order(monkeypatch):
    old = OLD.replace("        loss = step(x, y)\n", "        loss = step(x, y)\n        total_norm = 2 * loss\n")
    res = patch(["device", "grad_norm", "val_acc"], old=old)
    assert res.inserted == ["device", "grad_norm", "val_acc"]
    logged = run_script(res.source, monkeypatch)
    step = ["grad_norm", "loss", "grad_norm", "grad_norm", "loss"]
    assert logged == ["device"] + (step + ["val_acc"]) * 2 + ["accuracy"]


def test_statement_using_a_variable_the_old_version_never_defines_is_still_inserted():
    res = patch(["grad_norm"])
    assert "total_norm = " not in res.source and 'flor.log("grad_norm", total_norm)' in res.source


def test_old_file_comments_and_formatting_survive_byte_for_byte():
    res = patch(["device", "grad_norm", "val_acc", "epoch_loss"])
    added = inserted_lines(OLD, res.source)
    assert [ln.strip() for ln in added] == [
        'flor.log("device", str(device))',
        'flor.log("grad_norm", total_norm)',
        'flor.log("epoch_loss", epoch_loss)',
        'flor.log("val_acc", evaluate(model))',
    ]
    kept = [ln for ln in res.source.splitlines(keepends=True) if ln not in added]
    assert "".join(kept) == OLD


def test_statement_already_in_old_version_is_not_duplicated():
    res = patch(["loss", "accuracy", "val_acc"])
    assert res.already_present == ["loss", "accuracy"] and res.inserted == ["val_acc"]
    assert res.source.count('flor.log("loss"') == 1 and res.source.count('flor.log("accuracy"') == 1


def test_transplanting_twice_is_the_same_as_once():
    stmts = find_log_statements(NEW, ["device", "grad_norm", "val_acc", "loss"])
    once = transplant(OLD, stmts)
    twice = transplant(once.source, stmts)
    assert twice.source == once.source and twice.inserted == []
    assert sorted(twice.already_present) == ["device", "grad_norm", "loss", "val_acc"]


def test_transplant_into_the_new_version_itself_is_a_no_op():
    names = ["device", "grad_norm", "loss", "epoch_loss", "val_acc", "accuracy"]
    res = transplant(NEW, find_log_statements(NEW, names))
    assert res.source == NEW and res.inserted == [] and sorted(res.already_present) == sorted(names)


def test_log_inside_print_format_expression_is_found_and_carried(monkeypatch):
    new = NEW.replace('    flor.log("val_acc", evaluate(model))\n',
                      '    print("acc {}".format(flor.log("val_acc", evaluate(model))))\n')
    (s,) = find_log_statements(new, ["val_acc"])
    assert s.level == "outer_after" and s.text.startswith("print(")
    res = transplant(OLD, [s])
    assert '    print("acc {}".format(flor.log("val_acc", evaluate(model))))\n' in res.source
    assert run_script(res.source, monkeypatch).count("val_acc") == 2


WRAPPED_NEW = '''\
import flor_lib as flor


def main():
    """Train."""
    device = "cuda"
    flor.log("device", device)
    for epoch in flor.loop("epoch", range(2)):
        for step in flor.loop("step", range(3)):
            flor.log("step_id", step)
        flor.log("val_acc", 0.9)


if __name__ == "__main__":
    main()
'''

WRAPPED_OLD = '''\
import flor_lib as flor


def main():
    """Train (old)."""
    device = "cpu"  # no GPU yet
    for epoch in flor.loop("epoch", range(2)):
        for step in flor.loop("step", range(3)):
            pass
        print("epoch done")


if __name__ == "__main__":
    main()
'''


def test_function_wrapped_script_statements_land_inside_main(monkeypatch):
    res = transplant(WRAPPED_OLD, find_log_statements(WRAPPED_NEW, ["device", "step_id", "val_acc"]))
    assert '    device = "cpu"  # no GPU yet\n    flor.log("device", device)\n' in res.source
    assert "            pass\n            flor.log(\"step_id\", step)\n" in res.source
    assert '            flor.log("step_id", step)\n        flor.log("val_acc", 0.9)\n        print(' in res.source
    assert run_script(res.source, monkeypatch) == ["device"] + (["step_id"] * 3 + ["val_acc"]) * 2


def test_statement_in_new_main_goes_to_module_level_of_flat_old_version(monkeypatch):
    old = 'import flor_lib as flor\ndevice = "cpu"\nfor epoch in flor.loop("epoch", range(2)):\n    pass\n'
    res = transplant(old, find_log_statements(WRAPPED_NEW, ["device", "val_acc"]))
    assert res.source.splitlines()[2:4] == ['flor.log("device", device)', 'for epoch in flor.loop("epoch", range(2)):']
    assert run_script(res.source, monkeypatch) == ["device", "val_acc", "val_acc"]


def test_flat_statement_finds_its_loop_inside_main_of_old_version(monkeypatch):
    flat = "import flor_lib as flor\nfor e in flor.loop('epoch', range(2)):\n    x = e\n    flor.log('x', x)\n"
    old = WRAPPED_OLD.replace('        print("epoch done")\n', '        x = epoch\n')
    res = transplant(old, find_log_statements(flat, ["x"]))
    assert "        x = epoch\n        flor.log('x', x)\n" in res.source
    assert run_script(res.source, monkeypatch) == ["x", "x"]


def test_old_version_without_step_loop_raises_with_reason():
    old = OLD.replace('    for i, (x, y) in flor.loop("step", enumerate(loader)):', "    for i, (x, y) in enumerate(loader):")
    with pytest.raises(TransplantError) as err:
        patch(["grad_norm"], old=old)
    assert str(err.value) == "cannot place flor.log('grad_norm'): no flor.loop('step') in this version of train.py"
    # statements at other levels still go in
    assert patch(["val_acc"], old=old).inserted == ["val_acc"]


def test_name_missing_from_new_source_raises():
    with pytest.raises(TransplantError, match=r"no flor.log\('lr', \.\.\.\) in train.py: add the statement"):
        find_log_statements(NEW, ["val_acc", "lr"])
    with pytest.raises(TransplantError):
        find_log_statements('print("lr")\nlog("lr", 1)\n', ["lr"])  # a `log` not imported from flor_lib


def test_assigned_in_loop_and_read_after_finds_epoch_loss():
    assert assigned_in_loop_and_read_after(NEW, "step") == {"epoch_loss"}
    assert assigned_in_loop_and_read_after(NEW, "epoch") == set()
    later = NEW + "print(loss, [i for i in range(3)])\n"
    assert assigned_in_loop_and_read_after(later, "step") == {"epoch_loss", "loss"}
    assert assigned_in_loop_and_read_after(later, "epoch") == {"loss"}  # the comprehension's i is its own
    # the next epoch reads what the step loop left behind before running it again
    wrap = NEW.replace("    epoch_loss = 0.0\n", "    print(i if epoch else 0)\n")
    assert assigned_in_loop_and_read_after(wrap, "step") == {"epoch_loss", "i"}
    with pytest.raises(TransplantError, match="no flor.loop"):
        assigned_in_loop_and_read_after(NEW, "batch")


def test_assigned_in_loop_excludes_imports_functions_and_comprehension_variables():
    src = '''\
import flor_lib as flor
import math
for epoch in flor.loop("epoch", range(2)):
    with open("f") as fh:
        import os
        def helper(): return 1
        squares = [k * k for k in range(3)]
        total = sum(squares)
        math = 3
print(fh, os, helper, k, squares, total, math, epoch)
'''
    assert assigned_in_loop_and_read_after(src, "epoch") == {"fh", "squares", "total", "epoch"}


def test_florDB_spelling_with_unnamed_loops_and_imported_log(monkeypatch):
    new = '''\
from flor_lib import MTK as Flor
from flor_lib import log
for epoch in Flor.loop(range(2)):
    for batch in Flor.loop(range(2)):
        log("batch", batch)
    print("acc {}".format(Flor.log("acc", 0.5)))
'''
    old = "from flor_lib import MTK as Flor\n\nfor epoch in Flor.loop(range(2)):  # epochs\n" \
          "    for batch in Flor.loop(range(2)):\n        pass\n"
    stmts = find_log_statements(new, ["batch", "acc"])
    assert [s.loops for s in stmts] == [("epoch", "step"), ("epoch",)]
    assert [s.level for s in stmts] == ["inner", "outer_after"]
    res = transplant(old, stmts)
    assert res.inserted == ["batch", "acc"]
    # the old file imports no bare `log`: that is the user's to add, as with any new variable
    monkeypatch.setitem(sys.modules, "flor_lib", fake_flor()[0])
    with pytest.raises(NameError, match="log"):
        exec(compile(res.source, "train.py", "exec"), {})


def test_new_if_block_around_log_is_carried_whole(monkeypatch):
    new = NEW.replace('        flor.log("grad_norm", total_norm)\n',
                      '        if i == 1:  # once per epoch\n            flor.log("grad_norm", loss * 2)\n')
    res = patch(["grad_norm"], new=new)
    assert '        if i == 1:  # once per epoch\n            flor.log("grad_norm", loss * 2)\n' in res.source
    assert run_script(res.source, monkeypatch).count("grad_norm") == 2
    assert transplant(res.source, find_log_statements(new, ["grad_norm"])).source == res.source


def test_new_statements_added_next_to_each_other_keep_their_order(monkeypatch):
    new = NEW.replace('    flor.log("val_acc", evaluate(model))\n',
                      '    flor.log("val_acc", evaluate(model))\n    flor.log("val_loss", 0.1)\n    flor.log("lr", 0.01)\n')
    res = patch(["lr", "val_loss", "val_acc"], new=new)
    assert run_script(res.source, monkeypatch)[-4:] == ["val_acc", "val_loss", "lr", "accuracy"]


def test_edited_neighbour_is_matched_fuzzily():
    new = "import flor_lib as flor\nlr = 0.1\nmodel = make_model(layers=3, act='relu')\nflor.log('n', 1)\nopt = 2\n"
    old = "import flor_lib as flor\nmodel = make_model(layers=2, act='relu')  # old\nlr = 0.5\nopt = 2\n"
    res = transplant(old, find_log_statements(new, ["n"]))
    assert res.source.splitlines()[2] == "flor.log('n', 1)"


def test_crlf_file_keeps_its_line_endings_and_docstring_stays_first():
    new = '"""Doc."""\nimport flor_lib as flor\nflor.log("device", "cpu")\nx = 1\n'
    old = '"""Old doc."""\r\nimport flor_lib as flor\r\n\r\ny = 2  # other\r\n'
    res = transplant(old, find_log_statements(new, ["device"]))
    assert res.source == '"""Old doc."""\r\nimport flor_lib as flor\r\nflor.log("device", "cpu")\r\n\r\ny = 2  # other\r\n'
    first = '"""Doc."""\nflor.log("first", 1)\nimport flor_lib as flor\n'
    res = transplant('"""Old."""\nimport flor_lib as flor\n', find_log_statements(first, ["first"]))
    assert res.source == '"""Old."""\nflor.log("first", 1)\nimport flor_lib as flor\n'


def test_statement_goes_above_the_comment_that_introduces_its_next_neighbour():
    new = "import flor_lib as flor\nflor.log('seed', 0)\nrun()\n"
    old = "import os\n\n# run it\n# (twice)\nrun()\n"
    res = transplant(old, find_log_statements(new, ["seed"]))
    assert res.source == "import os\n\nflor.log('seed', 0)\n# run it\n# (twice)\nrun()\n"


def test_multiline_statement_is_reindented_but_its_string_is_not(monkeypatch):
    new = NEW.replace('    flor.log("val_acc", evaluate(model))\n',
                      '    flor.log(\n        "note",\n        """a\n  b""",\n    )\n')
    res = patch(["note"], new=new)
    assert '    flor.log(\n        "note",\n        """a\n  b""",\n    )\n' in res.source
    assert run_script(res.source, monkeypatch).count("note") == 2


def test_old_version_with_one_line_block_is_refused_with_reason():
    new = "import flor_lib as flor\nfor e in flor.loop('epoch', range(2)):\n    a = 1\n    flor.log('a', a)\n"
    old = "import flor_lib as flor\nfor e in flor.loop('epoch', range(2)): a = 1\n"
    with pytest.raises(TransplantError, match="on one line"):
        transplant(old, find_log_statements(new, ["a"]))
