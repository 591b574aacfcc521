"""Chunk files mapped side by side into one reserved address range: a virtual concatenation.

A round of the loader reads a few whole chunk files (one per unit) and hands out batches of
rows drawn at random from all of them. Mapping each file on its own leaves the rows in separate
arrays, so every batch would need one gather per chunk; copying the chunks into one buffer
first costs a pass through main memory. Instead this module reserves an address range once
(``PROT_NONE``, no memory behind it) and maps each chunk file's row bytes with ``MAP_FIXED`` at
consecutive slots, so the round's rows are one strided ``[rows, D]`` array over the page cache.
A batch is then one ``np.take`` from it into a small reused buffer: each byte is read from the
page cache once and written once, like a plain memmap read.

A slot is a whole number of pages *and* of rows, so row ``j`` of slot ``s`` is row
``s * slot_rows + j`` of the array; the tail of a slot past its file's rows stays reserved and
is never indexed. Mapping a new file over a slot replaces the old mapping in one call (no
unmap), so a :class:`Window` is reused round after round. Linux and macOS only (``libc.mmap``
with ``MAP_FIXED``); :func:`available` says whether it works here, and callers fall back to
copying otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import os
import sys

import numpy as np

__all__ = ["Window", "available", "slot_rows"]

_MAP_FIXED = 0x10  # the same value on Linux and macOS
_PROT_NONE = 0
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # prefault: one call instead of a fault per page run
_PAGE = mmap.PAGESIZE
_MAX_SLOT_BYTES = 1 << 30  # beyond this, the alignment padding is not worth the address space

_libc = None
if sys.platform.startswith("linux") or sys.platform == "darwin":
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_long]
        _libc.munmap.restype = ctypes.c_int
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        _libc = None
_MAP_FAILED = ctypes.c_void_p(-1).value


def available() -> bool:
    """Whether chunk files can be mapped into a :class:`Window` on this platform."""
    return _libc is not None


def slot_rows(chunk_rows: int, row_bytes: int) -> int | None:
    """Rows per slot for chunks of ``chunk_rows`` rows of ``row_bytes``: the smallest count
    >= chunk_rows whose bytes are whole pages. None when that padding would be absurd."""
    unit = math.lcm(_PAGE, row_bytes)
    nbytes = -(-chunk_rows * row_bytes // unit) * unit
    return None if nbytes > _MAX_SLOT_BYTES else nbytes // row_bytes


class Window:
    """``slots`` slots of ``slot_rows`` rows of ``dim`` x ``dtype``, each backed by a mapped file.

    ``view()`` is the ``[slots * slot_rows, dim]`` read-only array over it (its base is the
    window, so the range lives while a view does); only rows of mapped files may be read (the
    rest is ``PROT_NONE`` and would fault). ``close()`` unmaps the range at once: no view may be
    used after it, which is why the loader copies rows out and never hands out views of it.
    """

    def __init__(self, slots: int, slot_rows: int, dim: int, dtype: np.dtype):
        if _libc is None:
            raise OSError("mapping files at fixed addresses is not available on this platform")
        self.dtype = np.dtype(dtype)
        self.dim, self.slots, self.slot_rows = dim, slots, slot_rows
        self.row_bytes = dim * self.dtype.itemsize
        self.slot_bytes = slot_rows * self.row_bytes
        self.nbytes = max(slots * self.slot_bytes, _PAGE)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        addr = _libc.mmap(None, self.nbytes, _PROT_NONE, flags, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"reserving {self.nbytes} bytes of address space: {os.strerror(err)}")
        self.addr = addr
        self.__array_interface__ = {
            "shape": (slots * slot_rows, dim), "typestr": self.dtype.str,
            "data": (addr, True), "version": 3,
        }

    def view(self) -> np.ndarray:
        if self.addr is None:
            raise ValueError("the window is closed")
        return np.asarray(self)

    def place(self, slot: int, fd: int, nbytes: int) -> None:
        """Map the first ``nbytes`` of open file ``fd`` (read-only, shared) at slot ``slot``."""
        if not (0 <= slot < self.slots) or nbytes > self.slot_bytes:
            raise ValueError(f"slot {slot} of {self.slots} cannot hold {nbytes} bytes")
        if nbytes == 0:
            return
        at = self.addr + slot * self.slot_bytes
        got = _libc.mmap(at, nbytes, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED | _POPULATE, fd, 0)
        if got != at:
            err = ctypes.get_errno()
            raise OSError(err, f"mapping a chunk file into the loader's window: {os.strerror(err)}")

    def close(self) -> None:
        if self.addr is not None:
            _libc.munmap(self.addr, self.nbytes)
            self.addr = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
