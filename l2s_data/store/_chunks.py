"""Direct reader of the store's uncompressed Zarr v3 chunks (checked against zarr-python in tests).

Every array the store writes is ``[n, D]``, regular chunks of ``chunk_rows`` full rows, codecs
``bytes`` (little endian) then ``crc32c``. A chunk file is therefore the raw rows followed by a
4-byte crc32c of them, and edge chunks are padded to full size. Reading whole chunk files and
slicing them with numpy skips zarr-python's per-call machinery: whole-chunk reads go at disk /
page-cache speed (DESIGN 4.5), and the crc check finds any flipped byte.

Files are read with plain reads into buffers the caller owns (:class:`ChunkReader`), never
memory-mapped: a mapped file that is truncated underneath kills the reader with SIGBUS, and
one rewritten underneath changes rows already handed out. A read copies the bytes once, and
the crc32c of every chunk is checked on every read, over the bytes that were copied: a file
that is truncated, grown or rewritten raises :class:`CorruptChunkError` naming the chunk.

A chunk's own crc32c only says that its bytes are the ones written with it: bytes replaced
together with a recomputed crc, or two chunk files swapped, pass it. The manifest holds the
crc32c of every row, and CRC-32C composes (the crc of two byte strings joined is a fixed
linear function of the first one's crc, shifted by the second one's length, xor the second
one's crc), so :func:`chunk_crcs` turns a chunk's row checksums into the crc its bytes must
have. Readers given that value (``expect``) compare the crc they already compute with it too:
a row that does not match its manifest checksum is never returned, at no cost per byte.

Local files are opened through ``Backend.open_read``: never through a symbolic link.
"""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from l2s_data.errors import CorruptChunkError, StoreError
from l2s_data.store._backend import Backend
from l2s_data.store.contract import STORED_DTYPE, crc32c

__all__ = ["ArrayInfo", "ChunkCache", "ChunkReader", "load_array_info", "read_chunk", "chunk_key", "chunk_crcs",
           "expected_crcs", "gather"]


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
        """Bytes of a chunk's rows (edge chunks are padded to full size), without the crc."""
        return self.chunk_rows * self.dim * self.stored_dtype.itemsize

    @property
    def file_nbytes(self) -> int:
        """Size of every chunk file: the rows and, when checksummed, 4 bytes of crc32c."""
        return self.chunk_nbytes + (4 if self.checksummed else 0)

    def rows_in_chunk(self, i: int) -> int:
        """Rows of chunk ``i`` that hold data (an edge chunk's padding excluded)."""
        return min(self.chunk_rows, self.rows - i * self.chunk_rows)


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


def read_chunk(backend: Backend, info: ArrayInfo, i: int, expect: int | None = None) -> np.ndarray:
    """Chunk ``i`` as a new stored-dtype array ``[rows_in_chunk, D]`` (edge padding removed).

    Raises CorruptChunkError naming the shard, recipe, array and chunk when the file is missing,
    has the wrong size, fails its crc32c, or (given ``expect``, from :func:`chunk_crcs`) does
    not hold the rows its manifest's checksums describe.
    """
    return ChunkReader(backend).read(info, i, expect)


#: The crc32c used to build the tables below (bound at import: it is set-up, not a chunk check).
_crc_setup = crc32c


@functools.lru_cache(maxsize=64)
def _shift_tables(nbytes: int) -> np.ndarray:
    """``[4, 256]`` uint32: the linear map "crc of A -> its part in the crc of A + nbytes more
    bytes", as a table per byte of the crc (the map of bit j is found with the crc32c library
    itself: continuing a crc over zeros shifts it, plus a constant that cancels)."""
    zeros = bytes(nbytes)
    base = _crc_setup(zeros, 0)
    return np.array([[_crc_setup(zeros, b << (8 * k)) ^ base for b in range(256)] for k in range(4)], np.uint32)


def chunk_crcs(info: ArrayInfo, row_crcs: np.ndarray) -> np.ndarray:
    """The crc32c of each chunk file's data (rows and an edge chunk's zero padding) from the
    crc32c of each of the array's rows (``[info.rows]`` uint32, row order). Vectorised over
    chunks: one table lookup step per row of a chunk."""
    if len(row_crcs) != info.rows:
        raise ValueError(f"{len(row_crcs)} row checksums for {info.rows} rows")
    row_bytes = info.dim * info.stored_dtype.itemsize
    t = _shift_tables(row_bytes)
    grid = np.full(info.n_chunks * info.chunk_rows, _crc_setup(bytes(row_bytes)), np.uint32)  # padding rows
    grid[: info.rows] = row_crcs
    grid = grid.reshape(info.n_chunks, info.chunk_rows)
    acc = grid[:, 0].copy()
    for j in range(1, info.chunk_rows):
        acc = t[0][acc & 0xFF] ^ t[1][(acc >> 8) & 0xFF] ^ t[2][(acc >> 16) & 0xFF] ^ t[3][acc >> 24] ^ grid[:, j]
    return acc


class ChunkReader:
    """Reads chunk files into caller-owned arrays with plain reads, checking each one.

    :meth:`into` is the loader's path: the chunk's rows land in a slice of the caller's buffer
    (one ``preadv`` on a local disk: rows, edge padding, crc and one byte more, to see that the
    file is not longer than it should be). The crc32c is computed over the bytes just read, so
    what was checked is exactly what the caller gets. Not thread-safe: one reader per thread.
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self._local = backend.is_local
        self._pad = np.empty(0, np.uint8)  # an edge chunk's padding rows land here
        self._tail = bytearray(5)  # crc32c + one byte past the expected end of the file
        self._scratch = np.empty(0, np.uint8)

    def into(self, info: ArrayInfo, i: int, out: np.ndarray, expect: int | None = None) -> None:
        """Read chunk ``i``'s rows into ``out`` (C-contiguous ``[rows_in_chunk, D]``, stored dtype),
        checked against the file's crc32c and, given, the crc ``expect`` (:func:`chunk_crcs`)."""
        n = info.rows_in_chunk(i)
        if out.shape != (n, info.dim) or out.dtype != info.stored_dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"{_where(info, i)}: the destination must be a C-contiguous {info.stored_dtype} array of "
                f"shape {(n, info.dim)}, got {out.dtype} {out.shape}."
            )
        if not self._local:
            out[...] = _from_bytes(info, i, self._read_bytes(info, i), expect)
            return
        pad_bytes = info.chunk_nbytes - out.nbytes
        if self._pad.nbytes < pad_bytes:
            self._pad = np.empty(pad_bytes, np.uint8)
        pad = self._pad[:pad_bytes]
        tail = memoryview(self._tail)[: 5 if info.checksummed else 1]
        want = info.file_nbytes
        got = self._preadv(info, i, [out, pad, tail] if pad_bytes else [out, tail], want + 1)
        if got != want:
            raise _wrong_size(info, i, self._size_of(info, i, got), want)
        if info.checksummed:
            crc = crc32c(out)
            if pad_bytes:
                crc = crc32c(pad, crc)
            if crc != int.from_bytes(self._tail[:4], "little"):
                raise _bad_crc(info, i)
            if expect is not None and crc != expect:
                raise _bad_rows(info, i)
        elif expect is not None:
            crc = crc32c(out)
            if pad_bytes:
                crc = crc32c(pad, crc)
            if crc != expect:
                raise _bad_rows(info, i)

    def scratch(self, info: ArrayInfo, i: int, expect: int | None = None) -> np.ndarray:
        """Chunk ``i``'s rows ``[rows_in_chunk, D]`` in a buffer of this reader, valid until its
        next call (for picking some rows out of a chunk)."""
        n = info.rows_in_chunk(i)
        nbytes = n * info.dim * info.stored_dtype.itemsize
        if self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, np.uint8)
        out = self._scratch[:nbytes].view(info.stored_dtype).reshape(n, info.dim)
        self.into(info, i, out, expect)
        return out

    def read(self, info: ArrayInfo, i: int, expect: int | None = None) -> np.ndarray:
        """Chunk ``i``'s rows ``[rows_in_chunk, D]`` in a new array."""
        if not self._local:
            return _from_bytes(info, i, self._read_bytes(info, i), expect)
        out = np.empty((info.rows_in_chunk(i), info.dim), info.stored_dtype)
        self.into(info, i, out, expect)
        return out

    # -- helpers ---------------------------------------------------------------------------
    def _read_bytes(self, info: ArrayInfo, i: int) -> bytes:
        try:
            return self.backend.read_bytes(f"{info.path}/{chunk_key(i)}")
        except FileNotFoundError as exc:
            raise _missing(info, i) from exc

    def _preadv(self, info: ArrayInfo, i: int, buffers: list, limit: int) -> int:
        """Read the file into ``buffers`` from offset 0; the number of bytes read (``limit`` is
        the buffers' total; one less means the file ended where expected). Error messages are
        built only on error: this runs per chunk."""
        try:
            fd = self.backend.open_read(f"{info.path}/{chunk_key(i)}")  # never through a link
        except FileNotFoundError as exc:
            raise _missing(info, i) from exc
        try:
            got = os.preadv(fd, buffers, 0)
            if 0 < got < limit - 1:  # short of the expected size: read on until EOF
                views = [memoryview(b).cast("B") for b in buffers]
                while got < limit:
                    rest, skip = [], got
                    for v in views:
                        if skip >= len(v):
                            skip -= len(v)
                        else:
                            rest.append(v[skip:])
                            skip = 0
                    more = os.preadv(fd, rest, got)
                    if more == 0:
                        break
                    got += more
        finally:
            os.close(fd)
        return got

    def _size_of(self, info: ArrayInfo, i: int, got: int) -> int:
        """The file's size for an error message (``got`` if it can no longer be stat'ed)."""
        try:
            return os.lstat(self.backend.path(f"{info.path}/{chunk_key(i)}")).st_size
        except OSError:
            return got


class ChunkCache:
    """The last few chunks read, so keys stored in another order are not read once per row."""

    def __init__(self, reader: ChunkReader, capacity: int):
        self.reader = reader
        self.capacity = max(1, capacity)
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, info: ArrayInfo, i: int, expect: int | None = None) -> np.ndarray:
        k = (info.path, i)
        hit = self._items.get(k)
        if hit is not None:
            self._items.move_to_end(k)
            return hit
        block = self.reader.read(info, i, expect)
        self._items[k] = block
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return block


def _from_bytes(info: ArrayInfo, i: int, raw: bytes, expect: int | None = None) -> np.ndarray:
    """Check a whole chunk file's bytes; its rows ``[rows_in_chunk, D]`` (read-only view)."""
    want = info.file_nbytes
    if len(raw) != want:
        raise _wrong_size(info, i, len(raw), want)
    view = np.frombuffer(raw, dtype=np.uint8)
    if info.checksummed or expect is not None:
        crc = crc32c(view[: info.chunk_nbytes])
        if info.checksummed and crc != int.from_bytes(raw[-4:], "little"):
            raise _bad_crc(info, i)
        if expect is not None and crc != expect:
            raise _bad_rows(info, i)
    rows = view[: info.chunk_nbytes].view(info.stored_dtype).reshape(info.chunk_rows, info.dim)
    return rows[: info.rows_in_chunk(i)]


def _where(info: ArrayInfo, i: int) -> str:
    return f"chunk {i} of array {info.path} (shard {info.shard}, recipe {info.recipe_id})"


def _missing(info: ArrayInfo, i: int) -> CorruptChunkError:
    return CorruptChunkError(f"{_where(info, i)} is missing; run `l2s store verify` and re-extract the shard.")


def _wrong_size(info: ArrayInfo, i: int, got: int, want: int) -> CorruptChunkError:
    return CorruptChunkError(
        f"{_where(info, i)} has {got} bytes, expected {want}; the file was truncated or replaced. "
        f"Re-extract the shard (delete its manifest, then rerun extraction)."
    )


def _bad_rows(info: ArrayInfo, i: int) -> CorruptChunkError:
    return CorruptChunkError(
        f"{_where(info, i)} does not hold the rows its manifest's checksums describe: the bytes on "
        f"disk were replaced (with a valid crc32c of their own, or by another chunk file). No row of "
        f"it was returned. Run `l2s store verify`, then re-extract the shard (delete its recipe, "
        f"then rerun extraction)."
    )


def _bad_crc(info: ArrayInfo, i: int) -> CorruptChunkError:
    return CorruptChunkError(
        f"{_where(info, i)} failed its crc32c checksum: the bytes on disk were altered. "
        f"Re-extract the shard (delete its manifest, then rerun extraction)."
    )


def expected_crcs(rows: pa.Table, infos: Sequence[ArrayInfo]) -> list[np.ndarray]:
    """Per array of ``infos``, the crc32c each chunk's data must have by the manifest rows
    ``rows`` (columns array, row, checksum; every row of each array must be there: a committed
    attempt's rows are all in its manifest)."""
    paths = pa.array([i.path for i in infos], pa.string())
    which = pc.index_in(rows["array"], value_set=paths).to_numpy(zero_copy_only=False)
    at = rows["row"].to_numpy()
    sums = np.array([int(x, 16) for x in rows["checksum"].to_pylist()], np.uint32)
    out = []
    for a, info in enumerate(infos):
        mask = which == a
        full = np.zeros(info.rows, np.uint32)
        have = np.zeros(info.rows, bool)
        r = at[mask]
        if len(r) and r.min() >= 0 and r.max() < info.rows:
            full[r] = sums[mask]
            have[r] = True
        if not have.all():
            raise StoreError(
                f"array {info.path} (shard {info.shard}, recipe {info.recipe_id}) has {info.rows} rows "
                f"but its manifest describes {int(have.sum())} of them; its rows cannot be checked. "
                f"Run `l2s store verify` and re-extract the shard."
            )
        out.append(chunk_crcs(info, full))
    return out


def gather(cache: ChunkCache, infos: Sequence[ArrayInfo], expect: Sequence[np.ndarray], loc: np.ndarray,
           out: np.ndarray) -> None:
    """``out[i]`` = row ``loc[i, 1]`` of array ``infos[loc[i, 0]]``, stored dtype: each chunk
    holding one of them is read once through ``cache`` and checked against its crc32c and the
    crc its manifest rows give (``expect``, from :func:`expected_crcs`) before a row is copied."""
    if not len(loc):
        return
    chunk_rows = np.array([infos[a].chunk_rows for a in loc[:, 0]], np.int64)
    chunk = loc[:, 1] // chunk_rows
    order = np.lexsort((chunk, loc[:, 0]))
    a_s, c_s = loc[order, 0], chunk[order]
    bounds = np.flatnonzero(np.r_[True, (a_s[1:] != a_s[:-1]) | (c_s[1:] != c_s[:-1]), True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        a, c = int(a_s[lo]), int(c_s[lo])
        info = infos[a]
        block = cache.get(info, c, int(expect[a][c]))
        dst = order[lo:hi]
        out[dst] = block[loc[dst, 1] - c * info.chunk_rows]
