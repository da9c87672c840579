"""flor's pickle-free checkpoint format: exact round trips, a safe fallback, and clear errors on damage."""

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flor_lib import checkpoint as ckpt
from flor_lib import ckpt_format
from flor_lib.errors import FlorError

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=8)
trees = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.integers() | st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(trees)
def test_any_tree_of_plain_values_comes_back_identical(tree):
    assert _same(ckpt_format.loads(ckpt_format.dumps(tree)), tree)


def test_a_training_state_round_trips_bit_for_bit_and_restores_the_rngs():
    import numpy as np
    import torch

    model = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 5)).sum().backward()
    opt.step()
    extra = {"bf16": torch.ones(3, dtype=torch.bfloat16), "mask": torch.tensor([True, False]),
             "empty": torch.empty(0, 2), "scalar": torch.tensor(7), "arr": np.arange(6.0).reshape(2, 3)}
    state = ckpt.capture([model, opt, extra], {"epoch_loss": 1.25, "seen": [1, 2]})
    data = ckpt.serialize(state)
    assert ckpt_format.is_flor_format(data)
    expected = (random.random(), torch.rand(2), np.random.rand())
    back = ckpt.load(data)
    assert _same(back, state)
    ckpt.set_rng_state(back["rng"])  # each tensor has its own storage: torch reads the raw pointer
    again = (random.random(), torch.rand(2), np.random.rand())
    assert again[0] == expected[0] and torch.equal(again[1], expected[1]) and again[2] == expected[2]
    loaded = back["objects"][1]["state"][0]["exp_avg"]
    loaded += 1  # writable, and not aliasing the file's bytes
    assert not torch.equal(loaded, state["objects"][1]["state"][0]["exp_avg"])


def test_state_holding_other_objects_falls_back_to_torch_save():
    state = ckpt.capture([{"w": 1}], {"ratio": Fraction(1, 3)})
    data = ckpt.serialize(state)
    assert not ckpt_format.is_flor_format(data)
    assert ckpt.load(data, unsafe=True)["vars"]["ratio"] == Fraction(1, 3)


@pytest.mark.parametrize("cut", [4, 20, -10])
def test_a_torn_checkpoint_is_reported_as_corrupted_in_one_line(cut):
    import torch

    data = ckpt.serialize(ckpt.capture([torch.nn.Linear(4, 4)], {}))
    with pytest.raises(FlorError, match="checkpoint is corrupted") as err:
        ckpt.load(data[:cut])
    assert "\n" not in str(err.value)


def test_a_snapshot_is_taken_at_once_and_later_changes_do_not_leak_into_it():
    import numpy as np
    import torch

    model = torch.nn.Linear(3, 2)
    arr = np.zeros(4)
    loop_vars = {"running": np.float64(0.5), "count": np.int32(3), "flag": np.bool_(True), "best": torch.ones(2)}
    parts = ckpt.snapshot_parts([model, arr], loop_vars)
    assert isinstance(parts, list)
    data = b"".join(parts)  # what a run does at once (or writes the parts to the file)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight += 1
    arr += 7
    loop_vars["best"] += 1
    state = ckpt.load(data)
    fresh_model, fresh_arr = torch.nn.Linear(3, 2), np.ones(4)
    back = ckpt.apply(state, [fresh_model, fresh_arr])
    assert all(torch.equal(fresh_model.state_dict()[k], before[k]) for k in before)
    assert (fresh_arr == 0).all() and torch.equal(back["best"], torch.ones(2))
    assert {k: (type(v), v) for k, v in back.items() if k != "best"} == {
        "running": (np.float64, 0.5), "count": (np.int32, 3), "flag": (np.bool_, True)}


def test_a_snapshot_of_other_objects_is_a_deep_copy_pickled_later():
    state = ckpt.snapshot_parts([{"w": [1, 2]}], {"ratio": Fraction(1, 3)})
    assert isinstance(state, dict)
    assert ckpt.load(ckpt.serialize(state), unsafe=True)["vars"]["ratio"] == Fraction(1, 3)


def test_each_checkpoint_holds_the_python_rng_state_of_its_moment_even_when_unchanged_between_two():
    first = ckpt.rng_state()
    same = ckpt.rng_state()  # nothing drawn in between: the same state (one tensor is enough)
    random.random()
    moved = ckpt.rng_state()
    expected = random.random()
    for state in (first, same):
        ckpt.set_rng_state(state)
        random.random()
        assert random.random() == expected
    ckpt.set_rng_state(moved)
    assert random.random() == expected
