"""Shared expectations and assertion helpers for the end-to-end tests."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

# ---------------------------------------------------------------- the models

MAX_BATCH = 8
SIMPLE_DIM = 16

# What model metadata must say about each model in model_repository/.
# Shapes in metadata include the batch dimension (-1) because max_batch_size > 0.
MODELS = {
    "simple": {
        "backend": "add_sub",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, SIMPLE_DIM]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, SIMPLE_DIM]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, SIMPLE_DIM]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, SIMPLE_DIM]},
        ],
    },
    "identity_fp32": {
        "backend": "identity",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, -1]}],
    },
    "simple_identity": {
        "backend": "identity",
        "inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1, -1]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [-1, -1]}],
    },
}
MODEL_NAMES = sorted(MODELS)

# KServe datatype -> Triton model-config TYPE_* name.
CONFIG_TYPE = {"INT32": "TYPE_INT32", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def config_tensor(meta: dict) -> dict:
    """Expected model-config entry for a metadata tensor (dims drop the batch dim)."""
    return {
        "name": meta["name"],
        "data_type": CONFIG_TYPE[meta["datatype"]],
        "dims": meta["shape"][1:],
    }


# ------------------------------------------------------------------- data


def simple_data(batch: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two INT32 [batch, 16] tensors with mixed signs, far from overflow."""
    rng = np.random.default_rng(seed)
    in0 = rng.integers(-100_000, 100_000, size=(batch, SIMPLE_DIM), dtype=np.int32)
    in1 = rng.integers(-100_000, 100_000, size=(batch, SIMPLE_DIM), dtype=np.int32)
    return in0, in1


def assert_exact(actual: Optional[np.ndarray], expected: np.ndarray, what: str = "") -> None:
    """Same dtype, same shape, same values (bit for bit for floats)."""
    label = f"{what}: " if what else ""
    assert actual is not None, f"{label}output missing from the response"
    assert actual.dtype == expected.dtype, f"{label}dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{label}shape {actual.shape} != {expected.shape}"
    if expected.dtype == np.float32:
        np.testing.assert_array_equal(
            actual.view(np.uint32), expected.view(np.uint32), err_msg=label
        )
    elif expected.dtype == np.object_:
        assert actual.tolist() == expected.tolist(), label
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=label)


# -------------------------------------------------------- simple over HTTP


def http_simple_inputs(
    in0: np.ndarray, in1: np.ndarray, binary: bool
) -> list[httpclient.InferInput]:
    inputs = []
    for name, arr in (("INPUT0", in0), ("INPUT1", in1)):
        inp = httpclient.InferInput(name, list(arr.shape), "INT32")
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def http_simple_infer(
    client: httpclient.InferenceServerClient,
    in0: np.ndarray,
    in1: np.ndarray,
    *,
    binary_in: bool = False,
    binary_out: Optional[bool] = False,
    outputs: Sequence[str] = ("OUTPUT0", "OUTPUT1"),
    **kwargs,
) -> httpclient.InferResult:
    """``binary_out=None`` requests no outputs at all (server returns all, binary)."""
    requested = None
    if binary_out is not None:
        requested = [httpclient.InferRequestedOutput(o, binary_data=binary_out) for o in outputs]
    return client.infer(
        "simple", http_simple_inputs(in0, in1, binary_in), outputs=requested, **kwargs
    )


# -------------------------------------------------------- simple over gRPC


def grpc_simple_inputs(in0: np.ndarray, in1: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = []
    for name, arr in (("INPUT0", in0), ("INPUT1", in1)):
        inp = grpcclient.InferInput(name, list(arr.shape), "INT32")
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def grpc_simple_infer(
    client: grpcclient.InferenceServerClient,
    in0: np.ndarray,
    in1: np.ndarray,
    *,
    outputs: Optional[Sequence[str]] = ("OUTPUT0", "OUTPUT1"),
    **kwargs,
) -> grpcclient.InferResult:
    requested = None
    if outputs is not None:
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
    kwargs.setdefault("client_timeout", 60)
    return client.infer("simple", grpc_simple_inputs(in0, in1), outputs=requested, **kwargs)


def assert_simple_result(result, in0: np.ndarray, in1: np.ndarray) -> None:
    assert_exact(result.as_numpy("OUTPUT0"), in0 + in1, "OUTPUT0")
    assert_exact(result.as_numpy("OUTPUT1"), in0 - in1, "OUTPUT1")


# ----------------------------------------------------- server still healthy


def assert_still_serving(server, http_client: Optional[httpclient.InferenceServerClient] = None) -> None:
    """After an error case: a normal ``simple`` inference must still work.

    Uses the given (possibly reused, keep-alive) HTTP client when there is one,
    plus fresh HTTP and gRPC clients.
    """
    in0, in1 = simple_data(batch=2, seed=1234)
    if http_client is not None:
        assert_simple_result(
            http_simple_infer(http_client, in0, in1, binary_in=True, binary_out=True), in0, in1
        )
    with httpclient.InferenceServerClient(server.http_url, network_timeout=60) as fresh:
        assert_simple_result(http_simple_infer(fresh, in0, in1), in0, in1)
    with grpcclient.InferenceServerClient(server.grpc_url) as fresh_grpc:
        assert_simple_result(grpc_simple_infer(fresh_grpc, in0, in1), in0, in1)


# ------------------------------------------------------------ error checks

HTTP_CLIENT_DECODE_FAILURE = "an exception occurred in the client while decoding"


def expect_http_error(call: Callable[[], object], status: int, *mentions: str) -> InferenceServerException:
    """``call`` must raise InferenceServerException with HTTP ``status``.

    tritonclient's HTTP client reports ``str(status_code)`` as ``status()``
    and the body's ``"error"`` string as ``message()``; a body that is not
    ``{"error": "..."}`` JSON shows up as a client decode failure, which fails
    here too. Every string in ``mentions`` must appear in the message.
    """
    with pytest.raises(InferenceServerException) as info:
        call()
    exc = info.value
    assert exc.status() == str(status), f"status {exc.status()!r}, message {exc.message()!r}"
    msg = exc.message() or ""
    assert HTTP_CLIENT_DECODE_FAILURE not in msg, f"error body is not {{\"error\": ...}} JSON: {msg!r}"
    for text in mentions:
        assert text in msg, f"{text!r} not in error message {msg!r}"
    return exc


def expect_grpc_error(call: Callable[[], object], code: str, *mentions: str) -> InferenceServerException:
    """``call`` must raise InferenceServerException with gRPC ``code``.

    tritonclient's gRPC client reports ``str(grpc.StatusCode.X)``, i.e.
    ``"StatusCode.X"``, as ``status()`` and the status details as ``message()``.
    ``code`` is the bare name, e.g. ``"INVALID_ARGUMENT"``.
    """
    with pytest.raises(InferenceServerException) as info:
        call()
    exc = info.value
    assert exc.status() == f"StatusCode.{code}", f"status {exc.status()!r}, message {exc.message()!r}"
    msg = exc.message() or ""
    for text in mentions:
        assert text in msg, f"{text!r} not in error message {msg!r}"
    return exc
