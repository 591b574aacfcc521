"""Session fixtures shared by every test package: tiny real checkpoints, seeded RNGs, the demo.

``tiny_checkpoint(family) -> Path`` builds each family's tiny checkpoint once per session
(default seed and sizes); ``tiny_adapter(family) -> ModelAdapter`` loads it once (float32,
CPU, eager attention). ``demo`` runs `l2s demo` once per session; ``demo_copy`` gives a test
that writes its own copy of it. ``run_submitted`` runs the job that `l2s submit` builds, here;
``config_toml`` writes a config of sections as TOML.
torch runs single-threaded in the test session (see below).

A test that starts a process (Ray, a subprocess, a server) is marked ``@pytest.mark.slow``;
``make test-fast`` runs the others (``-m "not slow"``). A test that asks for a fixture of
:data:`SLOW_FIXTURES` without the mark is refused at collection, naming it.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the test suite may reach a hub
# Tiny models are dominated by per-op overhead: on a busy 2-core machine, torch's second
# thread made a tiny capture ~30x slower (0.5 s against 0.016 s, measured). One thread also
# makes CPU sums reproducible across processes (DESIGN.md 5); subprocesses inherit it.
# Export OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray reads RAY_AUTH_MODE once per process, when it is first imported (setting it afterwards
# changes nothing, measured): a test that imports ray before the session's head starts (the
# cluster tests read ray.autoscaler's schema) would leave every later driver here without token
# auth, refused by the head. So the mode is set before any test runs; ``ray_address`` sets the token.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def _scratch_in_memory(shm: str = "/dev/shm", need: int = 4 << 30) -> None:
    """Keep the suite's scratch (pytest's tmp_path, Ray's session folder, every tempfile) in memory.

    The suite creates and removes tens of thousands of small files (chunks, manifests, catalogs,
    logs). On an ext4 disk the kernel took a fifth of the fast tier's CPU time, its largest part
    in ext4's inode allocation (``find_get_block_common``, ``recently_deleted``, ``find_inode_bit``
    in ``perf``); on a tmpfs the fast tier's system time halved (23-27 s -> 10-12 s). Used only
    when nobody chose a TMPDIR and ``shm`` is a writable folder with ``need`` bytes free (a full
    run's peak use: 34 MiB); pytest-xdist's workers and every process the tests start inherit the
    choice through the environment.
    """
    if "TMPDIR" in os.environ or not os.path.isdir(shm) or os.path.islink(shm) or not os.access(shm, os.W_OK | os.X_OK):
        return
    st = os.statvfs(shm)
    if st.f_bavail * st.f_frsize >= need:
        import tempfile
        os.environ["TMPDIR"] = shm
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


_scratch_in_memory()

import atexit
import contextlib
import gc
import importlib.util
import io
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# A worker that imported torch and transformers spent ~1.3 CPU-seconds after its last atexit
# handler, in the interpreter's final garbage collections over every object those libraries
# made (measured with resource.getrusage; 0.24 s with the objects frozen first), and the run's
# end waits for its workers to exit. Objects are still freed and flushed as modules are torn
# down; only the last cycle collections skip them.
atexit.register(gc.freeze)

# torch is imported by the fixtures that use it, not at the top: pytest-xdist's controller loads
# this file as well, runs no test, and spent ~1.4 of its 2.3 CPU-seconds importing torch (measured).

#: Session fixtures that start processes or run for most of a minute, and the pytest-xdist group
#: of the tests that use them (each group runs on one worker, which builds its fixtures once). A
#: test that uses one (directly or through another fixture) must carry ``@pytest.mark.slow``.
SLOW_FIXTURES = {"ray_address": "processes", "s3_endpoint": "s3", "demo": "demo", "demo_copy": "demo"}
#: A test that uses fixtures of both groups joins the first: the Ray group holds the session's
#: longest chain, so the S3-only tests may run beside it, on a worker with its own S3 server
#: (a second one costs about a second; the Ray head is what must start once).
NESTED_GROUPS = {("processes", "s3"): "processes"}


@pytest.hookimpl(tryfirst=True)  # before xdist's worker hook, which reads xdist_group into node ids
def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if set(getattr(item, "fixturenames", ())) & set(SLOW_FIXTURES) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(
            f"these tests use a slow session fixture ({', '.join(SLOW_FIXTURES)}) but are not marked "
            f"@pytest.mark.slow, so `make test-fast` would run them: " + ", ".join(unmarked))
    # Under pytest-xdist (`make test`: -n 2 --dist loadgroup) the tests of one group run on one
    # worker, so the session's Ray head ("processes") and the demo ("demo") are each built once;
    # the other tests go to whichever worker is free.
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            groups = {SLOW_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in SLOW_FIXTURES}
            if (joined := NESTED_GROUPS.get(tuple(sorted(groups)))) is not None:
                groups = {joined}
            if len(groups) > 1:
                raise pytest.UsageError(f"{item.nodeid} uses session fixtures of two xdist groups {sorted(groups)}: "
                                        f"they are built on different workers")
            if groups:
                item.add_marker(pytest.mark.xdist_group(groups.pop()))
        # The groups go out first (the scheduler orders them by size), then single tests in this
        # order. Modules with a slow test outside the groups (a subprocess, a retraced training)
        # come first, whole, so that the run ends on short tests that even out the two workers,
        # not on a 15 s test started last.
        long = {item.path for item in items
                if item.get_closest_marker("slow") is not None and item.get_closest_marker("xdist_group") is None}
        items.sort(key=lambda item: item.path not in long)


def pytest_collection_finish(session):
    # Collection imported torch, transformers and every test module: millions of objects that live
    # until the end. Each full cycle collection walked them all again; frozen, the collector skips
    # them (a worker's full collections in the fast tier: 2.2-2.8 s before, 1.3-1.9 s after, timed
    # with gc.callbacks).
    gc.freeze()


def pytest_configure(config):
    # pytest 9.2 keeps node ids where pytest-xdist 3.8 cannot tag them with their xdist_group, so
    # `--dist loadgroup` would silently build every session fixture (Ray head, demo) on each worker.
    if getattr(config.option, "dist", "no") == "loadgroup":
        major, minor = (int(x) for x in pytest.__version__.split(".")[:2])
        if (major, minor) >= (9, 2):
            raise pytest.UsageError(
                f"pytest {pytest.__version__} cannot group tests under pytest-xdist's loadgroup (each worker would "
                f"start its own Ray head and demo); pyproject.toml asks for pytest<9.2: run `make venv`.")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from l2s_data.models import make_tiny

    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = make_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_adapter(tiny_checkpoint):
    from l2s_data.models import load_adapter

    loaded: dict[str, object] = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = load_adapter(tiny_checkpoint(family))
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def planted_mod():
    """tests/steer/planted.py as a module (test folders are not packages here)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "l2s_tests_planted"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "steer" / "planted.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def planted(tmp_path_factory, planted_mod):
    """A store with a planted map from x to y, built once for the steering and training tests."""
    return planted_mod.build(tmp_path_factory.mktemp("planted") / "store")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed_everything(_torch_threads):
    import torch

    random.seed(0)
    np.random.seed(0)
    if torch.cuda.is_available():
        torch.manual_seed(0)
    else:  # the same CPU generator, without queueing seeds (and their stack traces) for devices never started
        torch.random.default_generator.manual_seed(0)
    yield


# --- services started once per session: a Ray head and an S3-protocol server ----------------
# Both run on loopback with fresh temporary folders, and are stopped by the PIDs this session
# started (never by name: other Ray or moto processes on the machine are left alone).


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open until every one is chosen: one at a
    time, the system can hand out the same port twice, and Ray refuses to start)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop_processes(pids: list[int], timeout: float = 30.0, *, grace: bool = True) -> None:
    """SIGTERM then SIGKILL exactly ``pids`` (and their descendants, found before stopping);
    ``grace=False`` sends SIGKILL at once."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        procs[pid] = p
        try:
            for c in p.children(recursive=True):
                procs[c.pid] = c
        except psutil.NoSuchProcess:
            pass
    alive = list(procs.values())
    if grace:
        for p in alive:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def _processes_under(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (this session's unique Ray temp folder)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in a for a in (p.info["cmdline"] or [])):
                out.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _refresh_ray_auth() -> None:
    """Make this process see the RAY_AUTH_* variables just set, even if an earlier test imported
    ray (its C++ config and token loader cache what they read first), as Ray itself does when
    it turns token auth on for a new local cluster."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="session")
def ray_address():
    """``ray start --head`` on loopback, once per session, with token authentication on.

    Yields the GCS address (``127.0.0.1:PORT``); the dashboard (Jobs API) address is in
    ``os.environ["L2S_TEST_RAY_DASHBOARD"]``. The token is in ``RAY_AUTH_TOKEN`` (with
    ``RAY_AUTH_MODE=token``) for this process and the drivers it starts. Stopped at the end by
    the PIDs of the processes it started.
    """
    import secrets
    import shutil
    import subprocess
    import sys
    import tempfile
    import threading
    from pathlib import Path

    temp = tempfile.mkdtemp(prefix="l2s-ray-")  # short: Ray's unix sockets live under it
    port, dash, client, agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = _free_ports(9)
    token = secrets.token_hex(32)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS",
                                            "RAY_USAGE_STATS_ENABLED", "L2S_TEST_RAY_DASHBOARD")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    _refresh_ray_auth()
    # This interpreter (not the `ray` script, whose shebang may name another environment), and
    # its bin folder first on PATH: a submitted job's `python` is the cluster's, i.e. this one.
    # TMPDIR: what the head's processes leave in a temporary folder when killed (multiprocessing's
    # pymp-* folders) goes with the head's folder. No workers started ahead of the first driver's
    # tasks: the tests run actors with their own environment, which cannot use them, and the two
    # it started stayed idle through a whole run (~1 CPU-s each to start, then polling).
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", TMPDIR=temp,
               RAY_prestart_worker_first_driver="0")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--temp-dir={temp}", "--num-cpus=4", "--num-gpus=0", "--object-store-memory=100000000",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
           f"--object-manager-port={object_manager}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    ready, lines = threading.Event(), []

    def watch() -> None:
        for line in head.stdout:
            lines.append(line)
            if "block forever" in line:
                ready.set()
        ready.set()  # the command ended: not ready, but stop waiting

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(300) or head.poll() is not None:
            raise RuntimeError("ray start --head did not come up:\n" + "".join(lines[-40:]))
        address = f"127.0.0.1:{port}"
        os.environ["RAY_ADDRESS"] = address
        os.environ["L2S_TEST_RAY_DASHBOARD"] = f"http://127.0.0.1:{dash}"
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        # A Jobs API submission can leave Ray's module-level GCS client set in this process after
        # ray.shutdown(); Tune's exit hook then calls the stopped head through it and the
        # interpreter dies at exit (a 60 s reconnect, then exit 1, after every test passed).
        from ray.experimental import internal_kv

        internal_kv._internal_kv_reset()  # noqa: SLF001 - the only handle Ray gives on that client
        # The head's core processes (`ray start --block`, GCS, raylet, dashboard, monitors) outlive
        # a SIGTERM for good (measured: still there 12 s later, where the rest had gone in 2 s),
        # and nothing of the head is kept (its folder goes next): killed at once.
        _stop_processes([head.pid] + _processes_under(temp), grace=False)
        _stop_processes(_processes_under(temp), grace=False)  # workers whose parent had already exited
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback; AWS_* variables point every S3 client at it.

    Yields the endpoint URL. The bucket ``l2s-test`` exists. Stopped by PID at the end.
    """
    import subprocess
    import sys
    import urllib.request

    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                            "AWS_DEFAULT_REGION")}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # until it answers (at most ~60 s on a loaded machine)
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("the moto server exited at start") from None
                import time

                time.sleep(0.1)
        else:
            raise RuntimeError(f"the moto server at {url} did not answer")
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=url,
                          AWS_DEFAULT_REGION="us-east-1")
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("l2s-test")
        yield url
    finally:
        _stop_processes([server.pid])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def config_toml():
    """``config_toml(sections) -> str``: a config of ``{section: {key: value}}`` as TOML, for the
    tests that hand a stage a config file (JSON scalars and lists are TOML)."""

    def write(sections: dict[str, dict[str, Any]]) -> str:
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    return write


# --- a job as `l2s submit` builds it, run here -------------------------------------------------

@dataclass
class SubmittedJob:
    argv: list[str]            # the entrypoint that `l2s submit KIND ... --dry-run` printed
    runtime_env: dict[str, Any]
    code: int                  # the job's exit code, run here
    output: str                # what it printed


@pytest.fixture(scope="session")
def run_submitted():
    """``run_submitted(kind, *args) -> SubmittedJob``: the job that `l2s submit KIND ARGS --dry-run`
    builds, run in this process as a cluster runs it (its script's ``main`` on the entrypoint's
    arguments, on the cluster RAY_ADDRESS names). The Jobs API itself is tested end to end once,
    in tests/extract/test_ray_submit.py."""
    from typer.testing import CliRunner

    from l2s_data.cli import app

    root = Path(__file__).resolve().parents[1]

    def run(kind: str, *args: object) -> SubmittedJob:
        built = CliRunner().invoke(app, ["submit", kind, *map(str, args), "--dry-run"])
        assert built.exit_code == 0, built.output
        argv = shlex.split(built.output.split("entrypoint: ")[1].splitlines()[0])
        env = json.loads(built.output.split("runtime_env: ")[1].splitlines()[0])
        spec = importlib.util.spec_from_file_location(f"{kind}_job", root / argv[1])
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = job.main(argv[2:])
        return SubmittedJob(argv, env, code, out.getvalue())

    return run


# --- the demo, run once per session -----------------------------------------------------------

#: Samples of the session's demo: what `l2s demo` builds by default, enough held-out rows for the
#: trained checkpoint's acceptance tests (tests/trained_tiny) to separate the methods.
DEMO_N = 260


@dataclass(frozen=True)
class DemoRun:
    """`l2s demo` run once: its folder (named ``demo-out``, as the guides expect), what
    ``run_demo`` returned, and everything it printed (a 120-column console)."""

    out: Path
    result: object  # l2s_data.demo.DemoResult
    printed: str
    n: int          # synthetic-safety samples it was built with


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoRun:
    """``run_demo(out_dir, workers=0, guard=False)`` once per session, in this process, for the
    demo, README, report and acceptance tests. Tests read it; one that writes takes
    ``demo_copy``. (The demo test runs the demo again in it: a rerun computes nothing and adds one
    ``extractions`` row, after that test has read the first.) Without the tiny random guard
    (``l2s demo --no-guard``): its scores are noise that no test reads, and it was most of the
    evaluation's time; tests/evaluate scores with it. In this process rather than on the Ray head,
    so that it builds on the other pytest worker while the Ray tests run; the demo's extraction on
    Ray (what `make demo` does) is tested on the session's head by tests/test_demo.py."""
    from rich.console import Console

    from l2s_data.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo-out"
    buf = io.StringIO()
    result = run_demo(out, n=DEMO_N, console=Console(file=buf, width=120), workers=0, guard=False)
    return DemoRun(out, result, buf.getvalue(), DEMO_N)


@pytest.fixture
def demo_copy(demo, tmp_path) -> Path:
    """A private copy of the session's demo folder, ``tmp_path/demo-out``, for a test that writes
    to it (a training from its store). Links are copied as links, never followed. The copy's
    stored configs still name the session's folder (absolute paths), so a rerun of the demo
    belongs in ``demo.out`` itself."""
    dst = tmp_path / "demo-out"
    shutil.copytree(demo.out, dst, symlinks=True)
    return dst
