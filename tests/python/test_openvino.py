"""The OpenVINO backend, end to end with tritonclient over HTTP and gRPC.

* ``openvino_mlp`` (OpenVINO IR) and ``openvino_mlp_onnx`` (the same network as ONNX, its
  config auto-completed) from model_repository/, compared against Python onnxruntime on the
  same inputs, at several batch sizes.
* Every data type both sides support, through an ONNX model built here.
* Config ``parameters`` (hint, streams, threads, static batch with padding), several
  instances, and load errors that leave a model UNAVAILABLE with a reason.
* No OpenVINO runtime beside the plugin: the model is UNAVAILABLE, saying what to install,
  and ``simple`` still serves; ``runtime-directory`` and ``FERRUM_OPENVINO_DIR`` find it.
* The same ONNX network through the onnxruntime and openvino backends of one server (skipped
  until the onnxruntime backend is built into target/debug/backends).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from ferrum_checks import (
    assert_exact,
    assert_simple_result,
    expect_grpc_error,
    expect_http_error,
    grpc_simple_infer,
    http_simple_infer,
    simple_data,
)
from ferrum_harness import (
    backend_dir,
    copy_model_repository,
    default_model_repository,
    start_server,
)

TIMEOUT = 60
MLP_IN, MLP_OUT = 16, 8
IR_MODEL, ONNX_MODEL = "openvino_mlp", "openvino_mlp_onnx"
# max_batch_size: openvino_mlp's config says 8; openvino_mlp_onnx gets Triton's default, 4.
MLP_MAX_BATCH = {IR_MODEL: 8, ONNX_MODEL: 4}
MLP_ONNX_FILE = default_model_repository() / ONNX_MODEL / "1" / "model.onnx"
# Floats: at most this far from onnxruntime, relative (plus a tiny absolute floor for zeros).
RTOL, ATOL = 1e-4, 1e-6


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual is not None, f"{what}: output missing"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.fixture(scope="module")
def reference() -> onnxruntime.InferenceSession:
    """Python onnxruntime on the example network."""
    return onnxruntime.InferenceSession(str(MLP_ONNX_FILE), providers=["CPUExecutionProvider"])


def mlp_input(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, MLP_IN)).astype(np.float32)


def http_mlp(client, model: str, x: np.ndarray, binary: bool = True) -> np.ndarray:
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    return client.infer(model, [inp], outputs=out).as_numpy("OUTPUT0")


def grpc_mlp(client, model: str, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = [grpcclient.InferRequestedOutput("OUTPUT0")]
    return client.infer(model, [inp], outputs=out, client_timeout=TIMEOUT).as_numpy("OUTPUT0")


# ------------------------------------------------- the example models vs onnxruntime


@pytest.mark.parametrize("model", [IR_MODEL, ONNX_MODEL])
@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_mlp_http_matches_onnxruntime(http_client, reference, model, batch, binary):
    x = mlp_input(batch, seed=batch)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    assert_close(http_mlp(http_client, model, x, binary), expected, f"{model} batch {batch}")


@pytest.mark.parametrize("model", [IR_MODEL, ONNX_MODEL])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_mlp_grpc_matches_onnxruntime(grpc_client, reference, model, batch):
    x = mlp_input(batch, seed=100 + batch)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    assert_close(grpc_mlp(grpc_client, model, x), expected, f"{model} batch {batch}")


def test_ir_takes_its_full_batch(http_client, grpc_client, reference):
    x = mlp_input(8, seed=8)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    assert_close(http_mlp(http_client, IR_MODEL, x), expected, "http batch 8")
    assert_close(grpc_mlp(grpc_client, IR_MODEL, x), expected, "grpc batch 8")


def test_ir_and_onnx_agree(http_client):
    x = mlp_input(4, seed=44)
    np.testing.assert_allclose(
        http_mlp(http_client, IR_MODEL, x), http_mlp(http_client, ONNX_MODEL, x), rtol=RTOL, atol=ATOL
    )


def test_autocompleted_config_and_metadata(http_client, grpc_client):
    config = http_client.get_model_config(ONNX_MODEL)
    assert config["backend"] == "openvino"
    assert config["max_batch_size"] == 4
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [MLP_IN])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [MLP_OUT])
    ]
    for model in (IR_MODEL, ONNX_MODEL):
        meta = http_client.get_model_metadata(model)
        assert meta["platform"] == "openvino"
        assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, MLP_IN]}]
        assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, MLP_OUT]}]
        gmeta = grpc_client.get_model_metadata(model, as_json=True)
        assert [i["shape"] for i in gmeta["inputs"]] == [["-1", str(MLP_IN)]]


def test_batch_over_the_limit_is_rejected(http_client, grpc_client):
    x = mlp_input(5, seed=5)
    expect_http_error(lambda: http_mlp(http_client, ONNX_MODEL, x), 400, "batch")
    expect_grpc_error(lambda: grpc_mlp(grpc_client, ONNX_MODEL, x), "INVALID_ARGUMENT", "batch")
    # Still serving afterwards.
    assert http_mlp(http_client, ONNX_MODEL, x[:4]).shape == (4, MLP_OUT)


def test_concurrent_requests(server, reference):
    """Requests from several threads over both protocols, each answer its own."""
    errors: list[str] = []

    def work(worker: int) -> None:
        try:
            with httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT) as h, \
                    grpcclient.InferenceServerClient(server.grpc_url) as g:
                for i in range(6):
                    x = mlp_input(1 + (worker + i) % 4, seed=1000 * worker + i)
                    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
                    got = http_mlp(h, IR_MODEL, x) if i % 2 else grpc_mlp(g, ONNX_MODEL, x)
                    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
        except Exception as exc:  # reported below, in the test's own thread
            errors.append(f"worker {worker}: {exc!r}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------------ data types

# (Triton name, ONNX type, numpy type) for every type both Triton and OpenVINO have.
DTYPES = [
    ("BOOL", TensorProto.BOOL, np.bool_),
    ("INT8", TensorProto.INT8, np.int8),
    ("INT16", TensorProto.INT16, np.int16),
    ("INT32", TensorProto.INT32, np.int32),
    ("INT64", TensorProto.INT64, np.int64),
    ("UINT8", TensorProto.UINT8, np.uint8),
    ("UINT16", TensorProto.UINT16, np.uint16),
    ("UINT32", TensorProto.UINT32, np.uint32),
    ("UINT64", TensorProto.UINT64, np.uint64),
    ("FP16", TensorProto.FLOAT16, np.float16),
    ("BF16", TensorProto.BFLOAT16, ml_dtypes.bfloat16),
    ("FP32", TensorProto.FLOAT, np.float32),
    ("FP64", TensorProto.DOUBLE, np.float64),
]
DTYPE_WIDTH = 5


def dtypes_onnx() -> onnx.ModelProto:
    """IN_<T> [batch, 5] -> OUT_<T>: x + x for numbers, not x for BOOL."""
    nodes, inputs, outputs = [], [], []
    for name, onnx_type, _ in DTYPES:
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", onnx_type, ["batch", DTYPE_WIDTH]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", onnx_type, ["batch", DTYPE_WIDTH]))
        if name == "BOOL":
            nodes.append(helper.make_node("Not", [f"IN_{name}"], [f"OUT_{name}"]))
        else:
            nodes.append(helper.make_node("Add", [f"IN_{name}", f"IN_{name}"], [f"OUT_{name}"]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def dtype_values(np_type, batch: int, seed: int) -> np.ndarray:
    """Values whose doubles are exact in the type (OpenVINO's CPU plugin computes 64-bit
    integers in 32 bits and FP64 in FP32, so stay inside what that keeps exact)."""
    rng = np.random.default_rng(seed)
    if np_type is np.bool_:
        return rng.integers(0, 2, size=(batch, DTYPE_WIDTH)).astype(np.bool_)
    if np_type in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16):
        return (rng.integers(-64, 64, size=(batch, DTYPE_WIDTH)) / 4).astype(np_type)
    info = np.iinfo(np_type)
    low = max(info.min // 2, -(2**30))
    high = min(info.max // 2, 2**30)
    return rng.integers(low, high + 1, size=(batch, DTYPE_WIDTH)).astype(np_type)


def dtype_expected(np_type, x: np.ndarray) -> np.ndarray:
    return np.logical_not(x) if np_type is np.bool_ else (x + x).astype(np_type)


@pytest.fixture(scope="module")
def variants_server(tmp_path_factory):
    """A server on model variants built for these tests (see each model's comment)."""
    root = tmp_path_factory.mktemp("openvino-variants")
    repo = copy_model_repository(root / "repo", ["simple", IR_MODEL])
    ir_files = repo / IR_MODEL / "1"

    def add(name: str, config: str, files: dict[str, Path] | None = None, onnx_model=None):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        for target, source in (files or {}).items():
            shutil.copyfile(source, repo / name / "1" / target)
        if onnx_model is not None:
            onnx.save_model(onnx_model, str(repo / name / "1" / "model.onnx"))

    # Every data type; config auto-completed (max_batch_size 4).
    add("openvino_dtypes", 'backend: "openvino"\n', onnx_model=dtypes_onnx())
    ir = {"model.xml": ir_files / "model.xml", "model.bin": ir_files / "model.bin"}
    mlp_tensors = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]
"""
    # Two instances, throughput hint, one thread and one stream each.
    add("ov_two_instances", f"""
backend: "openvino"
max_batch_size: 8
{mlp_tensors}
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters [
  {{ key: "PERFORMANCE_HINT" value: {{ string_value: "THROUGHPUT" }} }},
  {{ key: "INFERENCE_NUM_THREADS" value: {{ string_value: "1" }} }},
  {{ key: "NUM_STREAMS" value: {{ string_value: "1" }} }}
]
""", ir)
    # Batch fixed at 8 in the compiled model; smaller batches padded.
    add("ov_static_batch", f"""
backend: "openvino"
max_batch_size: 8
{mlp_tensors}
parameters [
  {{ key: "SKIP_OV_DYNAMIC_BATCHSIZE" value: {{ string_value: "YES" }} }},
  {{ key: "ENABLE_BATCH_PADDING" value: {{ string_value: "YES" }} }}
]
""", ir)
    # Batch fixed at 8, no padding: other batch sizes are refused by the backend.
    add("ov_static_no_padding", f"""
backend: "openvino"
max_batch_size: 8
{mlp_tensors}
parameters [ {{ key: "SKIP_OV_DYNAMIC_BATCHSIZE" value: {{ string_value: "YES" }} }} ]
""", ir)
    # The ONNX file named by default_model_filename; no batching (dims keep the batch dim).
    add("ov_named_file", """
backend: "openvino"
default_model_filename: "mlp.onnx"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1, 8 ] } ]
""", {"mlp.onnx": MLP_ONNX_FILE})
    # Looser dims than the model: the server lets any width through, the backend checks.
    add("ov_loose_dims", """
backend: "openvino"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]
""", ir)
    # No config.pbtxt at all: model.xml names the backend, the rest is auto-completed.
    (repo / "ov_no_config" / "1").mkdir(parents=True)
    for target, source in ir.items():
        shutil.copyfile(source, repo / "ov_no_config" / "1" / target)
    # Load errors: each must leave its model UNAVAILABLE with a reason.
    add("ov_bad_hint", f"""
backend: "openvino"
max_batch_size: 8
{mlp_tensors}
parameters [ {{ key: "PERFORMANCE_HINT" value: {{ string_value: "FASTEST" }} }} ]
""", ir)
    add("ov_wrong_dims", """
backend: "openvino"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 17 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]
""", ir)
    add("ov_wrong_type", """
backend: "openvino"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]
""", ir)
    add("ov_wrong_name", """
backend: "openvino"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]
""", ir)
    add("ov_no_file", 'backend: "openvino"\nmax_batch_size: 8\n' + mlp_tensors)
    # Damaged files: bytes that are no ONNX, weights cut short.
    add("ov_garbage_onnx", 'backend: "openvino"\n')
    (repo / "ov_garbage_onnx" / "1" / "model.onnx").write_bytes(
        np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    add("ov_short_weights", 'backend: "openvino"\nmax_batch_size: 8\n' + mlp_tensors,
        {"model.xml": ir_files / "model.xml"})
    (repo / "ov_short_weights" / "1" / "model.bin").write_bytes(
        (ir_files / "model.bin").read_bytes()[:1000])

    srv = start_server(repo, log_dir=root / "logs")
    yield srv
    srv.stop_and_check()


def _http_dtype_inputs(batch: int, seed: int, only=None):
    inputs, values = [], {}
    for name, _, np_type in DTYPES:
        x = dtype_values(np_type, batch, seed)
        values[name] = x
        inp = httpclient.InferInput(f"IN_{name}", list(x.shape), name)
        inp.set_data_from_numpy(x, binary_data=True)
        inputs.append(inp)
    return inputs, values


@pytest.mark.parametrize("batch", [1, 3])
def test_every_dtype_round_trips_http(variants_server, batch):
    with httpclient.InferenceServerClient(variants_server.http_url, network_timeout=TIMEOUT) as client:
        inputs, values = _http_dtype_inputs(batch, seed=batch)
        result = client.infer("openvino_dtypes", inputs)
        for name, _, np_type in DTYPES:
            got = result.as_numpy(f"OUT_{name}")
            expected = dtype_expected(np_type, values[name])
            assert got is not None, f"OUT_{name} missing"
            assert got.dtype == expected.dtype, f"{name}: {got.dtype} != {expected.dtype}"
            assert got.shape == expected.shape, f"{name}: {got.shape}"
            np.testing.assert_array_equal(
                got.view(np.uint8), expected.view(np.uint8), err_msg=name
            )


def test_every_dtype_round_trips_grpc(variants_server):
    with grpcclient.InferenceServerClient(variants_server.grpc_url) as client:
        inputs, values = [], {}
        for name, _, np_type in DTYPES:
            x = dtype_values(np_type, 2, seed=77)
            values[name] = x
            inp = grpcclient.InferInput(f"IN_{name}", list(x.shape), name)
            inp.set_data_from_numpy(x)
            inputs.append(inp)
        result = client.infer("openvino_dtypes", inputs, client_timeout=TIMEOUT)
        for name, _, np_type in DTYPES:
            got = result.as_numpy(f"OUT_{name}")
            expected = dtype_expected(np_type, values[name])
            assert got is not None and got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8), err_msg=name)


def test_only_requested_outputs_come_back(variants_server):
    with httpclient.InferenceServerClient(variants_server.http_url, network_timeout=TIMEOUT) as client:
        inputs, values = _http_dtype_inputs(2, seed=9)
        wanted = [httpclient.InferRequestedOutput("OUT_INT32", binary_data=True),
                  httpclient.InferRequestedOutput("OUT_BOOL", binary_data=False)]
        result = client.infer("openvino_dtypes", inputs, outputs=wanted)
        names = sorted(o["name"] for o in result.get_response()["outputs"])
        assert names == ["OUT_BOOL", "OUT_INT32"]
        assert_exact(result.as_numpy("OUT_INT32"), values["INT32"] * 2, "OUT_INT32")
        assert_exact(result.as_numpy("OUT_BOOL"), np.logical_not(values["BOOL"]), "OUT_BOOL")


def test_dtypes_config_is_autocompleted(variants_server):
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        config = client.get_model_config("openvino_dtypes")
    assert config["max_batch_size"] == 4
    by_name = {t["name"]: t for t in config["input"]}
    for name, _, _ in DTYPES:
        assert by_name[f"IN_{name}"]["data_type"] == f"TYPE_{name}"
        assert by_name[f"IN_{name}"]["dims"] == [DTYPE_WIDTH]


# ------------------------------------------------------- parameters and instances


def test_two_instances_with_parameters(variants_server, reference):
    with httpclient.InferenceServerClient(variants_server.http_url, concurrency=4,
                                          network_timeout=TIMEOUT) as client:
        config = client.get_model_config("ov_two_instances")
        assert config["instance_group"][0]["count"] == 2
        assert config["parameters"]["PERFORMANCE_HINT"]["string_value"] == "THROUGHPUT"
        pending = []
        for i in range(16):
            x = mlp_input(1 + i % 8, seed=300 + i)
            inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            pending.append((x, client.async_infer("ov_two_instances", [inp])))
        for x, request in pending:
            (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
            assert_close(request.get_result().as_numpy("OUTPUT0"), expected, "two instances")


@pytest.mark.parametrize("batch", [1, 5, 8])
def test_static_batch_pads_smaller_batches(variants_server, reference, batch):
    x = mlp_input(batch, seed=500 + batch)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        assert_close(http_mlp(client, "ov_static_batch", x), expected, f"padded batch {batch}")
    with grpcclient.InferenceServerClient(variants_server.grpc_url) as client:
        assert_close(grpc_mlp(client, "ov_static_batch", x), expected, f"padded batch {batch}")


def test_static_batch_without_padding(variants_server, reference):
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        x = mlp_input(8, seed=8)
        (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
        assert_close(http_mlp(client, "ov_static_no_padding", x), expected, "batch 8")
        expect_http_error(lambda: http_mlp(client, "ov_static_no_padding", x[:3]), 400,
                          "INPUT0", "ENABLE_BATCH_PADDING")
    with grpcclient.InferenceServerClient(variants_server.grpc_url) as client:
        expect_grpc_error(lambda: grpc_mlp(client, "ov_static_no_padding", x[:2]),
                          "INVALID_ARGUMENT", "INPUT0", "batch size 2")


def test_default_model_filename_without_batching(variants_server, reference):
    x = mlp_input(3, seed=3)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        assert client.get_model_config("ov_named_file")["max_batch_size"] == 0
        assert_close(http_mlp(client, "ov_named_file", x), expected, "default_model_filename")


def test_ir_without_config_is_autocompleted(variants_server, reference):
    x = mlp_input(4, seed=40)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        config = client.get_model_config("ov_no_config")
        assert config["backend"] == "openvino"
        assert config["max_batch_size"] == 4
        assert [(t["name"], t["dims"]) for t in config["input"]] == [("INPUT0", [MLP_IN])]
        assert_close(http_mlp(client, "ov_no_config", x), expected, "no config.pbtxt")
    with grpcclient.InferenceServerClient(variants_server.grpc_url) as client:
        assert_close(grpc_mlp(client, "ov_no_config", x), expected, "no config.pbtxt")


def test_backend_rejects_a_shape_the_model_cannot_take(variants_server, reference):
    bad = np.zeros((2, 5), dtype=np.float32)
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        expect_http_error(lambda: http_mlp(client, "ov_loose_dims", bad), 400, "INPUT0", "[?,16]")
        x = mlp_input(2, seed=2)
        (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
        assert_close(http_mlp(client, "ov_loose_dims", x), expected, "after the error")
    with grpcclient.InferenceServerClient(variants_server.grpc_url) as client:
        expect_grpc_error(lambda: grpc_mlp(client, "ov_loose_dims", bad), "INVALID_ARGUMENT", "INPUT0")
        in0, in1 = simple_data(batch=2, seed=11)
        assert_simple_result(grpc_simple_infer(client, in0, in1), in0, in1)


@pytest.mark.parametrize(
    "model, mentions",
    [
        ("ov_bad_hint", ["PERFORMANCE_HINT", "FASTEST"]),
        ("ov_wrong_dims", ["INPUT0", "[17]", "[?,16]"]),
        ("ov_wrong_type", ["INPUT0", "INT32", "FP32"]),
        ("ov_wrong_name", ["IMAGE", "INPUT0"]),
        ("ov_no_file", ["model.xml", "model.onnx"]),
        ("ov_garbage_onnx", ["OpenVINO cannot read", "model.onnx"]),
        ("ov_short_weights", ["OpenVINO cannot read", "weights"]),
    ],
)
def test_load_errors_leave_the_model_unavailable(variants_server, model, mentions):
    with httpclient.InferenceServerClient(variants_server.http_url) as client:
        entry = {e["name"]: e for e in client.get_model_repository_index()}[model]
        assert entry["state"] == "UNAVAILABLE", entry
        for text in mentions:
            assert text in entry.get("reason", ""), f"{text!r} not in {entry}"
        assert not client.is_model_ready(model)
        in0, in1 = simple_data(batch=1, seed=5)
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)


# ------------------------------------------------------------ finding the runtime


def _plugin_only_backends(root: Path) -> Path:
    """A backend directory with add_sub and the bare openvino plugin (no runtime beside it)."""
    backends = root / "backends"
    (backends / "openvino").mkdir(parents=True)
    shutil.copy2(backend_dir() / "openvino" / "libferrum_openvino.so", backends / "openvino")
    shutil.copytree(backend_dir() / "add_sub", backends / "add_sub")
    return backends


def test_missing_runtime_is_unavailable_and_others_serve(server_factory, tmp_path):
    backends = _plugin_only_backends(tmp_path)
    repo = copy_model_repository(tmp_path / "repo", ["simple", IR_MODEL])
    srv = server_factory(repo, backend_directory=backends, env={"FERRUM_OPENVINO_DIR": ""})
    with httpclient.InferenceServerClient(srv.http_url) as client:
        entry = {e["name"]: e for e in client.get_model_repository_index()}[IR_MODEL]
        assert entry["state"] == "UNAVAILABLE", entry
        reason = entry.get("reason", "")
        for text in ("OpenVINO runtime is not installed", "libopenvino_c.so", "make build",
                     "openvino 2026.4.1", "runtime-directory", "FERRUM_OPENVINO_DIR"):
            assert text in reason, f"{text!r} not in {reason!r}"
        in0, in1 = simple_data(batch=2, seed=21)
        assert_simple_result(http_simple_infer(client, in0, in1), in0, in1)
        expect_http_error(lambda: http_mlp(client, IR_MODEL, mlp_input(1, seed=1)), 503,
                          "OpenVINO runtime is not installed")
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        expect_grpc_error(lambda: grpc_mlp(client, IR_MODEL, mlp_input(1, seed=1)),
                          "UNAVAILABLE", "make build")
        in0, in1 = simple_data(batch=2, seed=22)
        assert_simple_result(grpc_simple_infer(client, in0, in1), in0, in1)


@pytest.mark.parametrize("how", ["backend-config", "environment"])
def test_runtime_found_elsewhere(server_factory, tmp_path, reference, how):
    backends = _plugin_only_backends(tmp_path)
    repo = copy_model_repository(tmp_path / "repo", ["simple", IR_MODEL])
    runtime = backend_dir() / "openvino"
    if how == "backend-config":
        srv = server_factory(repo, [f"--backend-config=openvino,runtime-directory={runtime}"],
                             backend_directory=backends, env={"FERRUM_OPENVINO_DIR": ""})
    else:
        srv = server_factory(repo, backend_directory=backends,
                             env={"FERRUM_OPENVINO_DIR": str(runtime)})
    x = mlp_input(2, seed=12)
    (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
    with httpclient.InferenceServerClient(srv.http_url) as client:
        assert client.is_model_ready(IR_MODEL)
        assert_close(http_mlp(client, IR_MODEL, x), expected, how)


# ------------------------------------------- the same network on two backends


ORT_BACKEND = backend_dir() / "onnxruntime"


@pytest.mark.skipif(
    not ORT_BACKEND.is_dir(),
    reason=f"the onnxruntime backend is not built ({ORT_BACKEND} is missing); this test runs "
    "once it is merged and `make test-build` lays it out",
)
def test_same_onnx_network_on_onnxruntime_and_openvino(server_factory, tmp_path, reference):
    repo = copy_model_repository(tmp_path / "repo", [ONNX_MODEL])
    (repo / "mlp_on_ort" / "1").mkdir(parents=True)
    shutil.copyfile(MLP_ONNX_FILE, repo / "mlp_on_ort" / "1" / "model.onnx")
    (repo / "mlp_on_ort" / "config.pbtxt").write_text("""
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]
""")
    srv = server_factory(repo)
    with httpclient.InferenceServerClient(srv.http_url) as h, \
            grpcclient.InferenceServerClient(srv.grpc_url) as g:
        for batch in (1, 2, 4):
            x = mlp_input(batch, seed=900 + batch)
            (expected,) = reference.run(["OUTPUT0"], {"INPUT0": x})
            on_ort = http_mlp(h, "mlp_on_ort", x)
            on_ov = grpc_mlp(g, ONNX_MODEL, x)
            assert_close(on_ort, expected, f"onnxruntime backend, batch {batch}")
            assert_close(on_ov, expected, f"openvino backend, batch {batch}")
            np.testing.assert_allclose(on_ov, on_ort, rtol=RTOL, atol=ATOL)
