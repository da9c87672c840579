"""When and how a run checkpoints: the policy's decision, the snapshot on the training thread, the write."""

from __future__ import annotations

import time

from flor_lib import checkpoint as ckpt
from flor_lib import ckpt_files, framevars
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
                # small state on a local disk: appended to the attempt's pack from the tensors' memory, one
                # copy, cheaper than a copy handed to the writer thread (which competes for the cores)
                if self._pack is None:
                    self._pack = ckpt_files.Pack(
                        f"{self.store.checkpoint_dir(self.projid, self.runid)}/{ckpt_files.pack_name(self.attempt)}")
                try:
                    state = self._pack.append(state)
                except OSError as exc:  # a full disk: training goes on, the next checkpoint tries again
                    self.writer.failed(exc)
                    self.skipped_checkpoints += 1
                    return
            else:
                state = b"".join(state)
        seq = self.buffer.next_seq
        copy_s = time.perf_counter() - t0
        self.cost.add("snapshot", time.thread_time() - cpu0)
        if not self.writer.submit(index, state, seq, copy_s, last):  # the last one is never skipped
            self.skipped_checkpoints += 1

    def _write_checkpoint(self, index: int, state: bytes | dict | tuple, seq: int, copy_s: float,
                          last: bool) -> None:
        """Write a checkpoint (a tuple: already packed at (offset, size)), then list it in due time."""
        t0, cpu0 = time.perf_counter(), time.thread_time()
        if isinstance(state, tuple):
            where = {"path": ckpt_files.pack_name(self.attempt), "offset": state[0]}
            size = state[1]
        else:
            data = state if isinstance(state, bytes) else ckpt.serialize(state)
            where = {"path": ckpt_files.file_name(index)}
            # fsynced in a batch when listed: _adopt_unlisted
            self.store.write_bytes(f"{self.store.checkpoint_dir(self.projid, self.runid)}/{where['path']}",
                                   data, durable=False)
            size = len(data)
        save_cpu = time.thread_time() - cpu0
        self._unlisted.append(
            {"iter": index, **where, "bytes": size, "seq": seq,
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
        self.store.make_durable(list(dict.fromkeys(f"{folder}/{c['path']}" for c in new)))  # listed = durable
        redone = {c["iter"] for c in new}
        self.checkpoints = [c for c in self.checkpoints if c["iter"] not in redone] + new

    def _read_checkpoint(self, entry: dict) -> bytes:
        try:
            return ckpt_files.read(self.store, self.projid, self.runid, entry)
        except FileNotFoundError as exc:
            raise FlorError(f"checkpoint {entry['path']} of run {self.runid} is missing") from exc
