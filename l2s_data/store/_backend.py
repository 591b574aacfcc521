"""Filesystem access for a store: every byte goes through fsspec, commits are create-if-absent.

A store is a folder at a URL. Two primitives matter for correctness:

* :meth:`Backend.put_if_absent` creates a whole file only if no file of that name exists, and
  says whether this call created it. It is the commit point of shards, recipes and table parts.
  On a local disk it writes a private temporary file and hard-links it into place
  (``os.link`` fails atomically when the name exists, and readers never see a half-written
  file). Elsewhere it asks fsspec for a conditional put (``pipe_file(mode="create")``, which
  s3fs and gcsfs map to ``If-None-Match: *``). A plain rename would not do: it is not atomic
  on s3 or gs, and it silently replaces an existing file.
* Everything else (attempt folders, Zarr chunks) is written by exactly one writer into a
  folder nobody else writes, so plain writes are fine.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["Backend", "LocalBackend", "open_backend"]


class Backend:
    """A store root on an fsspec filesystem. Paths given to methods are relative to the root."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str):
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.url = url

    # -- paths -----------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def url_of(self, rel: str = "") -> str:
        return self.fs.unstrip_protocol(self.path(rel))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    # -- reads -----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the entries directly inside ``rel``; [] when absent."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        except TypeError:  # filesystems without a refresh keyword
            try:
                entries = self.fs.ls(self.path(rel), detail=False)
            except FileNotFoundError:
                return []
        base = self.path(rel).rstrip("/")
        names = []
        for e in entries:
            e = e.rstrip("/")
            if e == base:
                continue
            names.append(posixpath.basename(e))
        return sorted(names)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def du(self, rel: str) -> int:
        try:
            return int(self.fs.du(self.path(rel), total=True))
        except FileNotFoundError:
            return 0

    # -- writes ----------------------------------------------------------------------------
    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Plain write: only for files that a single writer owns (inside its attempt folder)."""
        parent = posixpath.dirname(rel)
        if parent:
            self.makedirs(parent)
        self.fs.pipe_file(self.path(rel), data)

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` holding ``data`` unless it exists. True if this call created it."""
        parent = posixpath.dirname(rel)
        if parent:
            self.makedirs(parent)
        try:
            self.fs.pipe_file(self.path(rel), data, mode="create")
        except FileExistsError:
            return False
        return True

    def remove(self, rel: str, *, recursive: bool = False) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=recursive)
        except FileNotFoundError:
            pass

    def stale_temporaries(self, rel: str, older_than_s: float) -> list[str]:
        """Leftovers of interrupted ``put_if_absent`` calls in ``rel`` (none off the local disk)."""
        return []

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Any:
        """A zarr-python store rooted at ``rel``."""
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url_of(rel), read_only=read_only)


class LocalBackend(Backend):
    """A store on a local (or NFS-mounted) disk: commits by hard link, which is atomic."""

    def put_if_absent(self, rel: str, data: bytes) -> bool:
        final = Path(self.path(rel))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
        # O_EXCL on the temporary name too: it is ours alone, never half-shared.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        p = Path(self.path(rel))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def read_bytes(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def listdir(self, rel: str) -> list[str]:
        try:
            # Dot files are in-flight temporaries of put_if_absent.
            return sorted(n for n in os.listdir(self.path(rel)) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def stale_temporaries(self, rel: str, older_than_s: float) -> list[str]:
        import time

        try:
            names = os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        now = time.time()
        out = []
        for n in names:
            if n.startswith(".") and n.endswith(".tmp"):
                try:
                    if now - os.path.getmtime(self.path(f"{rel}/{n}")) >= older_than_s:
                        out.append(f"{rel}/{n}")
                except FileNotFoundError:
                    continue
        return out

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(self.path(rel), read_only=read_only)


def open_backend(url: str | os.PathLike[str]) -> Backend:
    """The backend for a local path or fsspec URL (``memory://x``, ``s3://bucket/x``, ...)."""
    if isinstance(url, os.PathLike) or "://" not in str(url):
        local = str(Path(url).expanduser().resolve())
        return LocalBackend(LocalFileSystem(), local, local)
    fs, root = fsspec.core.url_to_fs(str(url))
    if isinstance(fs, LocalFileSystem):
        local = str(Path(root).resolve())
        return LocalBackend(fs, local, local)
    return Backend(fs, root, str(url).rstrip("/"))
