"""Where a run's checkpoints live in the store, and reading one back.

Small checkpoints on a local disk are appended to one pack file per attempt (`a{attempt}.pack`): a new
file per checkpoint cost training ~1.5% of its time here (an inode, its journal entry, fresh page-cache
pages: paired, 150 epochs of the tutorial's model, 3.6% -> 1.8% in all), far more than the write itself.
Larger states and remote stores get a file each (`i{iter:06d}.pt`). A metadata entry names its file; a
packed one adds its offset. A torn tail (a kill mid-append) is never listed, so never read; listing a
batch fsyncs the pack first (run_checkpoints._adopt_unlisted).
"""

from __future__ import annotations

import os

from flor_lib import localfs


def file_name(index: int) -> str:
    """The name of a checkpoint written to a file of its own."""
    return f"i{index:06d}.pt"


def pack_name(attempt: int) -> str:
    """The name of an attempt's pack of checkpoints."""
    return f"a{attempt}.pack"


class Pack:
    """One attempt's append-only checkpoint file, written by the training thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._end = 0

    def append(self, parts: list) -> tuple[int, int]:
        """Write the buffers at the end of the pack; return (offset, size) of what was written."""
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            self._end = os.fstat(self._fd).st_size  # a reused attempt number appends after what is there
        offset = self._end
        try:
            size = localfs.write_all(self._fd, parts)
        except OSError:
            self._end = os.fstat(self._fd).st_size  # a short append (full disk): the next starts after it
            raise
        self._end += size
        return offset, size

    def close(self) -> None:
        """Close the file (its data is made durable when its entries are listed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read(store, projid: str, runid: str, entry: dict) -> bytes:
    """A listed checkpoint's bytes, from its own file or its pack; FileNotFoundError if either is gone."""
    path = f"{store.checkpoint_dir(projid, runid)}/{entry['path']}"
    version = f"{entry['attempt']}-{entry['seq']}-{entry['bytes']}"
    if "offset" not in entry:
        return store.fetch_cached(path, version=version)
    data = store.fetch_cached(path, version=version, start=entry["offset"], length=entry["bytes"])
    if len(data) != entry["bytes"]:
        raise FileNotFoundError(f"{path} ends before the checkpoint of iteration {entry['iter']}")
    return data


def present(listed: list[dict], files: dict[str, int]) -> list[dict]:
    """The listed checkpoints whose bytes exist, given the run's checkpoint files (name -> size)."""
    return [c for c in listed if c["path"] in files
            and ("offset" not in c or c["offset"] + c["bytes"] <= files[c["path"]])]
