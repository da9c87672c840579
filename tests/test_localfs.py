"""Local store roots work without fsspec and list what fsspec would."""

import os
import subprocess
import sys

import fsspec

from flor_lib import localfs


def test_local_roots_resolve_like_fsspec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ["store", f"{tmp_path}/store/", f"file://{tmp_path}/store", f"local://{tmp_path}/store"]:
        assert localfs.root_path(url) == fsspec.core.url_to_fs(url)[1], url
    assert localfs.root_path("s3://bucket/store") is None and localfs.root_path("memory://x") is None


def test_listing_matches_fsspec_find(tmp_path):
    for rel in ["records/projid=p/a.parquet", "records/projid=p/b.parquet", "records/projid=q/c.parquet"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(os.urandom(len(rel)))
    ours = localfs.listing(f"{tmp_path}/records")
    theirs = fsspec.filesystem("file").find(f"{tmp_path}/records", detail=True)
    assert {p: (i["size"], i["mtime"]) for p, i in ours.items()} == {
        p: (i["size"], i["mtime"]) for p, i in theirs.items()}
    assert localfs.listing(f"{tmp_path}/missing") == {}


def test_a_run_on_a_local_store_never_imports_fsspec(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nimport flor_lib as flor\nfor e in flor.loop('epoch', range(2)):\n"
                      "    flor.log('x', e)\nflor.commit()\nprint('fsspec' in sys.modules)\n")
    env = {"FLOR_STORE": str(tmp_path / "store"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"


def test_atomic_writes_replace_whole_files_and_leave_no_temp_files(tmp_path):
    from flor_lib.localfs import fsync_paths, write_atomic

    target = tmp_path / "a" / "b" / "x.bin"
    write_atomic(str(target), b"first")
    write_atomic(str(target), b"second", durable=False)
    fsync_paths([str(target), str(tmp_path / "missing.bin")])
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_a_checkpoint_of_many_buffers_lands_whole_through_short_and_batched_writes(tmp_path, monkeypatch):
    import os

    import numpy as np

    from flor_lib import localfs

    calls = []

    def short_writev(fd, buffers):  # the kernel may take less than asked, even mid-buffer
        calls.append(len(buffers))
        return os.write(fd, b"".join(bytes(b) for b in buffers)[:777])

    monkeypatch.setattr(os, "writev", short_writev)
    monkeypatch.setattr(localfs, "_IOV_MAX", 5)  # more buffers than one call may carry
    parts = [b"head", b"", np.arange(1000, dtype=np.float32), bytearray(b"x" * 3000), memoryview(b"tail")] * 3
    target = tmp_path / "ckpt" / "i000001.pt"
    localfs.write_atomic(str(target), parts, durable=False)
    assert target.read_bytes() == b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    assert max(calls) == 5 and len(calls) > 3
