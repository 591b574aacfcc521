"""Prefix-shared contrastive forward (placeholder: runs the reference separate forwards)."""

from __future__ import annotations


def run_prefix_shared(adapter, gather, encs, vision, views, want) -> None:
    b = len(encs[views[0]])
    for v in views:
        rows = [(i, i) for i in range(b)]
        adapter._run_rows(gather, {(v, p): rows for p in want[v][1]}, encs[v], list(range(b)), vision)
