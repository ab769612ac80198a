"""Memory that comes back: loading, using and unloading a model over and over (and swapping
versions while requests run) must not make the server's resident memory grow.

For each backend's example model (onnx_mlp: ONNX Runtime, openvino_mlp: OpenVINO,
pytorch_mlp: libtorch, simple: the pure-Rust add_sub backend) a server in explicit model
control mode runs 100 cycles of load -> inference (outputs checked) -> unload, and its RSS
(VmRSS in /proc/<pid>/status) after cycle 10 and after cycle 100 must differ by less than 5%.
The first cycles are left out on purpose: the first load opens the runtime library, starts
its thread pools and fills caches that stay for the life of the process. Then, for
onnx_mlp and openvino_mlp, 24 version swaps (a new version folder, a load, the old version
drained and unloaded) while a client keeps sending requests: none may fail, and RSS after
swap 4 and after swap 24 must differ by less than 5%.

``.venv/bin/python tests/python/test_memory.py [model ...]`` prints the numbers without
asserting (the cycle count and RSS after cycles 1, 10, 50 and 100).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import tritonclient.http as httpclient

from ferrum_checks import assert_exact
from ferrum_harness import FerrumServer, backend_dir, default_model_repository, start_server

EXPLICIT = ["--model-control-mode", "explicit"]
CYCLES = 100
# RSS is compared between these cycles (after the unload that ends each).
WARM_CYCLE, LAST_CYCLE = 10, CYCLES
# Allowed RSS growth between them, as a fraction of the RSS after the warm cycle.
MAX_GROWTH = 0.05
TIMEOUT = 60
# Floats: at most this far from the reference runtime.
RTOL, ATOL = 1e-4, 1e-5


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def settled_rss_kib(pid: int, timeout: float = 3.0) -> int:
    """RSS once it stops moving: a model's last resources are released on a worker thread
    after the unload call returns, so read until three reads in a row agree (or time out)."""
    deadline = time.monotonic() + timeout
    reads = [rss_kib(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.1)
        reads.append(rss_kib(pid))
        if len(reads) >= 3 and len(set(reads[-3:])) == 1:
            break
    return reads[-1]


def wait_unloaded(client: httpclient.InferenceServerClient, name: str) -> None:
    """Waits until no version of the model is ready or still UNLOADING in the index."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = [r for r in client.get_model_repository_index() if r.get("name") == name]
        busy = [r for r in rows if r.get("state") in ("READY", "UNLOADING", "LOADING")]
        if not busy and not client.is_model_ready(name):
            return
        assert time.monotonic() < deadline, f"{name} still not unloaded: {rows}"
        time.sleep(0.02)


# ------------------------------------------------------------- models and references


def _float_input(batch: int, features: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, features)).astype(np.float32)


def _onnx_reference(path: Path, input_name: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {input_name: x})[0]


def _torch_reference(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x.copy())).numpy().copy()

    return run


class MlpCase:
    """One FP32 MLP model: its tensor names, width and a reference run."""

    def __init__(self, name: str, inp: str, out: str, features: int, reference) -> None:
        self.name, self.inp, self.out, self.features = name, inp, out, features
        self._make_reference = reference
        self._reference: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def prepare(self) -> None:
        """Builds the reference run (imports the reference runtime) before timing starts."""
        if self._reference is None:
            self._reference = self._make_reference()

    def check(self, client: httpclient.InferenceServerClient, seed: int, model: str = "") -> None:
        """One inference (batch of 2) compared with the reference runtime."""
        self.prepare()
        assert self._reference is not None
        x = _float_input(2, self.features, seed)
        inp = httpclient.InferInput(self.inp, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(self.out, binary_data=True)]
        result = client.infer(model or self.name, [inp], outputs=wanted)
        actual = result.as_numpy(self.out)
        expected = self._reference(x)
        assert actual is not None, f"{self.name}: no {self.out}"
        assert actual.shape == expected.shape, f"{self.name}: {actual.shape} != {expected.shape}"
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=self.name)


class SimpleCase:
    """The add_sub example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""

    name = "simple"

    def prepare(self) -> None:
        """Nothing to set up: the reference is NumPy."""

    def check(self, client: httpclient.InferenceServerClient, seed: int, model: str = "") -> None:
        """One inference (batch of 2) checked exactly."""
        rng = np.random.default_rng(seed)
        in0 = rng.integers(-1000, 1000, size=(2, 16), dtype=np.int32)
        in1 = rng.integers(-1000, 1000, size=(2, 16), dtype=np.int32)
        inputs = []
        for name, arr in (("INPUT0", in0), ("INPUT1", in1)):
            inp = httpclient.InferInput(name, list(arr.shape), "INT32")
            inp.set_data_from_numpy(arr, binary_data=True)
            inputs.append(inp)
        result = client.infer(model or self.name, inputs)
        assert_exact(result.as_numpy("OUTPUT0"), in0 + in1, "OUTPUT0")
        assert_exact(result.as_numpy("OUTPUT1"), in0 - in1, "OUTPUT1")


REPO = default_model_repository()
CASES = {
    "onnx_mlp": MlpCase(
        "onnx_mlp", "INPUT0", "OUTPUT0", 16,
        lambda: _onnx_reference(REPO / "onnx_mlp" / "1" / "model.onnx", "INPUT0"),
    ),
    "openvino_mlp": MlpCase(
        # openvino_mlp_onnx is the same network as ONNX (scripts/make-openvino-models.py).
        "openvino_mlp", "INPUT0", "OUTPUT0", 16,
        lambda: _onnx_reference(REPO / "openvino_mlp_onnx" / "1" / "model.onnx", "INPUT0"),
    ),
    "pytorch_mlp": MlpCase(
        "pytorch_mlp", "INPUT__0", "OUTPUT__0", 32,
        lambda: _torch_reference(REPO / "pytorch_mlp" / "1" / "model.pt"),
    ),
    "simple": SimpleCase(),
}


def _require(name: str) -> None:
    """Fails clearly when what `make test-build` makes is missing."""
    backend = {
        "onnx_mlp": "onnxruntime",
        "openvino_mlp": "openvino",
        "pytorch_mlp": "pytorch",
        "simple": "add_sub",
    }[name]
    if not (backend_dir() / backend).is_dir():
        pytest.fail(f"no {backend} backend in {backend_dir()}; run `make test-build`", pytrace=False)
    if name == "pytorch_mlp" and not (REPO / "pytorch_mlp" / "1" / "model.pt").is_file():
        pytest.fail("model_repository/pytorch_mlp/1/model.pt is missing (it is in git)",
                    pytrace=False)


# ------------------------------------------------------------------------ cycles


def run_cycles(server: FerrumServer, name: str, cycles: int = CYCLES,
               marks: tuple[int, ...] = (WARM_CYCLE, LAST_CYCLE)) -> dict[int, int]:
    """Load -> infer (checked) -> unload, `cycles` times; RSS (KiB) after each cycle in `marks`."""
    case = CASES[name]
    case.prepare()
    rss: dict[int, int] = {}
    with httpclient.InferenceServerClient(
        server.http_url, connection_timeout=TIMEOUT, network_timeout=TIMEOUT
    ) as client:
        for cycle in range(1, cycles + 1):
            client.load_model(name)
            assert client.is_model_ready(name), f"{name} not ready after load (cycle {cycle})"
            for i in range(2):
                case.check(client, seed=cycle * 10 + i)
            client.unload_model(name)
            wait_unloaded(client, name)
            if cycle in marks:
                rss[cycle] = settled_rss_kib(server.pid)
    return rss


def growth(rss: dict[int, int], first: int = WARM_CYCLE, last: int = LAST_CYCLE) -> float:
    """Relative RSS change between two marks."""
    return (rss[last] - rss[first]) / rss[first]


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_infer_unload_cycles_keep_rss_flat(server_factory, name):
    _require(name)
    srv = server_factory(None, EXPLICIT)
    rss = run_cycles(srv, name)
    change = growth(rss)
    per_cycle = (rss[LAST_CYCLE] - rss[WARM_CYCLE]) / (LAST_CYCLE - WARM_CYCLE)
    summary = (
        f"{name}: RSS {rss[WARM_CYCLE]} KiB after cycle {WARM_CYCLE}, {rss[LAST_CYCLE]} KiB "
        f"after cycle {LAST_CYCLE} ({change:+.1%}, {per_cycle:+.0f} KiB per cycle)"
    )
    print(summary)
    assert change < MAX_GROWTH, summary


# ------------------------------------------------------------ version swap under load


SWAPS = 24
SWAP_WARM = 4


def _swap_repo(tmp_path: Path, name: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / name, repo / name)
    return repo


@pytest.mark.parametrize("name", ["onnx_mlp", "openvino_mlp"])
def test_version_swaps_under_load_keep_rss_flat(server_factory, tmp_path, name):
    """A new version folder appears and is loaded while a client keeps sending requests:
    every request succeeds (with correct outputs) and RSS stays flat across the swaps."""
    _require(name)
    case = CASES[name]
    case.prepare()
    repo = _swap_repo(tmp_path, name)
    srv = server_factory(repo, EXPLICIT + ["--load-model", name])
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def traffic() -> None:
        with httpclient.InferenceServerClient(
            srv.http_url, connection_timeout=TIMEOUT, network_timeout=TIMEOUT
        ) as client:
            seed = 0
            while not stop.is_set():
                seed += 1
                try:
                    case.check(client, seed=seed)
                    done[0] += 1
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(f"request {seed}: {exc}")
                    return

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    rss: dict[int, int] = {}
    try:
        with httpclient.InferenceServerClient(
            srv.http_url, connection_timeout=TIMEOUT, network_timeout=TIMEOUT
        ) as client:
            for swap in range(1, SWAPS + 1):
                version = swap + 1
                shutil.copytree(repo / name / str(version - 1), repo / name / str(version))
                client.load_model(name)
                ready = client.get_model_repository_index()
                states = {(r.get("name"), r.get("version")): r.get("state") for r in ready}
                assert states.get((name, str(version))) == "READY", states
                # The previous version's folder goes too, as a deployment would remove it.
                shutil.rmtree(repo / name / str(version - 1))
                if swap in (SWAP_WARM, SWAPS):
                    deadline = time.monotonic() + TIMEOUT
                    while any(
                        r.get("name") == name and r.get("state") == "UNLOADING"
                        for r in client.get_model_repository_index()
                    ):
                        assert time.monotonic() < deadline, "old version never unloaded"
                        time.sleep(0.02)
                    rss[swap] = settled_rss_kib(srv.pid)
                assert not failures, failures
    finally:
        stop.set()
        sender.join(timeout=TIMEOUT)
    assert not failures, failures
    assert done[0] > SWAPS, f"only {done[0]} requests ran across {SWAPS} swaps"
    change = growth(rss, SWAP_WARM, SWAPS)
    summary = (
        f"{name}: RSS {rss[SWAP_WARM]} KiB after swap {SWAP_WARM}, {rss[SWAPS]} KiB after swap "
        f"{SWAPS} ({change:+.1%}); {done[0]} requests served during the swaps"
    )
    print(summary)
    assert change < MAX_GROWTH, summary


# ------------------------------------------------------------------ by hand


def main(names: list[str]) -> None:
    """Prints RSS after cycles 1, 10, 50 and 100 for each model (no assertions)."""
    import tempfile

    marks = (1, 10, 50, 100)
    for name in names or sorted(CASES):
        with tempfile.TemporaryDirectory(prefix="ferrum-memory-") as logs:
            srv = start_server(None, EXPLICIT, log_dir=Path(logs))
            try:
                started = time.monotonic()
                rss = run_cycles(srv, name, marks=marks)
                took = time.monotonic() - started
            finally:
                srv.stop()
        row = ", ".join(f"c{c}={rss[c]}" for c in marks)
        print(f"{name:14s} {row} KiB; 10->100 {growth(rss):+.2%}; {took:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
