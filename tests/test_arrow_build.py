"""Records built from Arrow buffers equal what pyarrow's own converter builds, and never import pandas."""

import subprocess
import sys

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from flor_lib import arrow_build as ab

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.none() | texts, max_size=40))
def test_strings_equal_pyarrows(values):
    built = ab.strings(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.string()))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.none() | st.floats(), max_size=40), st.lists(st.integers(-2**63, 2**63 - 1), max_size=40))
def test_numbers_equal_pyarrows(floats, ints):
    def comparable(values):  # NaN != NaN
        return ["nan" if v is not None and v != v else v for v in values]

    built = ab.numbers(pa.float64(), floats)
    built.validate(full=True)
    assert comparable(built.to_pylist()) == comparable(pa.array(floats, pa.float64()).to_pylist())
    assert ab.numbers(pa.int64(), ints).equals(pa.array(ints, pa.int64()))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(texts, st.integers(0, 10**6)), max_size=3), max_size=20))
def test_loop_contexts_equal_pyarrows(ctx):
    names = ab.lists(ab.strings([n for x in ctx for n, _ in x]), [len(x) for x in ctx])
    iters = ab.lists(ab.numbers(pa.int64(), [i for x in ctx for _, i in x]), [len(x) for x in ctx])
    names.validate(full=True)
    assert names.equals(pa.array([[n for n, _ in x] for x in ctx], pa.list_(pa.string())))
    assert iters.equals(pa.array([[i for _, i in x] for x in ctx], pa.list_(pa.int64())))


def test_a_recorded_run_never_imports_pandas(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\nimport flor_lib as flor\n"
        "for e in flor.loop('epoch', range(3)):\n    flor.log('loss', 1.0 / (e + 1))\n"
        "flor.log('note', 'done')\nflor.commit()\n"
        "print('pandas' in sys.modules, 'pyarrow' in sys.modules)\n")
    env = {"FLOR_STORE": str(tmp_path / "store"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "True"]  # records written and compacted without pandas
