"""Launch the ``tritonserver`` bundled in the nvidia-pytriton wheel, as a piece of the local stack.

We only borrow the wheel's binaries (server, Python backend, per-Python-version
backend stubs, vendored shared libraries); pytriton's own Python API is not used.

Gotchas this module takes care of:

* The Python backend looks for ``triton_python_backend_stub`` next to
  ``libtriton_python.so``, but the wheel keeps one stub per Python version
  elsewhere; :func:`start_triton` assembles a backend directory under the state
  directory with the stub matching this interpreter.
* The stub links ``libpython3.X.so.1.0`` by soname and finds a system copy first
  (a different build from our interpreter) unless ``LD_LIBRARY_PATH`` starts with
  this interpreter's ``LIBDIR``, then the wheel's ``nvidia_pytriton.libs``.
* The stub's embedded Python takes its environment from the first ``python3`` on
  ``PATH`` and ignores ``PYTHONPATH``; it must see this venv's packages (torch,
  transformers, ``shared``) but numpy<2, because the stub's pybind11 predates numpy 2
  and corrupts every input tensor under numpy 2. :func:`ensure_stub_env` builds a small
  venv-shaped "stub env" (numpy<2 + this venv's site-packages) whose ``bin`` goes first
  on ``PATH``; the rest of tagloop keeps numpy 2.
* Every endpoint (HTTP, gRPC, metrics) binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.devstack.process import ManagedProcess, StackError, free_port

# Log lines of a Triton that lost the race for its port (see start_triton).
_BIND_ERRORS = ("already in use", "failed to start http", "failed to start grpc", "failed to start metrics")


@dataclass(frozen=True)
class TritonEndpoints:
    """Addresses of one running Triton, as ``host:port`` (the form tritonclient takes)."""

    http_url: str
    grpc_url: str
    metrics_url: str


@dataclass(frozen=True)
class TritonDist:
    """Where the pieces of the bundled Triton live inside the installed wheel."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def stub(self, python_version: str) -> Path:
        return self.root / "python_backend_stubs" / python_version / "triton_python_backend_stub"


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_triton_dist() -> TritonDist | None:
    """The bundled Triton of the installed nvidia-pytriton wheel, or None if it is not installed."""
    # find_spec, not import: importing pytriton pulls in its whole client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    libs = package.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():  # editable installs of pytriton keep them here instead
        libs = package / "tritonserver" / "external_libs"
    return TritonDist(root=package / "tritonserver", libs=libs)


def tritonserver_available() -> str | None:
    """Why the bundled tritonserver cannot run here, or None when it can.

    Returns
    -------
    str or None
        A one-line reason (wheel not installed, binary or Python-backend stub
        missing) meant for the user, or None if everything is in place.
    """
    dist = find_triton_dist()
    if dist is None:
        return "nvidia-pytriton (it ships tritonserver) is not installed: pip install nvidia-pytriton"
    if not os.access(dist.binary, os.X_OK):
        return f"tritonserver binary missing or not executable: {dist.binary}"
    if not (dist.python_backend / "libtriton_python.so").is_file():
        return f"Triton Python backend missing: {dist.python_backend / 'libtriton_python.so'}"
    if not dist.stub(_python_version()).is_file():
        return f"no Triton Python-backend stub for Python {_python_version()}: {dist.stub(_python_version())}"
    if not dist.libs.is_dir():
        return f"Triton's shared libraries are missing: {dist.libs}"
    return None


def triton_env(base: Mapping[str, str], dist: TritonDist, stub_env: Path) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs (see the module notes).

    Parameters
    ----------
    base : Mapping[str, str]
        The environment to extend, usually ``os.environ``.
    dist : TritonDist
        The bundled Triton.
    stub_env : Path
        The stub env (:func:`ensure_stub_env`); its ``bin`` goes first on PATH.

    Returns
    -------
    dict[str, str]
        ``base`` with ``LD_LIBRARY_PATH`` and ``PATH`` fixed up.
    """
    env = dict(base)
    lib_dirs = [str(sysconfig.get_config_var("LIBDIR") or ""), str(dist.libs)]
    lib_dirs += [str(d) for d in (dist.root / "lib", dist.root / "external_libs") if d.is_dir()]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
    # The stub's Python is the first python3 on PATH: the stub env, backed by this venv.
    bins = [str(stub_env / "bin"), str(Path(sys.prefix) / "bin")]
    env["PATH"] = os.pathsep.join([*bins, *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
    return env


def triton_argv(
    dist: TritonDist,
    model_repository: Path,
    backend_dir: Path,
    models: Sequence[str],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
) -> list[str]:
    """Command line of a loopback-only tritonserver with explicit model control."""
    argv = [
        str(dist.binary),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_dir}",
        f"--cache-directory={dist.caches}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        # In-flight requests get a few seconds on shutdown; the stack stop must stay quick.
        "--exit-timeout-secs=5",
        "--log-verbose=0",
    ]
    argv += [f"--load-model={model}" for model in models]
    return argv


# The wheel's backend stub embeds a pybind11 (internals v4) that predates numpy 2: it
# reads PyArray_Descr.elsize at its numpy-1 offset, gets 0 under numpy 2, and so copies
# every input tensor Triton hands to a Python model with stride 0 -- each element
# becomes the first byte/value (BYTES inputs fail to parse; FP32 inputs are silently
# wrong). The stub runs Python isolated (PYTHONPATH ignored) and takes its environment
# from the first ``python3`` on PATH (sys.prefix via pyvenv.cfg), so we give it a tiny
# "stub env": a venv-shaped directory whose site-packages holds numpy<2 and a .pth that
# adds this venv's site-packages after it (torch, transformers, tagloop itself).
# torch and transformers run fine on numpy 1.26; the rest of tagloop keeps numpy 2.
STUB_NUMPY_SPEC = "numpy>=1.26,<2"


def stub_env_dir() -> Path:
    """The stub env of this venv (``$TAGLOOP_TRITON_STUB_ENV`` overrides it)."""
    override = os.environ.get("TAGLOOP_TRITON_STUB_ENV")
    if override:
        return Path(override)
    return Path(sys.prefix) / "tagloop-triton-stub-env"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def ensure_stub_env(target: Path | None = None) -> Path:
    """Create (once) the environment the Python-backend stubs run in; return its root.

    The first call installs numpy<2 with pip (from the package index or pip's cache).

    Parameters
    ----------
    target : Path or None
        Where to create it; :func:`stub_env_dir` by default.

    Returns
    -------
    Path
        The stub env root; its ``bin`` must come first on the server's PATH.

    Raises
    ------
    StackError
        If pip cannot install numpy<2 there.
    """
    target = target or stub_env_dir()
    site_packages = target / "lib" / f"python{_python_version()}" / "site-packages"
    if not (site_packages / "numpy" / "__init__.py").is_file():
        staging = target / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging)]
        result = subprocess.run([*cmd, STUB_NUMPY_SPEC], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise StackError(
                f"triton: could not pip install {STUB_NUMPY_SPEC!r} into {site_packages} for the "
                f"Python-backend stub (it does not support numpy 2): {result.stderr.strip()[-500:]}"
            )
        site_packages.parent.mkdir(parents=True, exist_ok=True)
        # Rename into place so a concurrent start never sees a half-installed numpy.
        with contextlib.suppress(OSError):
            staging.rename(site_packages)
        shutil.rmtree(staging, ignore_errors=True)

    bin_dir = target / "bin"
    bin_dir.mkdir(exist_ok=True)
    real_python = Path(sys.executable).resolve()
    for name in ("python", "python3", f"python{_python_version()}"):
        link = bin_dir / name
        if not (link.is_symlink() and link.resolve() == real_python):
            tmp = bin_dir / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(real_python)
            tmp.replace(link)
    version = ".".join(str(v) for v in sys.version_info[:3])
    _write_atomic(
        target / "pyvenv.cfg",
        f"home = {real_python.parent}\ninclude-system-site-packages = false\nversion = {version}\n",
    )
    # addsitedir (not a plain path line) so the venv's own .pth files run too,
    # e.g. the editable-install finder that makes `import shared` work.
    venv_sites = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    lines = [f"import site; site.addsitedir({site_dir!r})" for site_dir in venv_sites]
    _write_atomic(site_packages / "tagloop_venv.pth", "\n".join(lines) + "\n")
    return target


def prepare_backend_dir(dist: TritonDist, dest: Path) -> Path:
    """Build ``dest/python``: the wheel's Python backend plus the stub for this interpreter.

    Parameters
    ----------
    dist : TritonDist
        The bundled Triton.
    dest : Path
        Directory to (re)build; passed to tritonserver as ``--backend-directory``.

    Returns
    -------
    Path
        ``dest``.
    """
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in dist.python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    stub = python_dir / "triton_python_backend_stub"
    shutil.copy2(dist.stub(_python_version()), stub)
    stub.chmod(0o755)
    return dest


def _url(http_url: str, path: str) -> str:
    base = http_url if "://" in http_url else f"http://{http_url}"
    return base.rstrip("/") + path


def _http(method: str, url: str, timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def triton_ready(http_url: str) -> bool:
    """True if the Triton at ``http_url`` (``host:port``) answers ready (all loaded models ready)."""
    try:
        return _http("GET", _url(http_url, "/v2/health/ready"), timeout_s=2.0)[0] == 200
    except OSError:
        return False


def model_ready(http_url: str, name: str) -> bool:
    """True if model ``name`` is loaded and ready on the Triton at ``http_url``."""
    try:
        return _http("GET", _url(http_url, f"/v2/models/{name}/ready"), timeout_s=2.0)[0] == 200
    except OSError:
        return False


def _error_text(body: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("error", body))
    return body


def load_model(http_url: str, name: str, timeout_s: float = 240.0) -> None:
    """Load (or reload, picking up new versions) model ``name``; returns once it is ready.

    Raises
    ------
    StackError
        If Triton refuses or fails to load it; the message carries Triton's reason.
    """
    try:
        status, body = _http("POST", _url(http_url, f"/v2/repository/models/{name}/load"), timeout_s)
    except OSError as exc:
        raise StackError(f"triton at {http_url}: loading model {name!r} failed: {exc}") from exc
    if status != 200:
        raise StackError(f"triton at {http_url}: loading model {name!r} failed: {_error_text(body)}")


def unload_model(http_url: str, name: str, timeout_s: float = 60.0) -> None:
    """Unload model ``name`` (in-flight requests finish first).

    Raises
    ------
    StackError
        If Triton refuses the request.
    """
    try:
        status, body = _http("POST", _url(http_url, f"/v2/repository/models/{name}/unload"), timeout_s)
    except OSError as exc:
        raise StackError(f"triton at {http_url}: unloading model {name!r} failed: {exc}") from exc
    if status != 200:
        raise StackError(f"triton at {http_url}: unloading model {name!r} failed: {_error_text(body)}")


def _last_error_line(log_file: Path) -> str:
    """The last line of the log that looks like an error, to put in the exception message."""
    with contextlib.suppress(OSError):
        lines = log_file.read_text(errors="replace").splitlines()
        for line in reversed(lines[-200:]):
            if line.startswith("E") or "error" in line.lower():
                return line.strip()[:500]
    return ""


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def start_triton(
    state_dir: Path,
    model_repository: Path,
    models: Sequence[str],
    timeout_s: float = 240,
    name: str = "triton",
) -> TritonEndpoints:
    """Start tritonserver on loopback with ``models`` loaded and wait until they are ready.

    Parameters
    ----------
    state_dir : Path
        Where the pid file (``<name>.pid``), log (``logs/<name>.log``) and the assembled
        backend directory (``<name>-backends``) go.
    model_repository : Path
        The Triton model repository (tagloop's ``triton_models/``).
    models : Sequence[str]
        Models to load at start (explicit model control: no others are loaded).
    timeout_s : float
        How long to wait for the server and every model to be ready.
    name : str
        Process name, so that several servers can share one state directory.

    Returns
    -------
    TritonEndpoints
        ``host:port`` addresses of HTTP, gRPC and metrics.

    Raises
    ------
    StackError
        If tritonserver is unavailable, already running under ``name``, exits, or is
        not ready in time; the message names the log file. The process is stopped.
    """
    reason = tritonserver_available()
    dist = find_triton_dist()
    if reason is not None or dist is None:
        raise StackError(f"{name}: {reason}")
    state_dir = Path(state_dir).resolve()
    model_repository = Path(model_repository).resolve()
    if not model_repository.is_dir():
        raise StackError(f"{name}: model repository {model_repository} does not exist")
    for model in models:
        if not (model_repository / model / "config.pbtxt").is_file():
            raise StackError(f"{name}: no model {model!r} in {model_repository}")
    proc = ManagedProcess(name, state_dir)
    if proc.running():
        raise StackError(f"{name} is already running (pid {proc.pid()}); stop it first ({proc.pid_file})")
    backend_dir = prepare_backend_dir(dist, state_dir / f"{name}-backends")
    env = triton_env(os.environ, dist, ensure_stub_env())

    # free_port() cannot reserve a port; if another process grabs one before
    # Triton binds it, Triton exits and we try again with new ports.
    attempts = 3
    for attempt in range(1, attempts + 1):
        ports = (free_port(), free_port(), free_port())
        if len(set(ports)) < 3:
            continue
        endpoints = TritonEndpoints(*(f"127.0.0.1:{port}" for port in ports))
        http_url = endpoints.http_url
        log_start = _log_size(proc.log_file)
        proc.start(triton_argv(dist, model_repository, backend_dir, models, *ports), env=env, cwd=state_dir)
        try:
            # Triton opens its endpoints only after the --load-model models loaded.
            what = f"server ready with {', '.join(models)} loaded" if models else "server ready"
            proc.wait_ready(functools.partial(triton_ready, http_url), timeout_s, what)
            for model in models:
                proc.wait_ready(functools.partial(model_ready, http_url, model), 30, f"model {model} ready")
            return endpoints
        except StackError as exc:
            proc.stop()
            new_log = proc.log_file.read_bytes()[log_start:].decode("utf-8", "replace").lower()
            if attempt < attempts and any(marker in new_log for marker in _BIND_ERRORS):
                time.sleep(0.5)
                continue
            detail = _last_error_line(proc.log_file)
            raise StackError(f"{exc}{': ' + detail if detail else ''}") from exc
        except BaseException:  # e.g. Ctrl-C while waiting: never leave a server behind
            proc.stop()
            raise
    raise StackError(f"{name}: could not find free ports; see {proc.log_file}")


def stop_triton(state_dir: Path, name: str = "triton") -> bool:
    """Stop the Triton started under ``name`` in ``state_dir`` (with its backend stubs).

    Returns
    -------
    bool
        True if a running server was stopped, False if none was running.
    """
    return ManagedProcess(name, Path(state_dir).resolve()).stop(timeout_s=20.0)
