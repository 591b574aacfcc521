"""Serving a steered model: the OpenAI chat-completions API on Ray Serve, steering chosen per request.

::

    from l2s_data.serve import deploy, load_serve_config

    svc = deploy(load_serve_config("l2s_data/serve/configs/tiny-llava.toml"))
    # POST {svc.url}/chat/completions  {"model": "tiny-llava:l2s", "messages": [...], "alpha": 2.2}
    svc.stop()

- :mod:`.config`: the serving config (an evaluation config plus ``[serve]``);
- :mod:`.protocol`: the OpenAI wire format, request validation and error bodies;
- :mod:`.engine`: one replica's model, vectors and batched steered generation;
- :mod:`.app`: the Ray Serve deployment (FastAPI ingress, ``@serve.batch``);
- :mod:`.service`: deploy and stop it on a Ray cluster;
- :mod:`.stopping`: the wait for Ctrl-C or SIGTERM in a process that runs Ray, and the stop's time limit.

The Ray Serve modules are imported on first use, so the config and the protocol load without Ray.
"""

from l2s_data.serve.config import ServeConfig, load_serve_config, parse_serve_config

__all__ = ["ServeConfig", "load_serve_config", "parse_serve_config", "deploy", "Service"]


def __getattr__(name: str):
    if name in ("deploy", "Service"):
        from l2s_data.serve import service

        return getattr(service, name)
    raise AttributeError(name)
