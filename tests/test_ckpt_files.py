"""A run's small checkpoints go to one pack per attempt; each listed one reads back whole."""

from __future__ import annotations

import errno
import os

import pytest

from flor_lib import ckpt_files, localfs
from flor_lib.store import Store


def _entry(i: int, where: tuple[int, int]) -> dict:
    return {"iter": i, "path": "a1.pack", "offset": where[0], "bytes": where[1], "seq": i, "attempt": 1}


def test_a_pack_reads_back_every_checkpoint_even_after_a_torn_append(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"))
    pack = ckpt_files.Pack(f"{store.checkpoint_dir('p', 'r')}/a1.pack")
    first = pack.append([b"head", memoryview(b"zero")])

    def torn(fd, parts):  # the disk fills mid-append: some bytes land, then ENOSPC
        os.write(fd, b"to")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(localfs, "write_all", torn)
    with pytest.raises(OSError):
        pack.append([b"torn!"])
    monkeypatch.undo()
    second = pack.append([b"one"])
    pack.close()
    again = ckpt_files.Pack(pack.path)  # the same attempt number again: appends after what is there
    third = again.append([b"two"])
    again.close()
    entries = [_entry(0, first), _entry(1, second), _entry(2, third)]
    assert [ckpt_files.read(store, "p", "r", e) for e in entries] == [b"headzero", b"one", b"two"]
    size = os.path.getsize(pack.path)
    assert ckpt_files.present(entries, {"a1.pack": size}) == entries
    cut = ckpt_files.present(entries, {"a1.pack": size - 1})  # a pack cut short loses its last checkpoint
    assert cut == entries[:2] and ckpt_files.present(entries, {}) == []
    with pytest.raises(FileNotFoundError):
        ckpt_files.read(store, "p", "r", {**entries[2], "offset": size})
