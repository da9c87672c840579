"""Replay mode inside a training process: recorded args, skipped loops, restores, filtered logs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from flor_lib import checkpoint as ckpt
from flor_lib import ckpt_files, framevars
from flor_lib.errors import FlorError
from flor_lib.replay.segment import Segment
from flor_lib.store import Store


class ReplayMode:
    """Drives one segment: the Run consults it for args, loops and which logs to keep."""

    def __init__(self, seg: Segment, result_path: Path, stream_path: Path) -> None:
        self.seg = seg
        self.meta = seg.meta
        self.replay_id = seg.replay_id
        self.names = set(seg.names)
        self.result_path = result_path
        self.stream_path = stream_path
        self.store = Store(seg.store_root or None)
        self.phase = "before"
        self.outer = -1
        self.recorded = self._recorded_values()
        self.mismatches: list[dict] = []
        self.checked = 0
        self.restored: list[int] = []
        self.executed: list[int] = []
        self._checkpoints = {c["iter"]: c for c in self.meta.get("checkpoints", [])}  # one restore per epoch

    @classmethod
    def from_env(cls) -> ReplayMode:
        """Load the segment named by FLOR_REPLAY."""
        path = Path(os.environ["FLOR_REPLAY"])
        seg = Segment.from_dict(json.loads(path.read_text()))
        return cls(seg, path.with_suffix(".result.json"), Path(os.environ["FLOR_REPLAY_STREAM"]))

    def _recorded_values(self) -> dict:
        import pyarrow.compute as pc

        from flor_lib.query import dataset

        table = dataset(self.store).to_table(
            columns=["loops", "iters", "name", "value", "value_text", "source", "kind"],
            filter=(pc.field("runid") == self.seg.runid) & (pc.field("projid") == self.seg.projid))
        out = {}
        for row in table.to_pylist():
            if row["source"] == "record" and row["kind"] == "log":
                key = (row["name"], tuple(zip(row["loops"], row["iters"], strict=True)))
                out[key] = row["value"] if row["value"] is not None else row["value_text"]
        return out

    # Run hooks ----------------------------------------------------------------------------------
    def arg(self, name: str, default: object) -> object:
        """The value the original run had (the default when the arg did not exist then)."""
        value = self.meta.get("args", {}).get(name, default)
        if value == "***":  # a masked secret: the replay gets it from its own command line, or the default
            from flor_lib.args import cast, parse_cli

            given = parse_cli(sys.argv[1:]).get(name)
            return cast(name, given, default) if given is not None else default
        return value

    def wants(self, name: str, value: object, ctx: tuple) -> bool:
        """Whether to record a logged value; values recorded at the time are compared instead."""
        live = self._live(ctx)
        if name not in self.names:
            if live:
                self._verify(name, value, ctx)
            return False
        return live

    def _live(self, ctx: tuple) -> bool:
        if not ctx:
            return (self.phase == "before" and self.seg.first) or (self.phase == "after" and self.seg.final)
        return ctx[0][1] >= self.seg.record_from

    def _verify(self, name: str, value: object, ctx: tuple) -> None:
        key = (name, ctx)
        if key not in self.recorded:
            return
        self.checked += 1
        old = self.recorded[key]
        new = value.item() if hasattr(value, "item") else value
        if isinstance(old, float) and isinstance(new, bool | int | float):
            same = float(new) == old
        else:
            same = str(new) == str(old)
        if not same and len(self.mismatches) < 20:
            self.mismatches.append({"name": name, "position": dict(ctx), "recorded": old, "replayed": new})
        elif not same:
            self.mismatches.append({"name": name})

    def outer_loop(self, run, name: str, iterable):
        """Yield only the segment's outer iterations, restoring state where the plan says so."""
        frame = sys._getframe(1)
        seg = self.seg
        self.phase = "loop"
        it = iter(iterable)
        index = -1
        if not seg.nested and seg.start > 0 and (seg.start - 1) in seg.restore:
            self._restore(run, seg.start - 1, frame)
        for item in it:
            index += 1
            if index < seg.start:
                continue
            if index >= seg.stop:
                break
            self.outer = index
            run.push(name, index)
            run._nested_done = False
            try:
                yield item
            finally:
                run.pop()
            if index not in self.restored:
                self.executed.append(index)
        self.phase = "after"
        if not seg.final:
            raise SystemExit(0)  # the code after the loops belongs to the final segment

    def nested_loop(self, run, name: str, iterable):
        """Run the nested loop, or replace it by the checkpoint taken when it finished."""
        frame = sys._getframe(1)
        if self.seg.nested and self.outer in self.seg.restore:
            self._restore(run, self.outer, frame)
            run._nested_done = True
            return
        yield from run.iterate(name, iterable)
        run._nested_done = True

    def _restore(self, run, index: int, frame) -> None:
        entry = self._checkpoints.get(index)
        if entry is None:
            raise FlorError(f"run {self.seg.runid} has no checkpoint at iteration {index}")
        try:
            data = ckpt_files.read(self.store, self.seg.projid, self.seg.runid, entry)
        except FileNotFoundError as exc:
            raise FlorError(f"checkpoint {entry['path']} of run {self.seg.runid} is missing: "
                            "replay again to fall back to an earlier one") from exc
        framevars.restore(frame, ckpt.apply(ckpt.load(data), run.objects))
        self.restored.append(index)

    def finish(self, run) -> None:
        """Write the segment's result (what ran, what was compared) next to its spec."""
        result = {"key": self.seg.key, "runid": self.seg.runid, "records": run.buffer.next_seq,
                  "restored": self.restored, "executed": self.executed, "checked": self.checked,
                  "mismatches": self.mismatches, "status": run.status}
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, self.result_path)
