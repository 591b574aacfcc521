"""How a service stops: the wait for Ctrl-C wakes whichever thread catches the signal, and
:meth:`Service.stop` returns within its time limit while Ray Serve is still deleting."""

from __future__ import annotations

import signal
import threading
import time

import pytest


def test_a_sigint_caught_by_another_thread_ends_the_wait_for_a_stop_signal():
    from l2s_data.serve.stopping import wait_for_stop_signal

    assert threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    sent = threading.Event()

    def catch_it_here() -> None:
        # Once the wait has taken SIGINT over, this thread sends it to itself, so its C handler
        # runs here and the main thread, asleep in the wait, gets no EINTR of its own.
        deadline = time.monotonic() + 60
        while signal.getsignal(signal.SIGINT) is before[0] and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        sent.set()

    threading.Thread(target=catch_it_here, daemon=True).start()
    assert wait_for_stop_signal() == "SIGINT"
    assert sent.is_set()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # put back


@pytest.mark.slow
def test_stop_returns_within_its_limit_while_serve_is_still_deleting_the_application(served, ray_address):
    """A replica whose shutdown waits (here on a gate the test opens) keeps Serve's deletion going;
    Service.stop says False after its limit instead of waiting with it."""
    import ray
    from ray import serve

    from l2s_data.serve.service import Service

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self) -> None:
            self.opened = threading.Event()

        def open(self) -> None:
            self.opened.set()

        def wait(self) -> bool:
            return self.opened.wait(120)

    gate = Gate.options(max_concurrency=2).remote()

    @serve.deployment(name="SlowToStop", ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=120,
                      graceful_shutdown_wait_loop_s=0.1)
    class SlowToStop:
        def __init__(self, gate) -> None:
            self.gate = gate

        def __call__(self) -> str:
            return "up"

        def __del__(self) -> None:
            ray.get(self.gate.wait.remote())

    name = "l2s-slow-stop"
    serve.run(SlowToStop.bind(gate), name=name, route_prefix="/slow-stop")
    try:
        svc = Service(name, "", (), 1, connected_here=False, local_ray=False)
        t0 = time.monotonic()
        assert svc.stop(timeout_s=2.0) is False
        took = time.monotonic() - t0
        assert took < 10, f"stop took {took:.1f} s with a 2 s limit"
        assert serve.status().applications[name].status == "DELETING"
    finally:
        ray.get(gate.open.remote())
        serve.delete(name)  # waits until Serve has finished (the replica's shutdown returns now)
        ray.kill(gate)
    assert name not in serve.status().applications
    # the session's application was left alone
    assert serve.status().applications[served.app_name].status == "RUNNING"
