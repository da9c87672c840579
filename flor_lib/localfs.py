"""Local store files without fsspec (100 ms of import a training process need not pay)."""

from __future__ import annotations

import os
import uuid


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
    """Write a file (bytes, or a list of buffers written in turn) whole or not at all: temp file + rename;
    fsync it first when durable."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        for part in data if isinstance(data, list) else [data]:
            view = memoryview(part).cast("B")  # straight from the buffer (a tensor's bytes) to the file
            while view:
                view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)  # a full disk leaves no half-written temp file behind
        raise
    os.close(fd)
    os.replace(tmp, path)


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
