"""Local store roots without fsspec (100 ms of import a training process need not pay)."""

from __future__ import annotations

import os


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
