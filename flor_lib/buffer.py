"""In-memory record buffer and the background thread that flushes it to an Arrow IPC stream."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from flor_lib import arrow_build as ab
from flor_lib.errors import FlorError
from flor_lib.schema import RECORD_SCHEMA

Row = tuple  # (seq, loops_ctx, kind, name, value_type, number, text)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd" if pa.Codec.is_available("zstd") else None)


class RecordBuffer:
    """Collects records as tuples on the training thread; a daemon thread writes them in batches.

    The file is an Arrow IPC stream: every flushed batch stays readable if the process dies
    later, which a Parquet file (footer written last) would not. The writer holds an flock on it
    (`stream_in_use`). With a mirror callback (a remote store) the thread also hands a whole copy
    of the file to it every mirror_interval seconds (FLOR_UPLOAD_SECONDS), when there is news.
    """

    def __init__(self, path: Path, run_keys: dict, attempt: int, source: str = "record",
                 replay_id: str | None = None, interval: float = 2.0, first_seq: int = 0,
                 mirror: Callable[[Path, bytes], None] | None = None,
                 mirror_interval: float | None = None) -> None:
        self.path = path
        self._keys = run_keys
        self._attempt = attempt
        self._source = source
        self._replay_id = replay_id
        self._interval = interval
        # deque.append and next() are atomic under the GIL: the training thread takes no lock
        self._rows: deque[Row] = deque()
        self._counter = itertools.count(first_seq)
        self._io_lock = threading.Lock()
        self._seq = first_seq
        self._first_seq = first_seq
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._mirror_error: BaseException | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self.flushed_seq = first_seq  # every record with seq < flushed_seq is durable
        self._mirror = mirror
        self._mirror_interval = mirror_interval if mirror_interval is not None else _upload_seconds()
        self._mirrored_seq = first_seq
        self._last_mirror = time.monotonic()
        self.mirrored = False  # whether a copy was handed to the mirror
        self.thread_cpu_s = 0.0  # CPU of the background flushes
        self._thread = threading.Thread(target=self._loop, name="flor-flush", daemon=True)
        self._thread.start()

    @property
    def next_seq(self) -> int:
        """Sequence number the next record will get."""
        return self._seq

    def append(self, ctx: tuple, kind: str, name: str, vtype: str, number, text) -> None:
        """Buffer one record; called on the training thread, so it only appends a tuple."""
        seq = next(self._counter)
        self._rows.append((seq, ctx, kind, name, vtype, number, text))
        if seq >= self._seq:  # exact when one thread logs; with several, seqs still never repeat
            self._seq = seq + 1

    def flush(self) -> int:
        """Write everything buffered so far and fsync it; return the durable sequence bound."""
        with self._io_lock:
            pending = self._rows
            rows = [pending.popleft() for _ in range(len(pending))]  # only this side pops
            bound = max(self.flushed_seq, max(r[0] for r in rows) + 1) if rows else self.flushed_seq
            if rows:
                size = _size(self.path)
                try:
                    self._write(rows)
                except BaseException:
                    self._cut_back(size)
                    self._rows.extendleft(reversed(rows))  # kept for the next flush (a full disk may free up)
                    raise
            self.flushed_seq = bound
            return bound

    def close(self, mirror: bool = False) -> None:
        """Stop the thread, flush the rest and close the file (mirror: hand a final copy to the mirror).

        Raises RecordsNotWritten when the rest cannot be written; the file keeps every batch before it.
        """
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception as exc:
            self._close_file()
            lost = len(self._rows)
            raise RecordsNotWritten(self.path, lost, self.flushed_seq - self._first_seq, exc) from exc
        self._close_file()
        if mirror:
            self.mirror_now(force=True)

    def _close_file(self) -> None:
        with self._io_lock:
            if self._writer is not None:
                try:
                    self._writer.close()
                except OSError:  # no room for the end-of-stream marker: readers stop at the last batch anyway
                    pass
                finally:
                    self._sink.close()  # also releases the flock
                    self._writer = self._sink = None

    def _cut_back(self, size: int) -> None:
        """Truncate the file to its size before a failed write: a torn batch would hide every later one."""
        try:
            if size == 0 and self._sink is not None:  # the stream header itself may be torn: start over
                self._sink.close()
                self._writer = self._sink = None
            os.truncate(self.path, size)
        except OSError:
            pass

    def mirror_now(self, force: bool = False) -> bool:
        """Hand a copy of the whole file to the mirror if it changed (and the interval passed, unless force)."""
        if self._mirror is None or self.flushed_seq == self._mirrored_seq:
            return False
        if not force and time.monotonic() - self._last_mirror < self._mirror_interval:
            return False
        with self._io_lock:
            seq = self.flushed_seq
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return False
        self._last_mirror = time.monotonic()
        self._mirror(self.path, data)  # outside the lock: an upload may take a while
        self._mirrored_seq, self.mirrored = seq, True
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            cpu = time.thread_time()
            self._flush_and_mirror()
            self.thread_cpu_s += time.thread_time() - cpu

    def _flush_and_mirror(self) -> None:
        try:
            self.flush()
        except BaseException as exc:  # a full disk must not kill training; report once
            if self._error is None:
                self._error = exc
                if self.on_error:
                    self.on_error(exc)
        try:
            self.mirror_now()
        except Exception as exc:  # the store reports its own outages; anything else once
            if self._mirror_error is None:
                self._mirror_error = exc
                print(f"flor: warning: live copy of {self.path.name} not uploaded ({exc})", file=sys.stderr)

    def _write(self, rows: list[Row]) -> None:
        batch = self._to_batch(rows)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.path), "ab")
            _lock(self._sink.fileno())
            # zstd batches: ~5x smaller spool files and live uploads, and no slower to write
            self._writer = pa.ipc.new_stream(self._sink, RECORD_SCHEMA, options=_IPC_OPTIONS)
        self._writer.write_batch(batch)
        self._sink.flush()
        os.fsync(self._sink.fileno())

    def _to_batch(self, rows: list[Row]) -> pa.RecordBatch:
        try:
            return self._build_batch(rows)
        except (UnicodeEncodeError, pa.ArrowException):
            # one string UTF-8 cannot encode (a lone surrogate) must not take the batch with it
            return self._build_batch([(*r[:6], _utf8(r[6])) if isinstance(r[6], str) else r for r in rows])

    def _build_batch(self, rows: list[Row]) -> pa.RecordBatch:
        n = len(rows)
        seq, ctx, kind, name, vtype, number, text = zip(*rows, strict=True)
        k = self._keys
        tstamp = k["tstamp"] if isinstance(k["tstamp"], datetime) else datetime.fromisoformat(k["tstamp"])
        if tstamp.tzinfo is None:  # naive means UTC, as Arrow reads it
            tstamp = tstamp.replace(tzinfo=UTC)
        micros = (tstamp - _EPOCH) // timedelta(microseconds=1)
        loops = [c[0] for x in ctx for c in x]
        cols = [
            ab.repeated_string(k["projid"], n),
            ab.repeated_string(k["runid"], n),
            ab.numbers(RECORD_SCHEMA.field("tstamp").type, [micros] * n),
            ab.repeated_string(k["vid"], n),
            ab.repeated_string(k["filename"], n),
            ab.numbers(pa.int32(), [self._attempt] * n),
            ab.numbers(pa.int64(), seq),
            ab.lists(ab.strings(loops), [len(x) for x in ctx]),
            ab.lists(ab.numbers(pa.int64(), [c[1] for x in ctx for c in x]), [len(x) for x in ctx]),
            ab.strings(kind),
            ab.strings(name),
            ab.numbers(pa.float64(), number),
            ab.strings(text),
            ab.strings(vtype),
            ab.repeated_string(self._source, n),
            ab.repeated_string(self._replay_id, n),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=RECORD_SCHEMA)


class RecordsNotWritten(FlorError):
    """Records still in memory when the buffer closed because writing them failed (a full disk)."""

    def __init__(self, path: Path, lost: int, kept: int, cause: BaseException) -> None:
        self.path, self.lost, self.kept = path, lost, kept
        errno = getattr(cause, "errno", None)
        self.reason = os.strerror(errno) if errno else (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        super().__init__(f"{lost} records could not be written to {path} ({self.reason}); "
                         f"the {kept} written before them are kept there")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _upload_seconds() -> float:
    return float(os.environ.get("FLOR_UPLOAD_SECONDS", 30.0))


def _lock(fd: int) -> bool:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (ImportError, OSError):
        return False


def stream_in_use(path: Path) -> bool:
    """Whether a live process is still writing a stream (it holds the file's flock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _lock(fd)  # closing the descriptor releases a lock taken here
    finally:
        os.close(fd)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def read_stream(path: Path | str, filesystem=None) -> pa.Table:
    """Read an IPC stream up to its last complete batch (a crash may leave a torn tail)."""
    batches = []
    opener = filesystem.open if filesystem is not None else open
    try:
        with opener(str(path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError):
                    break
    except (pa.ArrowInvalid, OSError, FileNotFoundError):
        pass
    return pa.Table.from_batches(batches, schema=RECORD_SCHEMA)
