"""Which samples validate: the one hash-share rule that training and evaluation both apply.

A sample validates when a hash of its id falls below the fraction: the same answer on every
machine, whatever the seed, the order or the selection around it. Training and evaluation
salt the hash differently, so the training rows that pick an epoch and the evaluation rows that
pick an alpha are drawn independently (they come from different splits in any case).

    >>> hash_share("s1", 1.0), hash_share("s1", 0.0)
    (True, False)
"""

from __future__ import annotations

import hashlib

__all__ = ["TRAIN_SALT", "EVAL_SALT", "hash_share", "is_validation"]

#: Salt of training's ``val_rule = "hash_share"`` (training rows that pick the epoch).
TRAIN_SALT = "train-validation"
#: Salt of evaluation's validation part (test-split rows that pick alpha).
EVAL_SALT = "validation"


def hash_share(sample_id: str, fraction: float, *, salt: str = TRAIN_SALT) -> bool:
    """Whether ``sample_id`` is in the ``fraction`` share that the salted hash of its id picks."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{sample_id}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def is_validation(sample_id: str, fraction: float) -> bool:
    """Whether an evaluated sample is in the validation part, the part that picks alpha."""
    return hash_share(sample_id, fraction, salt=EVAL_SALT)
