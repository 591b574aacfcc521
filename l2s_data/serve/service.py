"""Start and stop the application on a Ray cluster (what ``l2s serve`` and ``jobs/serve.py`` call).

::

    cfg = load_serve_config("l2s_data/serve/configs/tiny-llava.toml")
    svc = deploy(cfg, port=8000)                  # joins RAY_ADDRESS, else starts a local Ray
    print(svc.url, svc.model_ids)                 # http://127.0.0.1:8000/v1 ...
    wait_for_stop_signal()                        # until Ctrl-C or SIGTERM (l2s_data.serve.stopping)
    svc.stop()                                    # deletes the application (and a local Ray started here)

Ray Serve's proxy listens on ``host:port`` of every node it runs on; the application answers
under ``/v1``. Serve itself is detached: an application outlives the driver that deployed it
(how ``l2s submit serve`` leaves it running on a cluster) until it is deleted.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from l2s_data.errors import ConfigError, L2SError, ServeError
from l2s_data.serve.app import build_app
from l2s_data.serve.config import ServeConfig
from l2s_data.serve.stopping import STOP_TIMEOUT_S

__all__ = ["Service", "deploy"]


@dataclass
class Service:
    """A deployed application: where it answers, its model ids, and how to stop it."""

    name: str
    url: str
    model_ids: tuple[str, ...]
    replicas: int
    #: :func:`deploy` connected this process to Ray (it disconnects on :meth:`stop`) ...
    connected_here: bool
    #: ... and that connection started a local Ray of its own (which stops with it)
    local_ray: bool

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Delete the application. On a cluster joined by :func:`deploy`, Serve and the other
        applications stay; a local Ray that :func:`deploy` started is shut down, Serve with it.

        Returns within ``timeout_s``: True once Serve has confirmed the deletion (and this process
        has left Ray, where :func:`deploy` connected it), False where that did not happen in time
        (the deletion was asked for; Serve goes on with it, and ``serve status`` shows how far it
        got). Serve's own wait asks the controller with no time limit on each call (and gives up
        only after 60 s), so it runs on a thread of its own. Raises :class:`ServeError` where Serve
        refused or failed the deletion.
        """
        if not ray.is_initialized():
            return True
        failed: list[BaseException] = []

        def run() -> None:
            try:
                if self.local_ray:
                    serve.shutdown()
                else:
                    serve.delete(self.name)
            except BaseException as err:  # noqa: BLE001 - handed to the caller below
                failed.append(err)
            finally:
                if self.connected_here:
                    ray.shutdown()

        stopping = threading.Thread(target=run, name=f"stop {self.name}", daemon=True)
        stopping.start()
        stopping.join(timeout_s)
        if stopping.is_alive():
            return False
        if failed:
            err = failed[0]
            raise ServeError(f"application {self.name!r} could not be deleted: {type(err).__name__}: {err}") from err
        return True


def deploy(cfg: ServeConfig, *, address: str | None = None, host: str | None = None, port: int | None = None,
           replicas: int | None = None) -> Service:
    """Deploy ``cfg``'s application and wait until every replica is up (the model loaded)."""
    host = host or cfg.serve.host
    port = cfg.serve.port if port is None else port
    n = replicas or cfg.serve.replicas
    if n < 1:
        raise ConfigError(f"--replicas {n}: expected at least 1")
    app = build_app(cfg, replicas=n)  # paths resolved here, before anything starts
    started = not ray.is_initialized()
    local = started and not (address or os.environ.get("RAY_ADDRESS"))
    if started:
        try:
            ray.init(address=address, logging_level="WARNING")
        except Exception as err:  # noqa: BLE001 - Ray raises bare Exceptions here (a start-up time-out)
            where = f"join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}" if not local else \
                "start a local Ray"
            raise ServeError(f"could not {where}: {err}") from err
    try:
        _check_resources(ray.cluster_resources(), cfg, n)
        serve.start(http_options={"host": host, "port": port})
        # A Serve instance already running on the cluster keeps its own proxy address.
        http = serve.context._get_global_client().http_config  # noqa: SLF001 - the only place Ray keeps it
        host, port = http.host, http.port
        serve.run(app, name=cfg.serve.name, route_prefix=cfg.serve.route_prefix, blocking=False)
    except L2SError:
        if started:
            ray.shutdown()
        raise
    except Exception as err:  # noqa: BLE001 - a replica that failed to start, a port in use: named, not a traceback
        if started:
            ray.shutdown()
        raise ServeError(f"application {cfg.serve.name!r} did not start: {type(err).__name__}: {err}") from err
    except BaseException:
        if started:
            ray.shutdown()
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefix = cfg.serve.route_prefix.rstrip("/")
    return Service(cfg.serve.name, f"http://{shown}:{port}{prefix}/v1", tuple(cfg.model_ids), n, started, local)


def _check_resources(have: Any, cfg: ServeConfig, n: int) -> None:
    """Refuse replicas the cluster cannot place now (they would wait forever)."""
    gpu = cfg.evaluation.model.device.startswith("cuda")
    kind, each = ("GPU", 1) if gpu else ("CPU", cfg.serve.cpus_per_replica)
    total = float(have.get(kind, 0))
    if n * each > total:
        raise ConfigError(f"{n} replica(s) need {n * each} {kind}(s) ({each} each), but the Ray cluster has "
                          f"{total:g}; serve fewer replicas (--replicas), or join a larger cluster (--address).")
