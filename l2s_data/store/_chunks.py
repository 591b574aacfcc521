"""Direct reader of the store's uncompressed Zarr v3 chunks (checked against zarr-python in tests).

Every array the store writes is ``[n, D]``, regular chunks of ``chunk_rows`` full rows, codecs
``bytes`` (little endian) then ``crc32c``. A chunk file is therefore the raw rows followed by a
4-byte crc32c of them, and edge chunks are padded to full size. Reading whole chunk files and
slicing them with numpy skips zarr-python's per-call machinery: whole-chunk reads go at disk /
page-cache speed (DESIGN 4.5), and the crc check finds any flipped byte.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass

import google_crc32c
import numpy as np

from l2s_data.errors import CorruptChunkError, StoreError
from l2s_data.store._backend import Backend
from l2s_data.store.contract import STORED_DTYPE
from l2s_data.store._vmap import Window

__all__ = ["ArrayInfo", "load_array_info", "read_chunk", "map_chunk", "place_chunk", "chunk_identity", "chunk_key", "VERIFY_MODES"]

#: ``"always"``: check a chunk's crc32c on every read. ``"once"``: once per process for an
#: unchanged file (same device, inode, size, mtime and ctime), then trust it (see :func:`map_chunk`).
VERIFY_MODES = ("always", "once")

# Chunk files whose crc32c this process has checked: (path, device, inode, size, mtime, ctime).
# Bounded: past the cap it is cleared, which only means re-checking.
_VERIFIED: set[tuple[str, int, int, int, int, int]] = set()
_VERIFIED_CAP = 1 << 20


@dataclass(frozen=True)
class ArrayInfo:
    """What the reader needs from a ``zarr.json``. ``path`` is relative to the store root."""

    path: str
    rows: int
    dim: int
    chunk_rows: int
    logical_dtype: str
    stored_dtype: np.dtype
    checksummed: bool
    shard: str
    recipe_id: str

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    @property
    def chunk_nbytes(self) -> int:
        return self.chunk_rows * self.dim * self.stored_dtype.itemsize


def chunk_key(i: int) -> str:
    return f"c/{i}/0"


def load_array_info(backend: Backend, path: str, *, shard: str = "?", recipe_id: str = "?") -> ArrayInfo:
    """Parse ``<path>/zarr.json``; StoreError if it is missing or not a layout this reader knows."""
    where = f"array {path} (shard {shard}, recipe {recipe_id})"
    try:
        meta = json.loads(backend.read_bytes(f"{path}/zarr.json"))
    except FileNotFoundError as exc:
        raise CorruptChunkError(
            f"{where}: zarr.json is missing; the shard attempt is incomplete or was removed. "
            f"Run `l2s store verify` and re-extract the shard."
        ) from exc
    except ValueError as exc:
        raise CorruptChunkError(f"{where}: zarr.json is not valid JSON ({exc}); re-extract the shard.") from exc
    try:
        rows, dim = meta["shape"]
        chunk_rows, chunk_dim = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = [c["name"] for c in meta["codecs"]]
        endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
        attrs = meta.get("attributes", {}).get("l2s", {})
        logical = attrs.get("logical_dtype", meta["data_type"])
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        key_enc = meta["chunk_key_encoding"]["name"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptChunkError(f"{where}: zarr.json lacks a field the store writes ({exc}).") from exc
    if (
        codecs not in (["bytes"], ["bytes", "crc32c"])
        or endian != "little"
        or chunk_dim != dim
        or key_enc != "default"
        or sep != "/"
        or logical not in STORED_DTYPE
        or np.dtype(meta["data_type"]) != STORED_DTYPE[logical]
    ):
        raise StoreError(
            f"{where}: layout not readable by the direct reader (codecs {codecs}, dtype "
            f"{meta['data_type']}, chunks {[chunk_rows, chunk_dim]}); it was not written by this store."
        )
    return ArrayInfo(
        path=path, rows=int(rows), dim=int(dim), chunk_rows=int(chunk_rows),
        logical_dtype=logical, stored_dtype=STORED_DTYPE[logical],
        checksummed=codecs[-1] == "crc32c", shard=shard, recipe_id=recipe_id,
    )


def read_chunk(backend: Backend, info: ArrayInfo, i: int) -> np.ndarray:
    """Chunk ``i`` as a stored-dtype array ``[rows_in_chunk, D]`` (edge padding removed).

    Raises CorruptChunkError naming the shard, recipe, array and chunk when the file is missing,
    has the wrong size, or fails its crc32c.
    """
    try:
        raw = backend.read_bytes(f"{info.path}/{chunk_key(i)}")
    except FileNotFoundError as exc:
        raise _missing(info, i) from exc
    want = info.chunk_nbytes + (4 if info.checksummed else 0)
    if len(raw) != want:
        raise _wrong_size(info, i, len(raw), want)
    view = np.frombuffer(raw, dtype=np.uint8)  # read-only, zero-copy: google_crc32c accepts it
    if info.checksummed:
        _check_crc(info, i, view[:-4], raw[-4:], None, "always")
        view = view[:-4]
    arr = np.frombuffer(view, dtype=info.stored_dtype).reshape(info.chunk_rows, info.dim)
    n = min(info.chunk_rows, info.rows - i * info.chunk_rows)
    return arr[:n]


def _where(info: ArrayInfo, i: int) -> str:
    return f"chunk {i} of array {info.path} (shard {info.shard}, recipe {info.recipe_id})"


def _missing(info: ArrayInfo, i: int) -> CorruptChunkError:
    return CorruptChunkError(f"{_where(info, i)} is missing; run `l2s store verify` and re-extract the shard.")


def _wrong_size(info: ArrayInfo, i: int, got: int, want: int) -> CorruptChunkError:
    return CorruptChunkError(
        f"{_where(info, i)} has {got} bytes, expected {want}; the file was truncated or replaced. "
        f"Re-extract the shard (delete its manifest, then rerun extraction)."
    )


def _open_chunk(backend: Backend, info: ArrayInfo, i: int) -> tuple[int, os.stat_result, str]:
    """Open chunk ``i``'s file on a local disk: (fd, stat, path); its size is checked. The
    caller closes the fd. Error messages are built only on error: this runs per chunk read."""
    path = backend.path(f"{info.path}/c/{i}/0")
    try:
        fd = os.open(path, os.O_RDONLY)  # no Python file object
    except FileNotFoundError as exc:
        raise _missing(info, i) from exc
    try:
        st = os.fstat(fd)
        want = info.chunk_nbytes + (4 if info.checksummed else 0)
        if st.st_size != want:
            raise _wrong_size(info, i, st.st_size, want)
    except BaseException:
        os.close(fd)
        raise
    return fd, st, path


def _ident(path: str, st: os.stat_result) -> tuple:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def chunk_identity(backend: Backend, info: ArrayInfo, i: int) -> tuple:
    """(path, device, inode, size, mtime, ctime) of chunk ``i``'s file on a local disk: what
    :func:`place_chunk` returns, to tell later whether the file changed since."""
    path = backend.path(f"{info.path}/c/{i}/0")
    try:
        return _ident(path, os.stat(path))
    except FileNotFoundError as exc:
        raise _missing(info, i) from exc


def _needs_check(info: ArrayInfo, ident: tuple, verify: str) -> bool:
    """Whether the file's crc32c must be checked now (see :func:`map_chunk`)."""
    return info.checksummed and not (verify == "once" and ident in _VERIFIED)


def _check_crc(info: ArrayInfo, i: int, data, stored: bytes, ident: tuple | None, verify: str) -> None:
    """Check ``data`` (the chunk's row bytes) against its stored crc32c; with ``verify="once"``
    remember that the file ``ident`` passed."""
    if google_crc32c.value(data) != int.from_bytes(stored, "little"):
        raise CorruptChunkError(
            f"{_where(info, i)} failed its crc32c checksum: the bytes on disk were altered. "
            f"Re-extract the shard (delete its manifest, then rerun extraction)."
        )
    if verify == "once" and ident is not None:
        if len(_VERIFIED) >= _VERIFIED_CAP:
            _VERIFIED.clear()
        _VERIFIED.add(ident)


def map_chunk(backend: Backend, info: ArrayInfo, i: int, *, verify: str = "always") -> np.ndarray:
    """Chunk ``i`` as a read-only ``[rows_in_chunk, D]`` view, memory-mapped on a local disk.

    No copy: the crc32c is checked over the mapped page-cache pages, and the caller's gather
    is the only copy. Elsewhere this is :func:`read_chunk` (always checked). Same errors as
    :func:`read_chunk`.

    ``verify="once"`` checks the crc32c the first time this process maps the file, and again
    whenever its (device, inode, size, mtime, ctime) changes: an attempt is immutable, so a file
    that passed once and was not rewritten is not re-hashed every epoch. Any write through the
    filesystem moves the ctime (``touch`` cannot set it back), so an edited or replaced file is
    checked again. The size is checked on every read. What it trades away: bytes that change
    underneath the filesystem (media bit rot) while the process runs are found by the next
    process or by ``l2s store verify``, not mid-run.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}.")
    if not backend.is_local:
        return read_chunk(backend, info, i)
    fd, st, path = _open_chunk(backend, info, i)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)  # the mapping keeps the file's pages
    raw = np.frombuffer(mm, dtype=np.uint8)
    data = raw[: info.chunk_nbytes]
    ident = _ident(path, st)
    if _needs_check(info, ident, verify):
        _check_crc(info, i, data, raw[info.chunk_nbytes :].tobytes(), ident, verify)
    n = min(info.chunk_rows, info.rows - i * info.chunk_rows)
    return data.view(info.stored_dtype).reshape(info.chunk_rows, info.dim)[:n]


def place_chunk(backend: Backend, info: ArrayInfo, i: int, window: Window, slot: int, *,
                verify: str = "always") -> tuple:
    """Map chunk ``i``'s rows into ``slot`` of ``window`` (local disks only), checked like
    :func:`map_chunk`: its rows are then ``window.view()[slot * window.slot_rows:][:n]``.
    Returns the file's identity (see :func:`chunk_identity`)."""
    fd, st, path = _open_chunk(backend, info, i)
    try:
        nbytes = info.chunk_nbytes
        window.place(slot, fd, nbytes)
        ident = _ident(path, st)
        if _needs_check(info, ident, verify):
            at = slot * window.slot_rows
            rows = window.view()[at : at + info.chunk_rows]
            _check_crc(info, i, rows.reshape(-1).view(np.uint8), os.pread(fd, 4, nbytes), ident, verify)
    finally:
        os.close(fd)
    return ident
