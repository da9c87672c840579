"""How a run ends: exit hooks, and the commit that finalizes its records and metadata."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime

from flor_lib import config
from flor_lib.buffer import RecordsNotWritten
from flor_lib.errors import FlorError, warn


class Lifecycle:
    """The ending half of Run: installed at its start, run at exit (or by flor.commit)."""

    def _install_exit_hooks(self) -> None:
        atexit.register(self._at_exit)
        previous = sys.excepthook

        def hook(kind, exc, tb):
            self.status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
            if issubclass(kind, FlorError) and not config.debug():
                print(f"flor: error: {exc}", file=sys.stderr)
                self.commit()
                return
            previous(kind, exc, tb)

        sys.excepthook = hook
        plain_exit = sys.exit

        def exit_(code: object = None) -> None:
            if code not in (None, 0) and self.status == "running":
                self.status = "failed"
            plain_exit(code)

        sys.exit = exit_
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):
            def on_term(signum, frame):
                self.status = "interrupted"
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_term)
        parent = os.environ.get("FLOR_PARENT_PID", "")
        if parent.isdigit() and (int(parent) == os.getppid() or not pid_alive(int(parent))):
            # (a process started by our launcher's child inherits the variable: it keeps a live parent's pid)
            threading.Thread(target=_end_with_parent, args=(int(parent),), name="flor-parent", daemon=True).start()

    def _at_exit(self) -> None:
        """Commit at interpreter exit; records that could not be written make the exit status non-zero."""
        self.commit()
        if self.lost is not None:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(self.lost.exit_code)  # an atexit handler cannot change the exit status any other way

    def commit(self) -> None:
        """Flush records, wait for checkpoints, finalize the run's records and metadata."""
        if self._closed:
            return
        self._closed = True
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if main else None  # no commit cut in half
        cpu = time.thread_time()
        try:
            self._commit()
            self._save_cost(time.thread_time() - cpu)
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _save_cost(self, exit_cpu: float) -> None:
        """Add flor's own CPU for this attempt to the metadata (after compaction, so it counts too)."""
        if self.replay is not None or self.lost is not None or self.store.offline:
            return
        self.cost.add("exit", exit_cpu)
        self.cost.add("record_flush", self.buffer.thread_cpu_s)
        self.meta["attempts"][-1]["cost"] = self.cost.summary(iterations=self.iterations,
                                                              records=self.buffer.next_seq)
        try:
            self._save_meta()
        except OSError as exc:  # informational: the run itself is complete
            warn(f"flor's cost of this run not saved ({exc})")

    def _commit(self) -> None:
        if self.replay is not None:
            try:
                self.buffer.close()
            except RecordsNotWritten as exc:  # no result for the engine: the segment fails and lands nothing
                self.lost = exc
                print(f"flor: error: {exc}; this replay segment failed", file=sys.stderr)
                return
            if self.status == "running":
                self.status = "completed"
            self.replay.finish(self)
            return
        self.writer.close()
        deferred = os.environ.get("FLOR_DEFER_AGGREGATE") == "1"
        try:
            self.buffer.close(mirror=deferred)  # a deferred stream's copy lets another host aggregate it
        except RecordsNotWritten as exc:
            self.lost, self.status = exc, "failed"
        if not self.lost:  # every record is durable now, so every written checkpoint can be listed
            self._adopt_unlisted()
        if self._pack is not None:
            self._pack.close()
        self._vid_ready.wait(60)
        if self.status == "running":
            self.status = "completed"
        self.meta["status"] = self.status
        self.meta["end"] = datetime.now(UTC).isoformat()
        self.meta["outer_iters"] = max(self._outer_iters, self.meta.get("outer_iters") or 0)
        self.meta["records"] = self.buffer.flushed_seq if self.lost else self.buffer.next_seq
        self.meta["attempts"][-1]["end"] = self.meta["end"]
        if self._resume_pending:  # the resume failed before restoring: the earlier attempt's records stand
            self.meta["attempts"].pop()
            self.meta["status"] = "failed"
        try:
            self._save_meta()
        except OSError:
            if not self.lost:
                raise
            self._report_lost(marked=False)  # the same full disk: the metadata still says running
            return
        if self.lost:  # the stream stays in the spool, readable up to its last batch, for `flor sync`
            self._report_lost(marked=True)
            return
        if not deferred and not self.store.offline:  # offline: the store said so; `flor sync` finalizes
            from flor_lib import compact

            try:
                compact.finalize_run(self.store, self.projid, self.runid, truncate=truncation(self.meta))
                compact.merge_project(self.store, self.projid)
            except Exception as exc:
                from flor_lib.store import remote_failure

                if self.store.remote and remote_failure(exc):
                    self.store.go_offline(exc)  # the one error line: records stay in the spool for `flor sync`
                else:
                    warn(f"records stay in the spool until `flor sync` ({exc})")


    def _report_lost(self, marked: bool) -> None:
        if config.debug():
            import traceback

            traceback.print_exception(self.lost)
        state = "is marked failed" if marked else "could not be marked failed either"
        print(f"flor: error: {self.lost}; run {self.runid} {state}: free disk space, then "
              f"`flor resume {self.runid}` continues it from its last checkpoint", file=sys.stderr)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this host."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_with_parent(parent: int) -> None:
    # a flow's training process must not outlive the flow process that launched it (a killed worker):
    # SIGTERM ends it as interrupted, records finalized, before the segment is resumed elsewhere
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def truncation(meta: dict) -> dict[int, int]:
    """For each attempt that a later attempt resumed, the first seq that the later one redid."""
    attempts = meta.get("attempts", [])
    return {a["attempt"]: b["start_seq"] for a, b in zip(attempts, attempts[1:], strict=False)}
