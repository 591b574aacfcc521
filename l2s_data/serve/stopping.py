"""How a service stops: the signal it waits for (Ctrl-C, ``kill PID``) in a process that runs
Ray, and how long :meth:`~l2s_data.serve.service.Service.stop` waits for Ray Serve.

::

    svc = deploy(cfg)
    got = wait_for_stop_signal()   # "SIGINT" or "SIGTERM"
    svc.stop()                     # at most STOP_TIMEOUT_S

Only the standard library: it loads without Ray.
"""

from __future__ import annotations

import signal
import socket

__all__ = ["wait_for_stop_signal", "STOP_TIMEOUT_S"]

#: How long :meth:`Service.stop` waits for Ray Serve to confirm the deletion. Serve gives each
#: replica ``graceful_shutdown_timeout_s`` (20 s by default) to finish its requests, then kills it.
#: (``l2s serve --help`` names this figure; tests/test_help.py checks it.)
STOP_TIMEOUT_S = 45.0


def wait_for_stop_signal() -> str:
    """Block until this process gets SIGINT (Ctrl-C) or SIGTERM; return its name ("SIGINT").

    Call it from the main thread. The kernel hands a signal sent to the process to any of its
    threads that does not block it, and Ray's threads (gRPC, the GCS client) leave both
    unblocked. Python runs its handlers in the main thread only, and only once that thread runs
    again: a main thread asleep on a lock (``threading.Event().wait()``) sleeps on, whichever
    handler is set. Here it sleeps on a socket instead, Python's wakeup fd: the thread that
    caught the signal, whichever it is, writes the signal's number there, and that wakes the
    main thread. The handlers it replaced are put back before it returns.
    """
    wanted = (signal.SIGINT, signal.SIGTERM)
    wake, wakeup = socket.socketpair()
    wakeup.setblocking(False)
    previous_fd = signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
    # A handler of Python's own, so the C handler writes the number (the defaults would raise
    # KeyboardInterrupt on the main thread, or end the process at once).
    previous = {s: signal.signal(s, lambda *_: None) for s in wanted}
    try:
        while True:
            got = [n for n in wake.recv(64) if n in wanted]
            if got:
                return signal.Signals(got[0]).name
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(s, handler)
        wake.close()
        wakeup.close()
