"""Starting and stopping a Ferrum server process for the end-to-end tests.

Everything here is plain Python (no pytest fixtures) so that tests can also
drive servers by hand; conftest.py wraps it in fixtures.

Locations come from the environment, with defaults relative to the repo:

* ``FERRUM_BIN``               server binary   (``<repo>/target/debug/ferrum``)
* ``FERRUM_BACKEND_DIR``       backend dir     (``<repo>/target/debug/backends``)
* ``FERRUM_MODEL_REPOSITORY``  model repository (``<repo>/model_repository``)
* ``FERRUM_READY_TIMEOUT``     seconds to wait for readiness (``60``)
* ``FERRUM_NO_PDEATHSIG``      set to launch without ``setpriv --pdeathsig``
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

# The tests only talk to loopback; keep any configured HTTP proxy out of it
# (urllib, requests and gRPC all honour no_proxy).
_LOOPBACK = "127.0.0.1,localhost,::1"
for _var in ("no_proxy", "NO_PROXY"):
    _current = os.environ.get(_var, "")
    if _LOOPBACK not in _current:
        os.environ[_var] = f"{_current},{_LOOPBACK}" if _current else _LOOPBACK

# How long one readiness probe may take, and the pause between probes.
_PROBE_TIMEOUT_S = 1.0
_PROBE_INTERVAL_S = 0.05
# How many times a start is retried when a picked port was taken meanwhile
# (another xdist worker may grab the same ephemeral port between our probe
# and the server's bind).
_PORT_RETRIES = 3
# Lines of each log shown in a failure message.
_LOG_TAIL_LINES = 200


def _launcher() -> list[str]:
    """Command prefix that ties the server's life to ours, where available.

    ``setpriv --pdeathsig TERM`` (util-linux) makes the kernel send SIGTERM to
    the server when the thread that spawned it dies, so a pytest worker that
    is killed outright (where neither fixture teardown nor atexit runs) does
    not leave servers behind. setpriv execs the server, so the pid and signal
    handling are the server's own. Linux ties this to the spawning *thread*:
    start servers from the main thread (fixtures do).

    (A preexec_fn calling prctl would do the same but forces a real fork of
    a process that has gRPC threads, and gRPC's fork handlers then abort the
    child.)
    """
    if os.environ.get("FERRUM_NO_PDEATHSIG") or sys.platform != "linux":
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def ferrum_bin() -> Path:
    return Path(os.environ.get("FERRUM_BIN", REPO_ROOT / "target" / "debug" / "ferrum"))


def backend_dir() -> Path:
    return Path(
        os.environ.get("FERRUM_BACKEND_DIR", REPO_ROOT / "target" / "debug" / "backends")
    )


def backends_with_testing(folder: Path) -> Path:
    """Fills ``folder`` with the real backends (links) plus the ``testing`` fixture backend
    (tests/fixtures/testing) and returns it, for a server's ``backend_directory``."""
    for entry in backend_dir().iterdir():
        (folder / entry.name).symlink_to(entry.resolve())
    library = REPO_ROOT / "target" / "debug" / "libferrum_testing.so"
    assert library.is_file(), f"{library} is missing: build the workspace first"
    (folder / "testing").mkdir()
    shutil.copy(library, folder / "testing" / "libferrum_testing.so")
    return folder


def default_model_repository() -> Path:
    return Path(
        os.environ.get("FERRUM_MODEL_REPOSITORY", REPO_ROOT / "model_repository")
    )


def ready_timeout() -> float:
    return float(os.environ.get("FERRUM_READY_TIMEOUT", "60"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def copy_model_repository(dest: Path, models: Optional[Iterable[str]] = None) -> Path:
    """Copy the default model repository (or only ``models`` of it) to ``dest``.

    Returns ``dest``. Tests then edit the copy freely and start a server on it.
    """
    src = default_model_repository()
    dest = Path(dest)
    if models is None:
        shutil.copytree(src, dest)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for name in models:
            shutil.copytree(src / name, dest / name)
    return dest


class ServerError(AssertionError):
    """The server did not start, did not get ready, or did not exit cleanly."""


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "<empty>"


# Servers that are still running, stopped at interpreter exit as a last resort
# (e.g. after Ctrl-C skipped fixture teardown).
_LIVE: "set[FerrumServer]" = set()


@atexit.register
def _kill_leftovers() -> None:
    for srv in list(_LIVE):
        try:
            srv.process.kill()
            srv.process.wait(timeout=5)
        except Exception:
            pass
        _LIVE.discard(srv)


class FerrumServer:
    """A running (or exited) server process and where to reach it."""

    def __init__(
        self,
        process: subprocess.Popen,
        args: Sequence[str],
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        stdout_path: Path,
        stderr_path: Path,
        model_repository: Path,
    ) -> None:
        self.process = process
        self.args = list(args)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.model_repository = model_repository

    # Addresses in the form tritonclient wants (no scheme).
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def http_base(self) -> str:
        """``http://127.0.0.1:P`` for raw requests."""
        return f"http://{self.http_url}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def describe(self) -> str:
        """Command line, exit status and log tails, for failure messages."""
        code = self.process.poll()
        state = "running" if code is None else f"exited with code {code}"
        return (
            f"command: {' '.join(self.args)}\n"
            f"state: {state}\n"
            f"--- stderr (last {_LOG_TAIL_LINES} lines, {self.stderr_path}) ---\n"
            f"{_tail(self.stderr_path)}\n"
            f"--- stdout (last {_LOG_TAIL_LINES} lines, {self.stdout_path}) ---\n"
            f"{_tail(self.stdout_path)}"
        )

    # ----------------------------------------------------------------- ready

    def _http_ready(self) -> bool:
        url = f"{self.http_base}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False  # answered, but not ready yet
        except (urllib.error.URLError, OSError):
            return False  # not listening yet

    def _grpc_ready(self) -> bool:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            return client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S)
        except InferenceServerException:
            return False
        finally:
            client.close()

    def wait_ready(self, timeout: Optional[float] = None, via: str = "http") -> None:
        """Poll readiness until it answers yes; raise ServerError otherwise.

        ``via`` is ``"http"`` (``GET /v2/health/ready``) or ``"grpc"``
        (ServerReady RPC), for servers started with HTTP turned off.
        """
        probe = {"http": self._http_ready, "grpc": self._grpc_ready}[via]
        timeout = ready_timeout() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise ServerError(
                    f"ferrum exited before it was ready\n{self.describe()}"
                )
            if probe():
                return
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"ferrum not ready over {via} after {timeout:.0f} s\n{self.describe()}"
                )
            time.sleep(_PROBE_INTERVAL_S)

    # ------------------------------------------------------------------ stop

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(
                f"ferrum did not exit within {timeout:.0f} s\n{self.describe()}"
            ) from None
        _LIVE.discard(self)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and wait (bounded) for the exit; return the exit code.

        Raises ServerError (after SIGKILL) if it does not exit in time.
        """
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def stop_and_check(self, timeout: float = 30.0) -> None:
        """SIGTERM, then require exit code 0."""
        code = self.stop(timeout)
        if code != 0:
            raise ServerError(
                f"ferrum exited with code {code} after SIGTERM, expected 0\n{self.describe()}"
            )

    def kill(self) -> None:
        if self.is_running():
            self.process.kill()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _LIVE.discard(self)


def _looks_like_port_clash(server: FerrumServer) -> bool:
    text = (_tail(server.stderr_path) + _tail(server.stdout_path)).lower()
    return "address already in use" in text or "addrinuse" in text


def start_server(
    model_repository: Optional[Path] = None,
    extra_args: Sequence[str] = (),
    *,
    backend_directory: Optional[Path] = None,
    binary: Optional[Path] = None,
    wait_ready: bool = True,
    ready_via: str = "http",
    timeout: Optional[float] = None,
    log_dir: Optional[Path] = None,
    env: Optional[dict] = None,
) -> FerrumServer:
    """Start ``ferrum`` on fresh loopback ports and (by default) wait until ready.

    ``extra_args`` are appended after the standard arguments, e.g.
    ``["--allow-metrics", "false"]``. With ``wait_ready=False`` the process is
    returned as soon as it is spawned (for tests that expect it to fail).
    ``env`` entries are added to the inherited environment.
    """
    binary = Path(binary) if binary is not None else ferrum_bin()
    if not binary.is_file():
        raise ServerError(
            f"ferrum binary not found at {binary}; build it first (cargo build) "
            "or point FERRUM_BIN at it"
        )
    repo = Path(model_repository) if model_repository is not None else default_model_repository()
    backends = Path(backend_directory) if backend_directory is not None else backend_dir()
    if backend_directory is None and not backends.is_dir():
        raise ServerError(
            f"backend directory {backends} not found; build the backends into it "
            "or point FERRUM_BACKEND_DIR at the folder holding <name>/libferrum_<name>.so"
        )
    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="ferrum-logs-"))
    logs.mkdir(parents=True, exist_ok=True)

    proc_env = os.environ.copy()
    if env:
        proc_env.update(env)

    last_error: Optional[ServerError] = None
    for attempt in range(_PORT_RETRIES):
        http_port, grpc_port, metrics_port = distinct_free_ports(3)
        args = [
            *_launcher(),
            str(binary),
            "--model-repository", str(repo),
            "--backend-directory", str(backends),
            "--http-port", str(http_port),
            "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics_port),
            *[str(a) for a in extra_args],
        ]
        stem = f"ferrum-{http_port}"
        stdout_path = logs / f"{stem}.stdout.log"
        stderr_path = logs / f"{stem}.stderr.log"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=proc_env,
                cwd=str(REPO_ROOT),
            )
        server = FerrumServer(
            process, args, http_port, grpc_port, metrics_port,
            stdout_path, stderr_path, repo,
        )
        _LIVE.add(server)
        if not wait_ready:
            return server
        try:
            server.wait_ready(timeout=timeout, via=ready_via)
            return server
        except ServerError as exc:
            server.kill()
            last_error = exc
            if attempt + 1 < _PORT_RETRIES and _looks_like_port_clash(server):
                continue
            raise
    assert last_error is not None
    raise last_error
