#!/usr/bin/env python3
"""Writes the OpenVINO example models of model_repository/.

* ``openvino_mlp``: a small FP32 multi-layer perceptron, dynamic batch, as OpenVINO IR
  (``model.xml`` + ``model.bin``) with a full ``config.pbtxt``.
* ``openvino_mlp_onnx``: the very same network as ONNX (``model.onnx``), served by the
  ``openvino`` backend; its ``config.pbtxt`` names only the backend, the rest is
  auto-completed from the model file.

The network: ``OUTPUT0 = relu(INPUT0 @ W1 + B1) @ W2 + B2``, INPUT0 ``[batch, 16]``,
OUTPUT0 ``[batch, 8]``; weights drawn from ``numpy.random.default_rng(SEED)``, so every run
writes the same bytes. The IR is converted from the ONNX file by OpenVINO itself, with FP32
weights kept as they are (no FP16 compression).

Usage: ``.venv/bin/python scripts/make-openvino-models.py [--repository model_repository]``
(``scripts/setup-python.sh`` installs onnx and openvino into .venv).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]

# Shared seed for the example MLP weights, so the same network can be built elsewhere.
SEED = 20261124
INPUT_SIZE = 16
HIDDEN_SIZE = 32
OUTPUT_SIZE = 8
# ONNX opset and IR version written into the file (ONNX Runtime 1.31 and OpenVINO 2026.4
# read both).
OPSET = 17
IR_VERSION = 8

MLP_CONFIG = """\
# A small FP32 MLP (scripts/make-openvino-models.py writes this folder):
# OUTPUT0 = relu(INPUT0 @ W1 + B1) @ W2 + B2, as OpenVINO IR.
name: "openvino_mlp"
backend: "openvino"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 8 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters [
  { key: "PERFORMANCE_HINT" value: { string_value: "LATENCY" } },
  { key: "NUM_STREAMS" value: { string_value: "1" } }
]
"""

MLP_ONNX_CONFIG = """\
# The same MLP as openvino_mlp, as ONNX, run by the OpenVINO backend
# (scripts/make-openvino-models.py writes this folder). Inputs, outputs and
# max_batch_size are auto-completed from model.onnx.
backend: "openvino"
"""


def mlp_weights() -> dict[str, np.ndarray]:
    """The MLP's weights, drawn from SEED (scaled so activations stay near 1)."""
    rng = np.random.default_rng(SEED)
    return {
        "W1": (rng.standard_normal((INPUT_SIZE, HIDDEN_SIZE)) / np.sqrt(INPUT_SIZE)).astype(np.float32),
        "B1": (rng.standard_normal(HIDDEN_SIZE) * 0.1).astype(np.float32),
        "W2": (rng.standard_normal((HIDDEN_SIZE, OUTPUT_SIZE)) / np.sqrt(HIDDEN_SIZE)).astype(np.float32),
        "B2": (rng.standard_normal(OUTPUT_SIZE) * 0.1).astype(np.float32),
    }


def mlp_onnx() -> onnx.ModelProto:
    """The MLP as an ONNX model with a dynamic batch dimension."""
    weights = mlp_weights()
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "B1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "B2"], ["OUTPUT0"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        inputs=[helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", INPUT_SIZE])],
        outputs=[helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", OUTPUT_SIZE])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph,
        producer_name="ferrum-make-openvino-models",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_ir(onnx_path: Path, version_dir: Path) -> None:
    """Converts an ONNX file to OpenVINO IR (model.xml + model.bin) in version_dir."""
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        for name in ("model.xml", "model.bin"):
            shutil.copyfile(Path(tmp) / name, version_dir / name)


def write_models(repository: Path) -> list[Path]:
    """Writes both example models into repository; returns the files written."""
    model = mlp_onnx()
    written = []

    onnx_dir = repository / "openvino_mlp_onnx"
    (onnx_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx_path = onnx_dir / "1" / "model.onnx"
    onnx.save_model(model, str(onnx_path))
    (onnx_dir / "config.pbtxt").write_text(MLP_ONNX_CONFIG)
    written += [onnx_path, onnx_dir / "config.pbtxt"]

    ir_dir = repository / "openvino_mlp"
    (ir_dir / "1").mkdir(parents=True, exist_ok=True)
    write_ir(onnx_path, ir_dir / "1")
    (ir_dir / "config.pbtxt").write_text(MLP_CONFIG)
    written += [ir_dir / "1" / "model.xml", ir_dir / "1" / "model.bin", ir_dir / "config.pbtxt"]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository",
        type=Path,
        default=ROOT / "model_repository",
        help="model repository to write into (default: %(default)s)",
    )
    args = parser.parse_args()
    for path in write_models(args.repository):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
