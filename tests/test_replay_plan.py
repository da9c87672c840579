"""Planning splits a run across workers only when each part outweighs a segment's start-up."""

from __future__ import annotations

from flor_lib.replay.plan import _segments_for_run, _worth_splitting, iteration_ranges


def _meta(iters: int, checkpoints: list[int]) -> dict:
    return {"outer_iters": iters, "checkpoints": [{"iter": i} for i in checkpoints]}


def test_a_short_run_is_replayed_in_one_segment_and_a_long_one_is_split(monkeypatch):
    monkeypatch.delenv("FLOR_REPLAY_MIN_SEGMENT_S", raising=False)
    assert _worth_splitting(_meta(30, []), parts=2, per_iter=0.1) == 1  # 3 s of work: not worth a second start-up
    assert _worth_splitting(_meta(30, []), parts=2, per_iter=2.0) == 2  # a minute of work: both workers
    assert _worth_splitting(_meta(300, []), parts=4, per_iter=0.1) == 3  # 30 s: parts of at least 10 s
    monkeypatch.setenv("FLOR_REPLAY_MIN_SEGMENT_S", "0")
    assert _worth_splitting(_meta(30, []), parts=2, per_iter=0.1) == 2


def test_inner_segments_start_from_the_checkpoint_before_them():
    assert iteration_ranges(10, 3) == [(0, 4), (4, 8), (8, 10)]
    segs = _segments_for_run(_meta(10, [1, 3, 5, 9]), {"inner"}, nested=True, parts=3)
    # (start, stop, record_from, restore, final): a nested segment re-enters the checkpointed iteration
    assert segs == [(0, 4, 0, [], False), (3, 8, 4, [3], False), (5, 10, 8, [5], True)]


def test_a_statement_after_training_restores_only_the_last_checkpoint():
    assert _segments_for_run(_meta(10, [4, 9]), {"after"}, nested=True, parts=2) == [(9, 10, 10, [9], True)]
    # no final checkpoint: restore the last one there is and re-execute the iterations after it
    assert _segments_for_run(_meta(10, [4]), {"after"}, nested=True, parts=2) == [(4, 10, 10, [4], True)]
    assert _segments_for_run(_meta(10, [4]), {"after"}, nested=False, parts=2) == [(5, 10, 10, [4], True)]
    assert _segments_for_run(_meta(10, []), {"after"}, nested=True, parts=2) == [(0, 10, 0, [], True)]
