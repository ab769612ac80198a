"""The pytorch backend (TorchScript through libtorch) over HTTP and gRPC.

The models are made with Python torch by ``scripts/make-torch-models.py`` (``make test-build``
runs it): the test models in ``tests/models/pytorch``, and a fresh ``pytorch_mlp`` under
``target/torch-models`` that must compute what the copy in git (``model_repository/pytorch_mlp``,
served by ``make run`` without Python torch) computes.
Every output the server returns is compared with the same model file run by Python torch
(``torch.jit.load(path)(*inputs)``, the same torch version as the plugin's libtorch) on the
same inputs: exact for integers and booleans, and for float inputs chosen so that the
arithmetic is exact whatever the summation order; within 1e-5 relative otherwise.

Run as a script (``.venv/bin/python tests/python/test_pytorch.py``) to print the startup time
and memory of a server with and without the pytorch plugin in its backend directory.
"""

from __future__ import annotations

import functools
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ferrum_checks import assert_still_serving, expect_grpc_error, expect_http_error
from ferrum_harness import REPO_ROOT, FerrumServer, backend_dir, start_server

# torch 2.13 marks the TorchScript API deprecated (for torch.export); TorchScript is still
# what Triton's PyTorch backend, and this one, serve.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.load` is deprecated:DeprecationWarning"
)

TEST_MODELS = REPO_ROOT / "tests" / "models" / "pytorch"
MLP_DIR = REPO_ROOT / "model_repository" / "pytorch_mlp"
PROTOCOLS = ["http", "grpc"]
TIMEOUT = 60

BF16 = ml_dtypes.bfloat16
# KServe datatype of each NumPy dtype the tests send.
DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(BF16): "BF16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


# Each model's file, the inputs in the order of forward()'s arguments and the outputs in the
# order forward() returns them: how the backend places them (`<name>__<index>`, else config
# order), written out so that the reference does not rely on the backend's own mapping.
MODELS = {
    "pytorch_mlp": (MLP_DIR / "1" / "model.pt", ["INPUT__0"], ["OUTPUT__0"]),
    "torch_int_ops": (
        TEST_MODELS / "torch_int_ops" / "1" / "model.pt",
        [f"INPUT__{i}" for i in range(5)],
        [f"OUTPUT__{i}" for i in range(5)],
    ),
    "torch_float_ops": (
        TEST_MODELS / "torch_float_ops" / "1" / "model.pt",
        ["HALF__0", "BRAIN__1", "DOUBLE__2"],
        ["HALF_OUT__0", "BRAIN_OUT__1", "DOUBLE_OUT__2", "PRODUCT__3"],
    ),
    "torch_bool_ops": (
        TEST_MODELS / "torch_bool_ops" / "1" / "model.pt",
        ["a", "b", "x"],
        ["both", "a_or_positive", "x_where_a"],
    ),
    "torch_single": (TEST_MODELS / "torch_single" / "1" / "net.pt", ["INPUT__0"], ["OUTPUT__0"]),
    "torch_optional": (
        TEST_MODELS / "torch_optional" / "1" / "model.pt",
        ["INPUT__0", "INPUT__1"],
        ["OUTPUT__0", "OUTPUT__1"],
    ),
}


def _require_generated() -> None:
    missing = [
        p for p in (TEST_MODELS / ".generated", MLP_DIR / "1" / "model.pt") if not p.exists()
    ]
    if missing:
        pytest.fail(
            f"generated TorchScript models missing ({', '.join(map(str, missing))}); "
            "run `make test-build`",
            pytrace=False,
        )
    if not (backend_dir() / "pytorch" / "libferrum_pytorch.so").is_file():
        pytest.fail(
            f"no pytorch plugin in {backend_dir()}; run `make test-build`", pytrace=False
        )


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory) -> FerrumServer:
    """A server over the test models and the default repository (pytorch_mlp, simple, ...)."""
    _require_generated()
    logs = tmp_path_factory.mktemp("ferrum-pytorch-logs")
    srv = start_server(
        TEST_MODELS,
        ["--model-repository", str(REPO_ROOT / "model_repository")],
        log_dir=logs,
    )
    yield srv
    srv.stop_and_check()


# ------------------------------------------------------------------ inference helpers


def infer(
    server: FerrumServer,
    protocol: str,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: Optional[list[str]] = None,
    binary: bool = True,
):
    """Runs one inference; returns {output name: array} for the outputs asked for (or all)."""
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    wire = []
    for name, array in inputs.items():
        inp = module.InferInput(name, list(array.shape), DATATYPE[array.dtype])
        if protocol == "http":
            inp.set_data_from_numpy(array, binary_data=binary)
        else:
            inp.set_data_from_numpy(array)
        wire.append(inp)
    requested = None
    if outputs is not None:
        if protocol == "http":
            requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        else:
            requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
    if protocol == "http":
        with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as client:
            result = client.infer(model, wire, outputs=requested)
            names = [o["name"] for o in result.get_response()["outputs"]]
    else:
        with grpcclient.InferenceServerClient(url) as client:
            result = client.infer(model, wire, outputs=requested, client_timeout=TIMEOUT)
            names = [o.name for o in result.get_response().outputs]
    return {name: result.as_numpy(name) for name in names}


def assert_matches(out: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                   exact_floats: bool = False) -> None:
    """Every output in `out` against the reference: integers and booleans exactly, floats
    within 1e-5 relative (exactly with `exact_floats`)."""
    for name, actual in out.items():
        assert name in expected, f"{name}: not an output of the model"
        dtype = expected[name].dtype
        # (ml_dtypes' bfloat16 is no NumPy floating type.)
        is_float = dtype == BF16 or np.issubdtype(dtype, np.floating)
        if is_float and not exact_floats:
            assert_close(actual, expected[name], name)
        else:
            assert_same(actual, expected[name], name)


def assert_same(actual: Optional[np.ndarray], expected: np.ndarray, what: str) -> None:
    """Same dtype and shape, and the same values (NaN-free inputs; -0.0 equals 0.0)."""
    assert actual is not None, f"{what}: missing from the response"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def assert_close(actual: Optional[np.ndarray], expected: np.ndarray, what: str) -> None:
    """Same dtype and shape, values within 1e-5 relative (1e-6 absolute next to zero)."""
    assert actual is not None, f"{what}: missing from the response"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=1e-5, atol=1e-6,
        err_msg=what,
    )


# ------------------------------------------------------- references from Python torch


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype == BF16:  # NumPy has no bfloat16: move the bits
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BF16).copy()
    return tensor.numpy().copy()


@functools.cache
def _torch_module(model: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(MODELS[model][0]))


def reference(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of `model` (its generated file, run by Python torch) on `inputs`; an input
    left out is passed as None. Runs in inference mode, as the backend does by default."""
    _, arguments, outputs = MODELS[model]
    args = [_to_torch(inputs[n]) if n in inputs else None for n in arguments]
    with torch.inference_mode():
        result = _torch_module(model)(*args)
    tensors = [result] if isinstance(result, torch.Tensor) else list(result)
    assert len(tensors) == len(outputs), f"{model} returned {len(tensors)} tensors"
    return {name: _to_numpy(t) for name, t in zip(outputs, tensors)}


def test_reference_torch_is_the_plugins_libtorch():
    """The reference runs the libtorch that the plugin links: same release, same commit."""
    fetch = (REPO_ROOT / "scripts" / "fetch-libtorch.sh").read_text()
    pinned = re.search(r"^TORCH_VERSION=(\S+)$", fetch, re.MULTILINE).group(1)
    assert torch.__version__.split("+")[0] == pinned
    # .deps/libtorch/include links to the fetched wheel's torch/include; its version.py is
    # beside it.
    include = REPO_ROOT / ".deps" / "libtorch" / "include"
    if not include.exists():
        pytest.skip("no .deps/libtorch (scripts/fetch-libtorch.sh has not run in this clone)")
    version_py = (include.resolve().parent / "version.py").read_text()
    plugin = dict(re.findall(r"^(__version__|git_version) = '(.*)'$", version_py, re.MULTILINE))
    assert plugin["__version__"] == torch.__version__
    assert plugin["git_version"] == torch.version.git_version


# -------------------------------------------------------------------------- the MLP


def test_the_mlp_in_git_is_what_the_generator_makes():
    """model_repository/pytorch_mlp/1/model.pt is kept in git so that `make run` needs no
    Python torch; a fresh trace by scripts/make-torch-models.py must compute the same."""
    fresh = REPO_ROOT / "target" / "torch-models" / "pytorch_mlp" / "1" / "model.pt"
    assert fresh.is_file(), f"{fresh} is missing: run `make test-build`"
    shipped = torch.jit.load(str(MLP_DIR / "1" / "model.pt"))
    made = torch.jit.load(str(fresh))
    x = torch.linspace(-3.0, 3.0, 7 * 32).reshape(7, 32)
    assert torch.equal(shipped(x), made(x))
    names = lambda m: sorted(n for n, _ in m.named_parameters())  # noqa: E731
    assert names(shipped) == names(made)
    for (_, a), (_, b) in zip(sorted(shipped.named_parameters()), sorted(made.named_parameters())):
        assert torch.equal(a, b)



@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_mlp_exact_on_grid_inputs(torch_server, protocol, batch):
    # Inputs on a 1/16 grid: every partial sum is exact in FP32, whatever the order.
    rng = np.random.default_rng(batch)
    x = (rng.integers(-32, 33, size=(batch, 32)) / 16).astype(np.float32)
    out = infer(torch_server, protocol, "pytorch_mlp", {"INPUT__0": x})
    assert sorted(out) == ["OUTPUT__0"]
    assert_matches(out, reference("pytorch_mlp", {"INPUT__0": x}), exact_floats=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [2, 17])
def test_mlp_close_on_random_inputs(torch_server, protocol, batch):
    x = np.random.default_rng(100 + batch).standard_normal((batch, 32)).astype(np.float32)
    out = infer(torch_server, protocol, "pytorch_mlp", {"INPUT__0": x}, ["OUTPUT__0"])
    assert sorted(out) == ["OUTPUT__0"]
    assert_matches(out, reference("pytorch_mlp", {"INPUT__0": x}))


def test_mlp_over_json(torch_server):
    x = (np.arange(3 * 32).reshape(3, 32) % 7 / 4 - 0.75).astype(np.float32)
    out = infer(torch_server, "http", "pytorch_mlp", {"INPUT__0": x}, ["OUTPUT__0"], binary=False)
    assert sorted(out) == ["OUTPUT__0"]
    assert_matches(out, reference("pytorch_mlp", {"INPUT__0": x}), exact_floats=True)


def test_mlp_metadata_and_config(torch_server):
    with httpclient.InferenceServerClient(torch_server.http_url) as client:
        meta = client.get_model_metadata("pytorch_mlp")
        config = client.get_model_config("pytorch_mlp")
    assert meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 32]}]
    assert meta["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 10]}]
    assert config["max_batch_size"] == 64
    assert sum(g["count"] for g in config["instance_group"]) == 2


# ----------------------------------------------------------------------- every dtype


def int_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, 4)
    inputs = {
        "INPUT__0": rng.integers(-100_000, 100_000, size=shape, dtype=np.int32),
        "INPUT__1": rng.integers(-(2**40), 2**40, size=shape, dtype=np.int64),
        "INPUT__2": rng.integers(-10_000, 10_000, size=shape, dtype=np.int16),
        "INPUT__3": rng.integers(-128, 128, size=shape, dtype=np.int8),
        "INPUT__4": rng.integers(0, 256, size=shape, dtype=np.uint8),
    }
    # The edges, where int8 negation and uint8 addition wrap around.
    inputs["INPUT__3"][0, 0] = -128
    inputs["INPUT__4"][0, 0] = 255
    return inputs


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_integer_types(torch_server, protocol, batch):
    inputs = int_inputs(batch, seed=batch)
    out = infer(torch_server, protocol, "torch_int_ops", inputs)
    expected = reference("torch_int_ops", inputs)
    assert sorted(out) == sorted(expected)
    assert_matches(out, expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_integer_types_some_outputs(torch_server, protocol):
    inputs = int_inputs(2, seed=42)
    out = infer(torch_server, protocol, "torch_int_ops", inputs, ["OUTPUT__3", "OUTPUT__1"])
    assert sorted(out) == ["OUTPUT__1", "OUTPUT__3"]
    assert_matches(out, reference("torch_int_ops", inputs))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch,length", [(1, 1), (4, 7), (16, 3)])
def test_float_types(torch_server, protocol, batch, length):
    rng = np.random.default_rng(batch * 10 + length)
    shape = (batch, length)
    # FP16 and BF16 inputs on a 1/8 grid within [-8, 8]: their results are exact.
    h = (rng.integers(-64, 65, size=shape) / 8).astype(np.float16)
    bf = (rng.integers(-64, 65, size=shape) / 8).astype(BF16)
    d = rng.standard_normal(shape)
    inputs = {"HALF__0": h, "BRAIN__1": bf, "DOUBLE__2": d}
    out = infer(torch_server, protocol, "torch_float_ops", inputs)
    expected = reference("torch_float_ops", inputs)
    assert sorted(out) == sorted(expected)
    exact = {name: value for name, value in out.items() if name != "DOUBLE_OUT__2"}
    assert_matches(exact, expected, exact_floats=True)
    assert_matches({"DOUBLE_OUT__2": out["DOUBLE_OUT__2"]}, expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_float_types_random_values(torch_server, protocol):
    rng = np.random.default_rng(77)
    values = rng.standard_normal((3, 5)).astype(np.float32)
    inputs = {
        "HALF__0": values.astype(np.float16),
        "BRAIN__1": values.astype(BF16),
        "DOUBLE__2": values.astype(np.float64),
    }
    out = infer(torch_server, protocol, "torch_float_ops", inputs)
    expected = reference("torch_float_ops", inputs)
    assert sorted(out) == sorted(expected)
    # The same libtorch rounds FP16 and BF16 results the same way: 1e-5 is below their
    # precision, so this asks for the same values.
    assert_matches(out, expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bool_model_without_batching(torch_server, protocol):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2, size=(2, 3)).astype(np.bool_)
    b = rng.integers(0, 2, size=(2, 3)).astype(np.bool_)
    x = (rng.integers(-8, 9, size=(2, 3)) / 4).astype(np.float32)
    inputs = {"a": a, "b": b, "x": x}
    out = infer(torch_server, protocol, "torch_bool_ops", inputs)
    expected = reference("torch_bool_ops", inputs)
    assert sorted(out) == sorted(expected)
    assert_matches(out, expected, exact_floats=True)


# --------------------------------------------------------- model shapes and conventions


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch,length", [(1, 1), (2, 9), (4, 100)])
def test_single_tensor_output_from_named_file(torch_server, protocol, batch, length):
    x = np.random.default_rng(length).standard_normal((batch, length)).astype(np.float32)
    out = infer(torch_server, protocol, "torch_single", {"INPUT__0": x})
    assert sorted(out) == ["OUTPUT__0"]
    assert_matches(out, reference("torch_single", {"INPUT__0": x}))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_optional_input_and_list_output(torch_server, protocol):
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    y = np.array([[0.5, -1, 2], [8, 0, -6]], dtype=np.float32)
    for inputs in ({"INPUT__0": x, "INPUT__1": y}, {"INPUT__0": x}):
        out = infer(torch_server, protocol, "torch_optional", inputs)
        expected = reference("torch_optional", inputs)
        assert sorted(out) == sorted(expected)
        assert_matches(out, expected, exact_floats=True)
    # The reference takes the model's other branch without INPUT__1.
    assert not np.array_equal(
        reference("torch_optional", {"INPUT__0": x})["OUTPUT__0"],
        reference("torch_optional", {"INPUT__0": x, "INPUT__1": y})["OUTPUT__0"],
    )


def test_error_raised_in_torchscript(torch_server):
    x = np.array([[1.0, np.nan]], dtype=np.float32)
    expect_http_error(
        lambda: infer(torch_server, "http", "torch_single", {"INPUT__0": x}),
        500, "torch_single", "the input holds NaN",
    )
    expect_grpc_error(
        lambda: infer(torch_server, "grpc", "torch_single", {"INPUT__0": x}),
        "INTERNAL", "the input holds NaN",
    )
    ok = np.array([[0.25]], dtype=np.float32)
    out = infer(torch_server, "http", "torch_single", {"INPUT__0": ok})
    assert_matches(out, reference("torch_single", {"INPUT__0": ok}))
    # Python torch refuses the NaN with the same assertion.
    with pytest.raises(torch.jit.Error, match="the input holds NaN"):
        reference("torch_single", {"INPUT__0": x})
    assert_still_serving(torch_server)


def test_wrong_input_type_is_refused(torch_server):
    x = np.zeros((1, 32), dtype=np.float64)
    expect_http_error(
        lambda: infer(torch_server, "http", "pytorch_mlp", {"INPUT__0": x}),
        400, "INPUT__0",
    )


def test_concurrent_requests_over_instances(torch_server):
    """torch_int_ops has two instances; many requests at once all get their own answers."""
    errors: list[str] = []

    def worker(seed: int) -> None:
        try:
            for round_ in range(5):
                inputs = int_inputs(1 + (seed + round_) % 8, seed=seed * 100 + round_)
                protocol = PROTOCOLS[(seed + round_) % 2]
                out = infer(torch_server, protocol, "torch_int_ops", inputs)
                for name, value in reference("torch_int_ops", inputs).items():
                    if not np.array_equal(out[name], value):
                        errors.append(f"seed {seed} round {round_}: {name} differs")
        except Exception as exc:  # reported below, with the others
            errors.append(f"seed {seed}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]


# ------------------------------------------------------------------ failing setups


def _mlp_copy(repo: Path, name: str, config: str) -> None:
    """A copy of pytorch_mlp's model file under another name and config."""
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(MLP_DIR / "1" / "model.pt", repo / name / "1" / "model.pt")
    (repo / name / "config.pbtxt").write_text(config)


def _mlp_config(name: str, extra: str = "", input_dims: str = "[ 32 ]",
                outputs: str = '{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] }') -> str:
    return f"""
name: "{name}"
backend: "pytorch"
max_batch_size: 8
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: {input_dims} }} ]
output [ {{outputs}} ]
{extra}
""".replace("{outputs}", outputs)


def _index(server: FerrumServer) -> dict[str, dict]:
    with httpclient.InferenceServerClient(server.http_url) as client:
        return {e["name"]: e for e in client.get_model_repository_index()}


def test_broken_models_are_unavailable_with_reasons(server_factory, tmp_path):
    _require_generated()
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "model_repository" / "simple", repo / "simple")
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    (repo / "corrupt" / "config.pbtxt").write_text(_mlp_config("corrupt"))
    (repo / "no_file" / "1").mkdir(parents=True)
    (repo / "no_file" / "config.pbtxt").write_text(_mlp_config("no_file"))
    _mlp_copy(repo, "bad_param", _mlp_config(
        "bad_param", 'parameters { key: "INFERENCE_MODE" value { string_value: "maybe" } }'))
    _mlp_copy(repo, "strings", _mlp_config(
        "strings", outputs='{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 10 ] }'))
    _mlp_copy(repo, "on_gpu", _mlp_config("on_gpu", "instance_group [ { kind: KIND_GPU } ]"))
    srv = server_factory(repo)

    index = _index(srv)
    assert index["simple"]["state"] == "READY"
    expected = {
        "corrupt": ["failed to load model 'corrupt'"],
        "no_file": ["unable to find", "model.pt"],
        "bad_param": ["INFERENCE_MODE", "maybe"],
        "strings": ["OUTPUT__0", "TYPE_STRING", "not support"],
        "on_gpu": ["KIND_GPU"],
    }
    for name, mentions in expected.items():
        entry = index[name]
        assert entry["state"] == "UNAVAILABLE", entry
        for text in mentions:
            assert text in entry.get("reason", ""), (name, entry)
        assert "frame #" not in entry.get("reason", ""), entry
    assert_still_serving(srv)


def test_model_config_mismatches_fail_requests_cleanly(server_factory, tmp_path):
    _require_generated()
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "model_repository" / "simple", repo / "simple")
    _mlp_copy(repo, "wrong_type", _mlp_config(
        "wrong_type", outputs='{ name: "OUTPUT__0" data_type: TYPE_FP64 dims: [ 10 ] }'))
    _mlp_copy(repo, "wrong_dims", _mlp_config("wrong_dims", input_dims="[ -1 ]"))
    _mlp_copy(repo, "extra_output", _mlp_config(
        "extra_output",
        outputs='{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] },'
                '{ name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 10 ] }'))
    srv = server_factory(repo)
    assert all(e["state"] == "READY" for e in _index(srv).values()), _index(srv)

    x = np.zeros((2, 32), dtype=np.float32)
    for protocol in PROTOCOLS:
        call = (lambda m, inputs: lambda: infer(srv, protocol, m, inputs))
        check = (
            (lambda c, *m: expect_http_error(c, 500, *m)) if protocol == "http"
            else (lambda c, *m: expect_grpc_error(c, "INTERNAL", *m))
        )
        check(call("wrong_type", {"INPUT__0": x}), "'OUTPUT__0' is FP32", "declares FP64")
        check(call("wrong_dims", {"INPUT__0": np.zeros((2, 5), np.float32)}),
              "wrong_dims", "cannot be multiplied")
        check(call("extra_output", {"INPUT__0": x}), "'OUTPUT__1'", "returned 1 tensor")
    # The model itself still answers what it can.
    out = infer(srv, "grpc", "wrong_dims", {"INPUT__0": x})
    assert_matches(out, reference("pytorch_mlp", {"INPUT__0": x}), exact_floats=True)
    assert_still_serving(srv)


def test_triton_parameters(server_factory, tmp_path):
    """Every parameter Triton's PyTorch backend reads, set away from its default."""
    _require_generated()
    repo = tmp_path / "repo"
    params = "\n".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}'
        for k, v in [
            ("DISABLE_OPTIMIZED_EXECUTION", "true"),
            ("INFERENCE_MODE", "false"),
            ("ENABLE_JIT_EXECUTOR", "false"),
            ("ENABLE_JIT_PROFILING", "false"),
            ("ENABLE_TENSOR_FUSER", "false"),
            ("ENABLE_WEIGHT_SHARING", "true"),
            ("INTRA_OP_THREAD_COUNT", "1"),
            ("INTER_OP_THREAD_COUNT", "1"),
            ("ENABLE_CACHE_CLEANING", "true"),
        ]
    )
    _mlp_copy(repo, "tuned", _mlp_config(
        "tuned", params + "\ninstance_group [ { count: 3 kind: KIND_CPU } ]"))
    # Thread pools are process-wide: a second model asking for another size is told it lost.
    _mlp_copy(repo, "tuned_later", _mlp_config(
        "tuned_later",
        'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "2" } }'))
    srv = server_factory(repo)
    assert _index(srv)["tuned"]["state"] == "READY", _index(srv)
    assert _index(srv)["tuned_later"]["state"] == "READY", _index(srv)
    for batch in (1, 8):
        for protocol in PROTOCOLS:
            x = (np.random.default_rng(batch).integers(-16, 17, (batch, 32)) / 16).astype(
                np.float32
            )
            out = infer(srv, protocol, "tuned", {"INPUT__0": x})
            assert sorted(out) == ["OUTPUT__0"], f"batch {batch} {protocol}"
            assert_matches(out, reference("pytorch_mlp", {"INPUT__0": x}), exact_floats=True)
    log = srv.stderr_text() + srv.stdout_text()
    assert "INTRA_OP_THREAD_COUNT set to 1" in log, log[-3000:]
    assert "INTER_OP_THREAD_COUNT set to 1" in log, log[-3000:]
    assert "INTRA_OP_THREAD_COUNT=2 ignored" in log, log[-3000:]
    assert "ENABLE_CACHE_CLEANING only applies on a GPU" in log, log[-3000:]


def test_gpu_instances():
    pytest.skip(
        "KIND_GPU: the pytorch plugin links libtorch's CPU libraries only and the server "
        "refuses GPU instance groups (a clean UNAVAILABLE is checked in "
        "test_broken_models_are_unavailable_with_reasons)"
    )


# ------------------------------------------------------- without libtorch beside the plugin


def _backends_without_libtorch(dest: Path) -> Path:
    """A backend directory whose pytorch folder holds the plugin alone."""
    for entry in backend_dir().iterdir():
        if entry.name != "pytorch":
            shutil.copytree(entry, dest / entry.name)
    (dest / "pytorch").mkdir(parents=True)
    shutil.copy(backend_dir() / "pytorch" / "libferrum_pytorch.so", dest / "pytorch")
    return dest


def test_missing_libtorch_is_a_clear_model_error(server_factory, tmp_path):
    _require_generated()
    backends = _backends_without_libtorch(tmp_path / "backends")
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "model_repository" / "simple", repo / "simple")
    shutil.copytree(MLP_DIR, repo / "pytorch_mlp")
    srv = server_factory(repo, backend_directory=backends)

    entry = _index(srv)["pytorch_mlp"]
    assert entry["state"] == "UNAVAILABLE", entry
    assert "libtorch_cpu.so" in entry["reason"], entry
    assert "cannot open shared object file" in entry["reason"], entry
    assert _index(srv)["simple"]["state"] == "READY"
    x = np.zeros((1, 32), dtype=np.float32)
    expect_http_error(lambda: infer(srv, "http", "pytorch_mlp", {"INPUT__0": x}), 503,
                      "libtorch_cpu.so")
    assert_still_serving(srv)


# ---------------------------------------------------------- startup cost of the plugin


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _maps_mention(pid: int, text: str) -> bool:
    return text in Path(f"/proc/{pid}/maps").read_text()


def _startup(repo: Path, backends: Path, log_dir: Path, settle_s: float = 0.5):
    """Seconds from spawn to ready, RSS after settling, and whether libtorch is mapped."""
    start = time.monotonic()
    srv = start_server(repo, backend_directory=backends, log_dir=log_dir)
    ready_s = time.monotonic() - start
    time.sleep(settle_s)
    rss = _rss_kib(srv.pid)
    torch_mapped = _maps_mention(srv.pid, "libtorch_cpu.so")
    srv.stop_and_check()
    return ready_s, rss, torch_mapped


def measure_startup(work: Path, runs: int = 3) -> list[tuple[str, float, int, bool]]:
    """Startup time and RSS with and without the pytorch plugin in the backend directory,
    over a repository without a PyTorch model, and (for scale) with pytorch_mlp loaded."""
    plain_repo = work / "repo"
    shutil.copytree(REPO_ROOT / "model_repository", plain_repo,
                    ignore=shutil.ignore_patterns("pytorch_*"))
    torch_repo = work / "repo_torch"
    shutil.copytree(REPO_ROOT / "model_repository", torch_repo)
    without = work / "backends_without_pytorch"
    shutil.copytree(backend_dir(), without, ignore=shutil.ignore_patterns("pytorch"))
    cases = [
        ("no pytorch plugin, no pytorch model", plain_repo, without),
        ("pytorch plugin present, no pytorch model", plain_repo, backend_dir()),
        ("pytorch plugin present, pytorch_mlp loaded", torch_repo, backend_dir()),
    ]
    rows = []
    for label, repo, backends in cases:
        samples = [_startup(repo, backends, work / "logs") for _ in range(runs)]
        ready = sorted(s[0] for s in samples)[len(samples) // 2]
        rss = sorted(s[1] for s in samples)[len(samples) // 2]
        rows.append((label, ready, rss, any(s[2] for s in samples)))
    return rows


def format_startup(rows) -> str:
    lines = [f"{'server':<46} {'ready (s)':>10} {'RSS (MiB)':>10}  libtorch mapped"]
    for label, ready, rss, mapped in rows:
        lines.append(f"{label:<46} {ready:>10.3f} {rss / 1024:>10.1f}  {'yes' if mapped else 'no'}")
    return "\n".join(lines)


def test_plugin_costs_nothing_without_a_pytorch_model(tmp_path, capsys):
    """Prints startup time and RSS (not asserted); asserts libtorch is only mapped when a model
    needs it."""
    _require_generated()
    rows = measure_startup(tmp_path, runs=1)
    with capsys.disabled():
        print("\n" + format_startup(rows))
    mapped = {label: m for label, _, _, m in rows}
    assert not mapped["no pytorch plugin, no pytorch model"]
    assert not mapped["pytorch plugin present, no pytorch model"]
    assert mapped["pytorch plugin present, pytorch_mlp loaded"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ferrum-startup-") as work:
        print(format_startup(measure_startup(Path(work), runs=5)))
