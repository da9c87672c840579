"""The store root (local path or s3:// URL through fsspec): layout and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import fsspec

from flor_lib import config
from flor_lib.errors import FlorError


class Store:
    """One fsspec root holding records, run metadata and checkpoints.

    Layout: records/projid=P/*.parquet (compacted), runs/P/RUNID.json (metadata),
    checkpoints/P/RUNID/*.pt, and a local spool live/P/RUNID/*.arrows for records being written.
    """

    def __init__(self, root: str | None = None) -> None:
        self.root = root or config.store_root()
        opts = {}
        endpoint = os.environ.get("FLOR_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if self.root.startswith("s3://") and endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        self.fs, self.base = fsspec.core.url_to_fs(os.path.expanduser(self.root), **opts)
        self.is_local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol

    def path(self, *parts: str) -> str:
        """Join parts under the store root."""
        return "/".join([self.base.rstrip("/"), *parts])

    @property
    def spool(self) -> Path:
        """Local directory where running processes write their record streams."""
        if self.is_local:
            return Path(self.path("live"))
        digest = hashlib.sha1(self.root.encode()).hexdigest()[:12]
        return Path.home() / ".cache" / "flor" / "spool" / digest

    def check_writable(self) -> None:
        """Raise a FlorError naming the fix when the root cannot be written."""
        try:
            self.fs.makedirs(self.path("runs"), exist_ok=True)
            probe = self.path("runs", f".probe-{uuid.uuid4().hex}")
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except (OSError, PermissionError) as exc:
            raise FlorError(
                f"the store {self.root} is not writable ({exc.__class__.__name__}): "
                "set FLOR_STORE to a writable directory or bucket"
            ) from exc

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole object atomically: rename on disk, a single PUT on object stores."""
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def write_json(self, path: str, obj: dict) -> None:
        """Write a JSON document atomically."""
        self.write_bytes(path, json.dumps(obj, indent=1, default=str).encode())

    def read_json(self, path: str) -> dict | None:
        """Read a JSON document, or None when it does not exist."""
        try:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def run_meta_path(self, projid: str, runid: str) -> str:
        """Where a run's metadata document lives."""
        return self.path("runs", projid, f"{runid}.json")

    def run_meta(self, projid: str, runid: str) -> dict | None:
        """A run's metadata, or None."""
        return self.read_json(self.run_meta_path(projid, runid))

    def projects(self) -> list[str]:
        """Every project that has run metadata."""
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path("runs"), detail=False)
                          if self.fs.isdir(p))
        except FileNotFoundError:
            return []

    def runs(self, projid: str | None = None) -> list[dict]:
        """Metadata of every run (of one project when projid is given), oldest first."""
        metas = []
        for p in [projid] if projid else self.projects():
            try:
                files = self.fs.glob(self.path("runs", p, "*.json"))
            except FileNotFoundError:
                continue
            if files and not self.is_local:
                blobs = self.fs.cat(files)
                metas += [json.loads(b) for b in blobs.values()]
            else:
                metas += [m for m in (self.read_json(f) for f in files) if m]
        return sorted(metas, key=lambda m: (m.get("tstamp", ""), m.get("runid", "")))

    def find_run(self, runid: str, projid: str | None = None) -> dict:
        """The metadata of a run by id, or a FlorError listing how to find ids."""
        for p in [projid] if projid else self.projects():
            meta = self.run_meta(p, runid)
            if meta:
                return meta
        raise FlorError(f"no run named {runid!r} in {self.root}: `flor ls` lists the runs")

    def records_dir(self, projid: str) -> str:
        """Directory of a project's compacted Parquet files."""
        return self.path("records", f"projid={projid}")

    def checkpoint_dir(self, projid: str, runid: str) -> str:
        """Directory of a run's checkpoints."""
        return self.path("checkpoints", projid, runid)
