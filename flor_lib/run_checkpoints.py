"""When and how a run checkpoints: the policy's decision, the snapshot on the training thread, the write."""

from __future__ import annotations

import time

from flor_lib import checkpoint as ckpt
from flor_lib import framevars
from flor_lib.errors import FlorError

INLINE_BYTES = 8 << 20  # up to this size the training thread writes a checkpoint itself (~5 ms at most)


class Checkpoints:
    """The checkpointing half of Run (its state is set up in Run.__init__)."""

    def maybe_checkpoint(self, index: int, frame) -> None:
        """Checkpoint outer iteration index if the policy allows (always the last one)."""
        if not self.objects or self.replay is not None:
            return
        if self._segment_deadline is not None and time.perf_counter() >= self._segment_deadline:
            self._segment_stop = index + 1  # time is up: end the segment after this iteration, checkpointed
        last = (self._outer_len is not None and index == self._outer_len - 1) or (
            self._segment_stop is not None and index == self._segment_stop - 1)
        if not self.policy.should_save(index + 1, last):
            return
        t0, cpu0 = time.perf_counter(), time.thread_time()
        state = ckpt.snapshot_parts(self.objects,
                                    framevars.capture(frame, framevars.nested_loop_names(str(self.script))))
        if isinstance(state, list):  # flor's format, viewing the live tensors: write or copy them now
            size = sum(memoryview(p).nbytes for p in state)
            if size <= INLINE_BYTES and self.store.is_local and not self.store.offline and self.writer.idle():
                # small state on a local disk: one copy, straight into the page cache, cheaper than a copy
                # handed to the writer thread (which then competes with training for the cores)
                try:
                    self.store.write_bytes(self._checkpoint_path(index), state, durable=False)
                except OSError as exc:  # a full disk: training goes on, the next checkpoint tries again
                    self.writer.failed(exc)
                    self.skipped_checkpoints += 1
                    return
                state = size
            else:
                state = b"".join(state)
        seq = self.buffer.next_seq
        copy_s = time.perf_counter() - t0
        self.cost.add("snapshot", time.thread_time() - cpu0)
        if not self.writer.submit(index, state, seq, copy_s, last):  # the last one is never skipped
            self.skipped_checkpoints += 1

    def _checkpoint_path(self, index: int) -> str:
        return f"{self.store.checkpoint_dir(self.projid, self.runid)}/i{index:06d}.pt"

    def _write_checkpoint(self, index: int, state: bytes | dict | int, seq: int, copy_s: float,
                          last: bool) -> None:
        """Write a checkpoint (an int: already written, of that size), then list it in due time."""
        t0, cpu0 = time.perf_counter(), time.thread_time()
        path = self._checkpoint_path(index)
        if isinstance(state, int):
            size = state
        else:
            data = state if isinstance(state, bytes) else ckpt.serialize(state)
            self.store.write_bytes(path, data, durable=False)  # fsynced in a batch when listed: _adopt_unlisted
            size = len(data)
        save_cpu = time.thread_time() - cpu0
        self._unlisted.append(
            {"iter": index, "path": path.rsplit("/", 1)[-1], "bytes": size, "seq": seq,
             "copy_s": round(copy_s, 6), "save_s": round(time.perf_counter() - t0, 6),
             "save_cpu_s": round(save_cpu, 6), "attempt": self.attempt})
        # what training pays for this checkpoint: its own copy, and the CPU this thread takes from it (not
        # fsync waits); the listing below is paced on its own budget and would skew the next prediction
        self.policy.record_cost(copy_s + save_cpu)
        self._meta_pacer.maybe(self._list_checkpoints, force=last or not self.checkpoints)
        self.cost.add("checkpoint_writer", time.thread_time() - cpu0)

    def _list_checkpoints(self) -> None:
        """Make the records before the written checkpoints durable, then list them in the run's metadata."""
        self.buffer.flush()
        if not self.store.is_local:
            self.buffer.mirror_now(force=True)  # ...on the store too, so any host can resume from it
        self._adopt_unlisted()
        self._save_meta()

    def _adopt_unlisted(self) -> None:
        """Move written checkpoints into the listed ones (a rewritten iteration replaces its old entry)."""
        new, self._unlisted = self._unlisted, []
        folder = self.store.checkpoint_dir(self.projid, self.runid)
        self.store.make_durable([f"{folder}/{c['path']}" for c in new])  # listed means durable
        redone = {c["iter"] for c in new}
        self.checkpoints = [c for c in self.checkpoints if c["iter"] not in redone] + new

    def _read_checkpoint(self, entry: dict) -> bytes:
        path = f"{self.store.checkpoint_dir(self.projid, self.runid)}/{entry['path']}"
        try:
            return self.store.fetch_cached(path, version=f"{entry['attempt']}-{entry['seq']}-{entry['bytes']}")
        except FileNotFoundError as exc:
            raise FlorError(f"checkpoint {entry['path']} of run {self.runid} is missing") from exc
