"""Local store files without fsspec (100 ms of import a training process need not pay)."""

from __future__ import annotations

import itertools
import os
import uuid

_HAS_WRITEV = hasattr(os, "writev")  # not on Windows
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_TMP_PREFIX = uuid.uuid4().hex[:8]  # with the pid: a reused pid on another host sharing the folder differs
_tmp_ids = itertools.count()


def root_path(url: str) -> str | None:
    """The absolute path of a local root (a path, file:// or local:// URL), None for any other protocol."""
    for scheme in ("file://", "local://"):
        if url.startswith(scheme):
            return os.path.abspath(url[len(scheme):])
    return None if "://" in url or url.startswith("memory:") else os.path.abspath(url)


def listing(prefix: str) -> dict[str, dict]:
    """Every file under a local directory with fsspec-like info (name, size, type, mtime)."""
    found = {}
    for folder, _, names in os.walk(prefix):
        for name in names:
            path = f"{folder}/{name}"
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed between the walk and the stat (a merge)
                continue
            found[path] = {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime}
    return found


def write_atomic(path: str, data: bytes | list, durable: bool = True) -> None:
    """Write a file (bytes, or a list of buffers gathered in one writev) whole or not at all: temp file +
    rename; fsync it first when durable."""
    tmp = f"{path}.tmp-{_TMP_PREFIX}{os.getpid()}-{next(_tmp_ids)}"  # unique per process and call; no urandom
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except FileNotFoundError:  # the folder is new (checked only then: makedirs costs a checkpoint 0.1 ms)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_all(fd, data if isinstance(data, list) else [data])
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)  # a full disk leaves no half-written temp file behind
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_all(fd: int, parts: list) -> int:
    """Write buffers back to back, straight from their memory (a tensor's bytes), in as few syscalls as the
    kernel allows (a checkpoint is ~40 buffers: 40 write calls cost the training thread 0.5 ms); return
    the bytes written."""
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    total = sum(v.nbytes for v in views)
    i = 0
    while i < len(views):
        batch = views[i: i + _IOV_MAX]
        written = os.writev(fd, batch) if _HAS_WRITEV else os.write(fd, batch[0])
        while i < len(views) and written >= views[i].nbytes:  # skip what went out whole
            written -= views[i].nbytes
            i += 1
        if written:  # a short write stopped inside this buffer: the rest of it goes next
            views[i] = views[i][written:]
    return total


def fsync_paths(paths: list[str]) -> None:
    """fsync files (missing ones are skipped) and, once each, the directories holding them."""
    done = set()
    for path in paths:
        for target in (path, os.path.dirname(path)):
            if target in done:
                continue
            try:
                fd = os.open(target, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            done.add(target)
