"""Fixtures for the Ferrum end-to-end suite.

* ``server``: one Ferrum process per test session. Under pytest-xdist every
  worker is its own session, so every worker starts (and stops) its own
  server on its own ports.
* ``http_client`` / ``grpc_client``: tritonclient clients bound to ``server``.
* ``server_factory``: starts extra servers (custom repository, extra args);
  each is stopped at the end of the test with SIGTERM and must exit 0.
* ``model_repository_copy``: a private copy of the default model repository
  under ``tmp_path`` for tests that change models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ferrum_harness import (
    FerrumServer,
    ServerError,
    copy_model_repository,
    start_server,
)

# Generous but bounded network timeouts for the clients (seconds).
HTTP_TIMEOUT_S = 60.0


def _fail_on_server_error(action: Callable[[], object]):
    """Run ``action``; turn a ServerError into a plain pytest failure that
    shows the server's command line and logs (no traceback noise)."""
    try:
        return action()
    except ServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerrumServer]:
    """The shared server, started with the default model repository.

    Teardown sends SIGTERM and fails the session unless the exit code is 0.
    """
    logs = tmp_path_factory.mktemp("ferrum-server-logs")
    srv = _fail_on_server_error(lambda: start_server(log_dir=logs))
    yield srv
    _fail_on_server_error(srv.stop_and_check)


@pytest.fixture(scope="session")
def http_client(server: FerrumServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(
        server.http_url,
        connection_timeout=HTTP_TIMEOUT_S,
        network_timeout=HTTP_TIMEOUT_S,
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(server: FerrumServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


class ServerFactory:
    """Callable that starts servers and remembers them for teardown."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.started: list[FerrumServer] = []

    def __call__(
        self,
        model_repository: Optional[Path] = None,
        extra_args: Sequence[str] = (),
        **kwargs,
    ) -> FerrumServer:
        kwargs.setdefault("log_dir", self._log_dir)
        srv = _fail_on_server_error(
            lambda: start_server(model_repository, extra_args, **kwargs)
        )
        self.started.append(srv)
        return srv

    def stop_all(self) -> list[str]:
        """Stop every server still running; return failure descriptions."""
        problems = []
        for srv in self.started:
            if not srv.is_running():
                continue  # the test stopped it itself and checked what it wanted
            try:
                srv.stop_and_check()
            except ServerError as exc:
                problems.append(str(exc))
        return problems


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., FerrumServer]]:
    """Start extra servers: ``server_factory(repo_path, ["--flag", "v"], ...)``.

    Keyword arguments are those of ``ferrum_harness.start_server``
    (``wait_ready``, ``ready_via``, ``timeout``, ``env``, ...). Servers still
    running at the end of the test get SIGTERM and must exit with code 0.
    """
    log_dir = tmp_path / "ferrum-logs"
    log_dir.mkdir()
    factory = ServerFactory(log_dir)
    yield factory
    problems = factory.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def model_repository_copy(tmp_path: Path) -> Path:
    """A copy of the default model repository that the test may modify."""
    return copy_model_repository(tmp_path / "model_repository")
