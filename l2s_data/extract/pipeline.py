"""A bounded three-stage pipeline: prepare ahead, compute here, write behind.

``run_pipeline(items, prepare, compute, write)`` runs ``prepare`` in one thread ahead of the
caller, ``compute`` in the caller's thread (where the model runs), and ``write`` in one
thread behind it. Each hand-over is a queue of ``depth`` entries, so at most ``depth``
prepared and ``depth`` computed values wait in memory. ``compute`` turns one prepared value
into zero or more values to write (a shard's batches become one shard result).

An exception in any stage stops the others and is re-raised in the caller's thread, after
every value already computed has been written (work done is not thrown away).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["run_pipeline"]

P = TypeVar("P")
C = TypeVar("C")
W = TypeVar("W")
_DONE = object()


class _Failure:
    def __init__(self, err: BaseException):
        self.err = err


class _Stage:
    """A thread feeding a bounded queue; :meth:`stop` makes it end at its next hand-over."""

    def __init__(self, name: str, depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.name = name

    def put(self, value) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self.stopped.set()


def run_pipeline(items: Iterable, prepare: Callable[[object], Iterable[P]], compute: Callable[[P], Iterable[C]],
                 write: Callable[[C], W] | None, *, depth: int = 2, ahead: bool = True) -> Iterator[W | C]:
    """Yield ``write(c)`` (or ``c`` when ``write`` is None) for every computed value, in order.

    ``prepare(item)`` yields prepared values (several per item: batches of a shard);
    ``ahead=False`` prepares in the caller's thread, just before each compute.
    """
    out: queue.Queue = queue.Queue()
    prepared = _Stage("l2s-prepare", depth)

    def produce() -> None:
        try:
            for item in items:
                for p in prepare(item):
                    if not prepared.put(p):
                        return
        except BaseException as err:  # handed to the caller's thread
            prepared.put(_Failure(err))
            return
        prepared.put(_DONE)

    def prepared_values() -> Iterator[P]:
        if not ahead:
            for item in items:
                yield from prepare(item)
            return
        t = threading.Thread(target=produce, name=prepared.name, daemon=True)
        t.start()
        try:
            while (p := prepared.queue.get()) is not _DONE:
                if isinstance(p, _Failure):
                    raise p.err
                yield p
        finally:
            prepared.stop()
            t.join()

    if write is None:
        for p in prepared_values():
            yield from compute(p)
        return

    written = _Stage("l2s-write", depth)
    failed: list[BaseException] = []

    def consume() -> None:
        while (c := written.queue.get()) is not _DONE:
            if failed:
                continue  # drain, so the caller never blocks on a dead writer
            try:
                out.put(write(c))
            except BaseException as err:  # re-raised in the caller's thread
                failed.append(err)

    t = threading.Thread(target=consume, name=written.name, daemon=True)
    t.start()
    try:
        for p in prepared_values():
            for c in compute(p):
                if failed:
                    break
                written.queue.put(c)
                while not out.empty():
                    yield out.get()
            if failed:
                break
    finally:
        written.queue.put(_DONE)
        t.join()
    while not out.empty():
        yield out.get()
    if failed:
        raise failed[0]
