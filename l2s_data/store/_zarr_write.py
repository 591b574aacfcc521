"""Direct writer of the store's uncompressed Zarr v3 arrays (byte-identical to zarr-python's).

Every array the store writes is ``[n, D]`` in regular chunks of ``chunk_rows`` full rows, with
the codecs ``bytes`` (little endian) then ``crc32c``, ``fill_value`` 0, every chunk written,
and the ``l2s`` attributes. For that one layout zarr-python produces, under the array folder:

* ``zarr.json``: ``json.dumps(metadata, indent=2, allow_nan=True)`` of the dict built by
  :func:`array_metadata` (same keys, same order);
* ``c/<i>/0`` for chunk ``i``: the chunk's rows as little-endian bytes, the last chunk padded
  with zeros (the fill value) to ``chunk_rows`` rows, followed by the crc32c of those bytes as
  4 little-endian bytes;

and, in the folder holding the arrays, the implicit root group's ``zarr.json``
(:func:`group_metadata`).

Writing these files directly skips zarr-python's per-array machinery (metadata objects, an
event loop round trip per call, a codec pipeline, an atomic temporary file per chunk), which
cost ~8 ms an array whatever its size: about 1 s for a 128-key shard. A test checks that these
files equal zarr-python's byte for byte (``zarr.json`` as parsed JSON and as text), and that
zarr-python reads them back, for float32, float16 and bfloat16 bits, several shapes and
chunk sizes including a partial last chunk. zarr-python's own path stays selectable
(``ShardWriter(..., zarr_writer="zarr-python")`` or ``L2S_ZARR_WRITER=zarr-python``).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from l2s_data.store._backend import Backend
from l2s_data.store.contract import crc32c

__all__ = ["array_metadata", "group_metadata", "chunk_files", "write_group", "write_array"]

ZARR_JSON = "zarr.json"
#: zarr-python's default ``json_indent``; the text of every ``zarr.json`` depends on it.
JSON_INDENT = 2


def _dumps(meta: Mapping[str, Any]) -> bytes:
    # Exactly zarr-python's encoding (ArrayV3Metadata / GroupMetadata.to_buffer_dict).
    return json.dumps(meta, allow_nan=True, indent=JSON_INDENT).encode()


def group_metadata() -> bytes:
    """The ``zarr.json`` of the (implicit, attribute-less) root group that holds the arrays."""
    return _dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"})


def array_metadata(shape: tuple[int, int], chunk_rows: int, dtype: np.dtype,
                   attributes: Mapping[str, Any]) -> bytes:
    """The ``zarr.json`` of an ``[n, D]`` array of ``dtype`` (``<f4``, ``<f2`` or ``<u2``)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        fill: float | int = 0.0
    elif dtype.kind == "u":
        fill = 0
    else:
        raise ValueError(f"direct Zarr writer: unsupported dtype {dtype}; expected float16/32 or uint16.")
    n, dim = (int(s) for s in shape)
    meta = {
        "shape": [n, dim],
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(chunk_rows), dim]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "attributes": dict(attributes),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    return _dumps(meta)


def chunk_files(stored: np.ndarray, chunk_rows: int) -> Iterator[tuple[str, list[Any]]]:
    """Per chunk: its key (``c/<i>/0``) and its bytes as buffers to write in order.

    ``stored`` is a C-contiguous little-endian ``[n, D]`` array. The buffers are the rows (a
    view of ``stored`` for full chunks, no copy), zero padding for a short last chunk, and the
    crc32c trailer.
    """
    if stored.ndim != 2 or not stored.flags.c_contiguous or stored.dtype.byteorder == ">":
        raise ValueError("direct Zarr writer: expected a C-contiguous little-endian [n, D] array.")
    n, dim = stored.shape
    row_bytes = dim * stored.dtype.itemsize
    for i, r0 in enumerate(range(0, n, chunk_rows)):
        rows = stored[r0:r0 + chunk_rows]
        body = rows.reshape(-1).view(np.uint8)
        crc = crc32c(body)
        parts: list[Any] = [body]
        pad = (chunk_rows - rows.shape[0]) * row_bytes
        if pad:
            zeros = bytes(pad)  # the fill value 0 is all-zero bytes in every stored dtype
            crc = crc32c(zeros, crc)
            parts.append(zeros)
        parts.append(crc.to_bytes(4, "little"))  # Zarr's crc32c codec: little-endian trailer
        yield f"c/{i}/0", parts


def write_group(backend: Backend, rel: str) -> int:
    """Write the root group ``zarr.json`` of the folder ``rel`` (the attempt folder); its bytes."""
    meta = group_metadata()
    backend.write_bytes(f"{rel}/{ZARR_JSON}", meta)
    return len(meta)


def write_array(backend: Backend, rel: str, stored: np.ndarray, chunk_rows: int,
                attributes: Mapping[str, Any]) -> int:
    """Write ``stored`` ``[n, D]`` as the Zarr v3 array at ``rel`` (relative to the store root);
    returns the bytes written (chunk files and ``zarr.json``)."""
    meta = array_metadata(stored.shape, chunk_rows, stored.dtype, attributes)
    n, dim = stored.shape
    nbytes = len(meta) + -(-n // chunk_rows) * (chunk_rows * dim * stored.dtype.itemsize + 4)
    if backend.is_local:
        _write_local(backend.path(rel), meta, chunk_files(stored, chunk_rows))
        return nbytes
    # Object stores and other filesystems: one batched put (concurrent where the filesystem is
    # async), after creating the folders for filesystems that need them.
    files = {f"{rel}/{key}": b"".join(parts)
             for key, parts in chunk_files(stored, chunk_rows)}
    files[f"{rel}/{ZARR_JSON}"] = meta
    for d in sorted({posixpath.dirname(k) for k in files}):
        backend.makedirs(d)
    backend.fs.pipe({backend.path(k): v for k, v in files.items()})
    return nbytes


def _write_local(root: str, meta: bytes, chunks: Iterator[tuple[str, list[Any]]]) -> None:
    for key, parts in chunks:
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_file(path, parts)
    _write_file(os.path.join(root, ZARR_JSON), [meta])


def _write_file(path: str, parts: list[Any]) -> None:
    # The attempt folder is private to this writer and nothing is visible before the manifest
    # commits it, so a plain (non-atomic) write is enough. writev: no concatenated copy.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        want = sum(memoryview(p).nbytes for p in parts)
        done = os.writev(fd, parts)
        if done != want:  # a short write (rare: signals, huge buffers): finish it plainly
            rest = b"".join(bytes(p) for p in parts)[done:]
            while rest:
                rest = rest[os.write(fd, rest):]
    finally:
        os.close(fd)
