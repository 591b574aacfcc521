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

Nothing outside the root is read or deleted, links included. On a local disk every file is
opened without following a link (``O_NOFOLLOW``) and then checked to be the very file at its
path under the root (the kernel's name of the open descriptor), so a link anywhere on the way
(a shard folder, an attempt folder, a chunk file) is an :class:`OutsideStoreError` before a
byte is read. Listings for maintenance (:meth:`Backend.entries`, :meth:`Backend.tree`) never
follow a link and say what each entry is; removals take files and empty folders one by one,
never a recursive delete that could follow a link. Object stores have no links.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from l2s_data.errors import OutsideStoreError

__all__ = ["Backend", "LocalBackend", "open_backend", "DIR", "FILE", "LINK", "OTHER"]

#: What :meth:`Backend.entries` says an entry is (a link is never followed to find out).
DIR, FILE, LINK, OTHER = "dir", "file", "link", "other"


def _outside(path: str, why: str) -> OutsideStoreError:
    return OutsideStoreError(
        f"{path} {why}: the store reads and deletes only real files and folders inside its root, "
        f"never through a symbolic link. Move the data back under the store root (or move the "
        f"whole store and open it there) and remove the link; `l2s store gc` reports such "
        f"entries and never touches them."
    )


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

    def open_file(self, rel: str) -> BinaryIO:
        """A binary file object reading ``rel`` (the caller closes it)."""
        return self.fs.open(self.path(rel), "rb")

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

    def listdir_prefix(self, rel: str, prefix: str) -> list[str]:
        """Names inside ``rel`` that start with ``prefix`` (an object store lists only those)."""
        base = self.path(rel).rstrip("/")
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.glob(f"{base}/{prefix}*")]

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def entries(self, rel: str) -> list[tuple[str, str]]:
        """(name, kind) of each entry directly inside ``rel`` (kind: DIR, FILE, LINK, OTHER),
        sorted; [] when absent. OutsideStoreError if ``rel`` itself is or lies under a link."""
        try:
            found = self.fs.ls(self.path(rel), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self.path(rel).rstrip("/")
        out = []
        for e in found:
            name = e["name"].rstrip("/")
            if name == base:
                continue
            kind = {"directory": DIR, "file": FILE}.get(e.get("type"), OTHER)
            out.append((posixpath.basename(name), kind))
        return sorted(out)

    def tree(self, rel: str) -> tuple[list[str], list[str], list[str]]:
        """(files, folders, odd) under ``rel``, paths relative to the root; ``odd``: links and
        anything neither a file nor a folder (never followed). Folders deepest first."""
        files, dirs, odd = [], [], []
        stack = [rel]
        while stack:
            d = stack.pop()
            dirs.append(d)
            for name, kind in self.entries(d):
                p = f"{d}/{name}"
                if kind == DIR:
                    stack.append(p)
                elif kind == FILE:
                    files.append(p)
                else:
                    odd.append(p)
        dirs.sort(key=lambda p: -p.count("/"))
        return files, dirs, odd

    def remove_files(self, rels: list[str]) -> None:
        """Remove these files (gone already is fine). Never a folder, never through a link."""
        if rels:
            try:
                self.fs.rm([self.path(r) for r in rels])
            except FileNotFoundError:
                pass

    def remove_dir(self, rel: str) -> bool:
        """Remove ``rel`` if it is an empty folder; whether it is gone (object stores have no
        empty folders)."""
        try:
            self.fs.rmdir(self.path(rel))
        except (FileNotFoundError, OSError):
            pass
        return not self.entries(rel)

    def du(self, rel: str) -> int:
        """Bytes of the files under ``rel``, links not followed (0 when absent)."""
        files, _, _ = self.tree(rel)
        total = 0
        for f in files:
            try:
                total += self.size(f)
            except FileNotFoundError:
                continue
        return total

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

    def age_s(self, rel: str) -> float | None:
        """Seconds since ``rel`` last changed, where the filesystem says (None elsewhere)."""
        return None

    def remove(self, rel: str) -> None:
        """Remove one file (gone already is fine); see :meth:`remove_files`."""
        self.remove_files([rel])

    def stale_temporaries(self, rel: str, older_than_s: float) -> list[str]:
        """Leftovers of interrupted ``put_if_absent`` calls in ``rel`` (none off the local disk)."""
        return []

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Any:
        """A zarr-python store rooted at ``rel``."""
        from zarr.storage import FsspecStore  # only zarr-python users pay its import (0.4 s)

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

    def open_read(self, rel: str) -> int:
        """A read-only descriptor of the real file ``rel`` inside the root (the caller closes it).

        The last component is opened without following a link (``O_NOFOLLOW``), and the open
        descriptor's own name, as the kernel knows it, must be exactly this path under the root:
        a link at any level on the way is OutsideStoreError before anything is read.
        FileNotFoundError if absent."""
        path = self.path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _outside(path, "is a symbolic link") from None
            raise
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: resolve the name instead (a link swapped in meanwhile is missed)
            real = os.path.realpath(path)
        if real != path:
            os.close(fd)
            if real == f"{path} (deleted)":  # removed between the open and this check
                raise FileNotFoundError(errno.ENOENT, "removed while being opened", path)
            raise _outside(path, f"lies under a symbolic link (it resolves to {real})")
        return fd

    def read_bytes(self, rel: str) -> bytes:
        with self.open_file(rel) as f:
            return f.read()

    def open_file(self, rel: str) -> BinaryIO:
        """The real, regular file ``rel`` opened for reading, links refused (see ``open_read``)."""
        f = os.fdopen(self.open_read(rel), "rb")
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            raise _outside(self.path(rel), "is not a regular file")
        return f

    def entries(self, rel: str) -> list[tuple[str, str]]:
        self._check_real_dir(rel)
        out = []
        try:
            with os.scandir(self.path(rel)) as it:
                for e in it:
                    if e.name.startswith(".") and e.name.endswith(".tmp"):
                        continue  # an in-flight temporary of put_if_absent
                    if e.is_symlink():
                        kind = LINK
                    elif e.is_dir(follow_symlinks=False):
                        kind = DIR
                    elif e.is_file(follow_symlinks=False):
                        kind = FILE
                    else:
                        kind = OTHER
                    out.append((e.name, kind))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(out)

    def _check_real_dir(self, rel: str) -> None:
        """OutsideStoreError if ``rel`` or a folder above it (up to the root) is a link."""
        at = self.root
        for part in [p for p in rel.split("/") if p]:
            at = os.path.join(at, part)
            try:
                if stat.S_ISLNK(os.lstat(at).st_mode):
                    raise _outside(at, "is a symbolic link")
            except FileNotFoundError:
                return

    def remove_files(self, rels: list[str]) -> None:
        for rel in rels:
            path = self.path(rel)
            self._check_real_dir(posixpath.dirname(rel))
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    raise _outside(path, "is a folder, not a file")
                os.unlink(path)  # a link itself would be removed, never what it points to
            except FileNotFoundError:
                pass

    def remove_dir(self, rel: str) -> bool:
        path = self.path(rel)
        self._check_real_dir(rel)
        try:
            os.rmdir(path)  # only ever an empty folder
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def listdir(self, rel: str) -> list[str]:
        try:
            # Dot files are in-flight temporaries of put_if_absent.
            return sorted(n for n in os.listdir(self.path(rel)) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def listdir_prefix(self, rel: str, prefix: str) -> list[str]:
        return [n for n in os.listdir(self.path(rel)) if n.startswith(prefix)] if os.path.isdir(self.path(rel)) else []

    def size(self, rel: str) -> int:
        return os.lstat(self.path(rel)).st_size

    def age_s(self, rel: str) -> float | None:
        try:
            return time.time() - os.lstat(self.path(rel)).st_mtime
        except FileNotFoundError:
            return None

    def stale_temporaries(self, rel: str, older_than_s: float) -> list[str]:
        self._check_real_dir(rel)
        try:
            names = os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        now = time.time()
        out = []
        for n in names:
            if n.startswith(".") and n.endswith(".tmp"):
                try:
                    st = os.lstat(self.path(f"{rel}/{n}"))
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than_s:
                    out.append(f"{rel}/{n}")
        return out

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Any:
        from zarr.storage import LocalStore  # only zarr-python users pay its import (0.4 s)

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
