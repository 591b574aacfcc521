"""Content ids: a sample is named by what the model sees, so identical inputs are computed once.

The framing is part of the on-disk contract (a golden test pins it)::

    sha256( b"l2s.sample.v1\\n"
            + len(image_bytes) as 8-byte big-endian + image_bytes
            + len(query_utf8)  as 8-byte big-endian + query_utf8 )

and the id is the first 32 hex characters of that digest. Length prefixes make the framing
unambiguous: no (image, query) pair can collide with another by moving bytes across the
boundary. The query is hashed exactly as given (no stripping, no normalisation): callers
normalise before they hash, so that the id names the text the model will receive.
"""

from __future__ import annotations

import hashlib

__all__ = ["CONTENT_ID_HEX", "content_id", "sha256_hex"]

#: Hex characters kept from the sha256 digest (128 bits).
CONTENT_ID_HEX = 32

_MAGIC = b"l2s.sample.v1\n"


def content_id(image_bytes: bytes, query: str) -> str:
    """Return the sample id of (image bytes, query): 32 lowercase hex characters."""
    if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"content_id: image_bytes must be bytes, got {type(image_bytes).__name__}")
    if not isinstance(query, str):
        raise TypeError(f"content_id: query must be str, got {type(query).__name__}")
    q = query.encode("utf-8")
    h = hashlib.sha256()
    h.update(_MAGIC)
    h.update(len(image_bytes).to_bytes(8, "big"))
    h.update(image_bytes)
    h.update(len(q).to_bytes(8, "big"))
    h.update(q)
    return h.hexdigest()[:CONTENT_ID_HEX]


def sha256_hex(data: bytes) -> str:
    """Full sha256 hex digest of ``data`` (the ``image_sha256`` column)."""
    return hashlib.sha256(data).hexdigest()
