"""The store root (local path or s3:// URL through fsspec): layout, atomic writes, offline fallback, caches."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import threading
import uuid
from pathlib import Path

from flor_lib import config, localfs
from flor_lib.errors import FlorError

RUNS_INDEX = "_index.json.gz"  # runs/<projid>/_index.json.gz: metas of a project's runs, keyed by version
_announced: set[str] = set()
_announce_lock = threading.Lock()


def cache_root() -> Path:
    """Host-local directory for spools, the offline outbox and downloaded objects (FLOR_CACHE_DIR)."""
    return Path(os.environ.get("FLOR_CACHE_DIR") or Path.home() / ".cache" / "flor")


def _fs_options(root: str) -> dict:
    if not root.startswith("s3://"):
        return {}
    cfg: dict = {"connect_timeout": 5, "read_timeout": 60}
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        cfg["retries"] = {"max_attempts": 3, "mode": "standard"}  # ~5 s to give up on a dead endpoint
    opts: dict = {"config_kwargs": cfg}
    endpoint = os.environ.get("FLOR_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def remote_failure(exc: BaseException) -> bool:
    """Whether an exception means the remote store is unreachable or refuses us (not a bug of ours)."""
    if isinstance(exc, OSError):
        return True
    return any(c.__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp") for c in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    """A one-line description of a remote failure."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class Store:
    """One fsspec root holding records, run metadata and checkpoints.

    Layout: records/projid=P/*.parquet (compacted), runs/P/RUNID.json (metadata),
    checkpoints/P/RUNID/{a<attempt>.pack,i<iter>.pt} (ckpt_files), and a local spool live/P/RUNID/*.arrows for records being written
    (on a remote root the spool is host-local and live/ holds uploaded copies of running streams).
    A remote store that fails goes offline for the rest of the process: writes land in a local
    outbox that `flor sync` (flor_lib.sync) uploads later.
    """

    def __init__(self, root: str | None = None) -> None:
        self.root = root or config.store_root()
        local = localfs.root_path(os.path.expanduser(self.root))
        if local is not None:  # fsspec (100 ms of import) only when a query or a listing needs it
            self._fs, self.base, self.is_local = None, local, True
        else:
            import fsspec

            self._fs, self.base = fsspec.core.url_to_fs(os.path.expanduser(self.root), **_fs_options(self.root))
            self.is_local = self._fs.protocol in ("file", ("file", "local")) or "file" in self._fs.protocol
        self.remote = not self.is_local
        self.remote_base = self.base
        self.offline = False
        self.offline_reason: str | None = None
        key = hashlib.sha1(self.root.encode()).hexdigest()[:12]
        cache = cache_root()
        self._spool = Path(self.path("live")) if self.is_local else cache / "spool" / key
        self.outbox = cache / "outbox" / key
        self.objects = cache / "objects" / key

    @property
    def fs(self):
        """The fsspec filesystem of the root (the local one is created on first use)."""
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem("file")
        return self._fs

    @fs.setter
    def fs(self, value) -> None:
        self._fs = value

    def path(self, *parts: str) -> str:
        """Join parts under the store root."""
        return "/".join([self.base.rstrip("/"), *parts])

    @property
    def spool(self) -> Path:
        """Local directory where running processes write their record streams."""
        return self._spool

    def rel(self, path: str) -> str:
        """A store path relative to the root (accepts paths from before going offline)."""
        for base in (self.remote_base.rstrip("/"), self.base.rstrip("/")):
            if path.startswith(base + "/"):
                return path[len(base) + 1:]
        return path

    def _here(self, path: str) -> str:
        return self.path(self.rel(path)) if self.offline else path

    # failures -----------------------------------------------------------------------------------
    def go_offline(self, exc: BaseException) -> None:
        """Send every later write of this process to the local outbox, saying so once."""
        if self.offline:
            return
        self.offline, self.offline_reason = True, describe(exc)
        self._fs, self.base, self.is_local = None, str(self.outbox), True
        with _announce_lock:
            if self.root in _announced:
                return
            _announced.add(self.root)
        print(f"flor: error: store {self.root} unreachable ({self.offline_reason}); recording into the local "
              f"spool {self.spool} and outbox {self.outbox}: `flor sync` uploads them later", file=sys.stderr)

    def unreachable(self, exc: BaseException | str) -> FlorError:
        """The one-line error for a remote store that cannot be read."""
        reason = exc if isinstance(exc, str) else describe(exc)
        return FlorError(f"store {self.root} unreachable ({reason}): check the endpoint "
                         "(FLOR_S3_ENDPOINT_URL / AWS_ENDPOINT_URL) and AWS credentials")

    def check_writable(self) -> None:
        """Raise a FlorError naming the fix when a local root cannot be written; a remote one goes offline."""
        if self.remote and not self.offline:
            try:
                self._probe()
            except Exception as exc:
                if not remote_failure(exc):
                    raise
                self.go_offline(exc)
            return
        try:
            os.makedirs(self.path("runs"), exist_ok=True)
            probe = self.path("runs", f".probe-{uuid.uuid4().hex}")
            Path(probe).write_bytes(b"")
            os.remove(probe)
        except (OSError, PermissionError) as exc:
            raise FlorError(
                f"the store {self.root} is not writable ({exc.__class__.__name__}): "
                "set FLOR_STORE to a writable directory or bucket"
            ) from exc

    def _probe(self) -> None:
        probe = self.path("runs", ".probe")  # one PUT: reachable, credentials valid, bucket writable
        try:
            self.fs.pipe_file(probe, b"")
        except FileNotFoundError:  # no such bucket: create it (no region: see notes/storage.md)
            self.fs.mkdir(self.base.split("/", 1)[0])
            self.fs.pipe_file(probe, b"")

    def require_reachable(self) -> None:
        """Raise the one-line FlorError unless the remote store answers (and can be written)."""
        if self.remote:
            try:
                self._probe()
            except Exception as exc:
                if not remote_failure(exc):
                    raise
                raise self.unreachable(exc) from exc

    # writes and reads ---------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes | list, durable: bool = True) -> None:
        """Write a whole object atomically: rename on disk, a single PUT on object stores (a list of
        buffers is written in turn, on local disks only).

        durable=False skips the fsync: the caller makes a batch durable with make_durable() before it
        publishes them (kill -9 cannot lose a renamed file; only an OS crash could, and unpublished is unused).
        """
        if not self.is_local:
            try:
                self.fs.pipe_file(path, data)
                return
            except Exception as exc:
                if not remote_failure(exc):
                    raise
                self.go_offline(exc)
        localfs.write_atomic(self._here(path), data, durable)

    def make_durable(self, paths: list[str]) -> None:
        """fsync files written with durable=False, and their directories (so the renames last too)."""
        if self.is_local or self.offline:  # (a PUT is durable when it returns)
            localfs.fsync_paths([self._here(p) for p in paths])

    def write_json(self, path: str, obj: dict) -> None:
        """Write a JSON document atomically."""
        self.write_bytes(path, json.dumps(obj, indent=1, default=str).encode())

    def read_json(self, path: str) -> dict | None:
        """Read a JSON document, or None when it does not exist."""
        try:
            return json.loads(self.get(self._here(path)))
        except FileNotFoundError:
            return None

    def get(self, path: str) -> bytes:
        """A whole small object in one GET (no HEAD first, no cached listing consulted)."""
        if self.is_local:
            return Path(path).read_bytes()
        return self.fs.cat_file(path, max_concurrency=1)

    def get_many(self, paths: list[str], on_error: str = "raise") -> dict[str, bytes]:
        """Whole small objects, fetched concurrently, one GET each."""
        if self.is_local:
            return self.fs.cat(paths, on_error=on_error)
        return self.fs.cat(paths, on_error=on_error, max_concurrency=1)

    def upload_live(self, stream: Path, data: bytes) -> None:
        """Upload a whole copy of a running record stream to live/ (one PUT), so other hosts see it."""
        if self.remote and not self.offline:
            self.write_bytes(self.path("live", *stream.relative_to(self.spool).parts), data)

    def live_uploader(self):
        """The callback a RecordBuffer uses to upload its stream, or None for a local store."""
        return self.upload_live if self.remote else None

    def fetch_cached(self, path: str, version: str | None = None, start: int | None = None,
                     length: int = 0) -> bytes:
        """An object's bytes, downloaded at most once per host and version (checkpoints for replay/resume).

        version: any string naming the content (e.g. attempt-seq-bytes of a checkpoint entry); without
        it one HEAD request reads the object's ETag. start, length: only that range (a packed checkpoint).
        """
        if start is not None:
            if self.is_local:
                with open(self._here(path), "rb") as f:
                    return os.pread(f.fileno(), length, start)
            target = self.cached_path(f"{path}@{start}", version)
            if target.exists():
                return target.read_bytes()
            data = self.fs.cat_file(path, start=start, end=start + length)
            if len(data) == length:  # an object cut short is not remembered as this version
                self._keep(target, data)
            return data
        if self.is_local:
            return Path(self._here(path)).read_bytes()
        size = None
        if version is None:
            info = self.fs.info(path)
            version, size = self.version(info), info.get("size")
        target = self.cached_path(path, version)
        try:
            return target.read_bytes()
        except FileNotFoundError:  # small: one GET; large or unknown: ranged GETs in parallel
            data = self.get(path) if size is not None and size < 16 << 20 else self.fs.cat_file(path)
            self._keep(target, data)
            return data

    def cached_path(self, path: str, version: str) -> Path:
        """Where the host-local copy of one version of an object lives."""
        rel = Path(self.rel(path))
        tag = hashlib.sha1(str(version).encode()).hexdigest()[:16]
        return self.objects / rel.parent / f"{rel.name}@{tag}"

    def cache_many(self, infos: dict[str, dict]) -> list[Path]:
        """Host-local copies of many objects ({path: listing info}), downloading the missing ones at once."""
        targets = {p: self.cached_path(p, self.version(i)) for p, i in infos.items()}
        missing = [p for p, t in targets.items() if not t.exists()]
        if missing:
            for p, blob in self.get_many(missing).items():
                self._keep(targets[p], blob)
        return [targets[p] for p in infos]

    def _keep(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob(target.name.rsplit("@", 1)[0] + "@*"):
            old.unlink(missing_ok=True)  # older versions of the same object
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def listing(self, *parts: str) -> dict[str, dict]:
        """Every object under a prefix with its info (one LIST request per 1000 objects on S3)."""
        prefix = self.path(*parts)
        if self.is_local:
            return localfs.listing(prefix)
        self.fs.invalidate_cache(prefix)  # the prefix and its parents; cached listings below it too:
        for key in [k for k in getattr(self.fs, "dircache", {}) if k.startswith(prefix + "/")]:
            self.fs.dircache.pop(key, None)
        try:
            if self.is_local:
                found = self.fs.find(prefix, detail=True)
            else:  # as a key prefix: an empty result costs no extra HEAD and LIST
                parent, last = prefix.rsplit("/", 1)
                found = self.fs.find(parent, prefix=last + "/", detail=True)
        except FileNotFoundError:
            return {}
        return {p: i for p, i in found.items() if i.get("type") != "directory"}

    @staticmethod
    def version(info: dict) -> str:
        """A string that changes whenever an object's content does (ETag, else size and mtime)."""
        etag = info.get("ETag") or info.get("etag")
        return str(etag).strip('"') if etag else f"{info.get('size')}-{info.get('mtime') or info.get('LastModified')}"

    # run metadata -------------------------------------------------------------------------------
    def run_meta_path(self, projid: str, runid: str) -> str:
        """Where a run's metadata document lives."""
        return self.path("runs", projid, f"{runid}.json")

    def run_meta(self, projid: str, runid: str) -> dict | None:
        """A run's metadata, or None."""
        return self.read_json(self.run_meta_path(projid, runid))

    def projects(self) -> list[str]:
        """Every project that has run metadata."""
        try:
            self.fs.invalidate_cache(self.path("runs"))
            entries = self.fs.ls(self.path("runs"), detail=True)
        except NotADirectoryError as exc:
            raise FlorError(f"the store {self.root} is not a directory: set FLOR_STORE to one") from exc
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def runs(self, projid: str | None = None) -> list[dict]:
        """Metadata of every run (of one project when projid is given), oldest first."""
        if self.is_local:
            metas = []
            for p in [projid] if projid else self.projects():
                try:
                    files = self.fs.glob(self.path("runs", p, "*.json"))
                except FileNotFoundError:
                    continue
                metas += [m for m in (self.read_json(f) for f in files) if m]
        else:
            try:
                metas = [m for p, files in self._meta_files(projid).items()
                         for m in self._indexed_metas(p, files)[0].values()]
            except Exception as exc:
                if not remote_failure(exc) or isinstance(exc, FileNotFoundError):
                    raise
                raise self.unreachable(exc) from exc
        return sorted(metas, key=lambda m: (m.get("tstamp", ""), m.get("runid", "")))

    def _meta_files(self, projid: str | None) -> dict[str, dict[str, dict]]:
        """projid -> {path: info} of run documents (and the index), from one listing."""
        out: dict[str, dict[str, dict]] = {}
        for path, info in self.listing(*(["runs", projid] if projid else ["runs"])).items():
            parts = self.rel(path).split("/")
            if len(parts) == 3 and (parts[2].endswith(".json") or parts[2] == RUNS_INDEX):
                out.setdefault(parts[1], {})[path] = info
        return out

    def _indexed_metas(self, projid: str, files: dict[str, dict], at_least: int = 0) -> tuple[dict[str, dict], int]:
        """runid -> meta of one project, reading only documents the index lacks (none if fewer than at_least)."""
        index_path = self.path("runs", projid, RUNS_INDEX)
        index: dict = {}
        if index_path in files:  # immutable per version: kept on this host
            index = json.loads(gzip.decompress(self.cache_many({index_path: files[index_path]})[0].read_bytes()))
        metas, stale = {}, []
        for path, info in files.items():
            if path == index_path:
                continue
            runid = path.rsplit("/", 1)[-1][: -len(".json")]
            entry = index.get(runid)
            if entry and entry["version"] == self.version(info):
                metas[runid] = entry["meta"]
            else:
                stale.append(path)
        if stale and len(stale) >= at_least:
            for path, blob in self.get_many(stale, on_error="return").items():
                if isinstance(blob, FileNotFoundError):
                    continue  # deleted since the listing
                if isinstance(blob, BaseException):
                    raise blob
                metas[path.rsplit("/", 1)[-1][: -len(".json")]] = json.loads(blob)
        return metas, len(stale)

    def refresh_runs_index(self, projid: str, at_least: int = 1) -> int:
        """Rewrite a project's runs index once at_least documents are missing from it; return how many were."""
        if self.is_local:
            return 0
        files = self._meta_files(projid).get(projid, {})
        metas, stale = self._indexed_metas(projid, files, at_least=max(at_least, 1))
        if stale < at_least or not stale:
            return 0
        versions = {p.rsplit("/", 1)[-1][: -len(".json")]: self.version(i) for p, i in files.items()}
        index = {r: {"version": versions[r], "meta": m} for r, m in metas.items() if r in versions}
        self.write_bytes(self.path("runs", projid, RUNS_INDEX), gzip.compress(json.dumps(index, default=str).encode()))
        return stale

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
