#!/usr/bin/env python3
"""Makes the TorchScript models that the repository serves and the tests run, with Python torch.

    .venv/bin/python scripts/make-torch-models.py model_repository tests/models/pytorch

Writes ``<repository>/pytorch_mlp/1/model.pt`` and, under the tests folder, one model folder
per test model with its config.pbtxt and its model file. ``make test-build`` runs it (again
only when it or the pinned torch changed) with ``target/torch-models`` as the repository: the
example in ``model_repository/pytorch_mlp/1/model.pt`` is kept in git, so that serving it needs
no Python torch, and the tests check that a fresh trace computes the same.

Models are traced (``torch.jit.trace``) where tracing records everything they do, and
scripted (``torch.jit.script``) where it cannot: an assertion on the data, an optional input.
The weights come from closed-form formulas, not a random generator, so every run makes the
same model. The torch used must be the version the pytorch plugin's libtorch has
(``TORCH_VERSION`` in scripts/fetch-libtorch.sh); tests/python/requirements-torch.txt pins
it and the script refuses another.

tests/python/test_pytorch.py compares every output of the server with the same model file run
by this torch (``torch.jit.load``), so the tests need no copy of what the models compute.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]

# The MLP's sizes: features in, hidden units, classes out.
MLP_IN, MLP_HIDDEN, MLP_OUT = 32, 64, 10


def libtorch_version() -> str:
    """The libtorch version the plugin builds against, from scripts/fetch-libtorch.sh."""
    text = (ROOT / "scripts" / "fetch-libtorch.sh").read_text()
    found = re.search(r"^TORCH_VERSION=(\S+)$", text, re.MULTILINE)
    if not found:
        raise SystemExit("make-torch-models: no TORCH_VERSION in scripts/fetch-libtorch.sh")
    return found.group(1)


def save(module: torch.jit.ScriptModule, path: Path) -> None:
    """Saves through a temporary file (a reader never sees half a model), then checks that the
    file loads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    module.save(str(tmp))
    tmp.replace(path)
    torch.jit.load(str(path))


def write_config(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text.lstrip())


def trace(module: nn.Module, *example: Tensor) -> torch.jit.ScriptModule:
    """Traces `module` on `example`, failing on any tracer warning (a warning means the trace
    froze something that depends on the inputs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        return torch.jit.trace(module.eval(), example)


# ------------------------------------------------------------------------------ the MLP


class Mlp(nn.Module):
    """32 features -> 64 hidden (ReLU) -> 10 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(MLP_IN, MLP_HIDDEN)
        self.out = nn.Linear(MLP_HIDDEN, MLP_OUT)
        # Exact multiples of powers of two: for inputs on a 1/16 grid every partial sum is
        # exact in FP32, so the result does not depend on the summation order.
        i = torch.arange(MLP_IN)
        j = torch.arange(MLP_HIDDEN)
        k = torch.arange(MLP_OUT)
        with torch.no_grad():
            self.hidden.weight.copy_(((7 * i[None, :] + 3 * j[:, None]) % 17 - 8) / 64.0)
            self.hidden.bias.copy_((j % 5 - 2) / 16.0)
            self.out.weight.copy_(((5 * j[None, :] + 11 * k[:, None]) % 13 - 6) / 64.0)
            self.out.bias.copy_((k % 3 - 1) / 8.0)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))


def mlp(repository: Path) -> None:
    """The example MLP served from model_repository/: FP32, dynamic batch (config in git)."""
    save(trace(Mlp(), torch.zeros(2, MLP_IN)), repository / "pytorch_mlp" / "1" / "model.pt")


# ------------------------------------------------------------------------- every dtype


class IntOps(nn.Module):
    def forward(self, a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor):
        return a * 3 - 7, b + a.long(), c * 2, -d, e + 1


def int_ops(tests: Path) -> None:
    """Integer types, batched; inputs and outputs follow `<name>__<index>` and the config lists
    them out of order, so only the indices can place them."""
    folder = tests / "torch_int_ops"
    example = [
        torch.ones(2, 4, dtype=dtype)
        for dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)
    ]
    save(trace(IntOps(), *example), folder / "1" / "model.pt")
    write_config(folder, """
backend: "pytorch"
max_batch_size: 8
input [
  { name: "INPUT__3" data_type: TYPE_INT8 dims: [ 4 ] },
  { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "INPUT__4" data_type: TYPE_UINT8 dims: [ 4 ] },
  { name: "INPUT__1" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "INPUT__2" data_type: TYPE_INT16 dims: [ 4 ] }
]
output [
  { name: "OUTPUT__4" data_type: TYPE_UINT8 dims: [ 4 ] },
  { name: "OUTPUT__2" data_type: TYPE_INT16 dims: [ 4 ] },
  { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "OUTPUT__3" data_type: TYPE_INT8 dims: [ 4 ] },
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 4 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
""")


class FloatOps(nn.Module):
    def forward(self, h: Tensor, bf: Tensor, d: Tensor):
        return h * 2.0 + 0.5, bf * 0.5 - 1.0, d * d - d / 3.0, h.float() * bf.float()


def float_ops(tests: Path) -> None:
    """FP16, BF16 and FP64 in, those and FP32 out; batched, variable length."""
    folder = tests / "torch_float_ops"
    example = [torch.ones(2, 3, dtype=t) for t in (torch.float16, torch.bfloat16, torch.float64)]
    save(trace(FloatOps(), *example), folder / "1" / "model.pt")
    write_config(folder, """
platform: "pytorch_libtorch"
max_batch_size: 16
input [
  { name: "HALF__0" data_type: TYPE_FP16 dims: [ -1 ] },
  { name: "BRAIN__1" data_type: TYPE_BF16 dims: [ -1 ] },
  { name: "DOUBLE__2" data_type: TYPE_FP64 dims: [ -1 ] }
]
output [
  { name: "HALF_OUT__0" data_type: TYPE_FP16 dims: [ -1 ] },
  { name: "BRAIN_OUT__1" data_type: TYPE_BF16 dims: [ -1 ] },
  { name: "DOUBLE_OUT__2" data_type: TYPE_FP64 dims: [ -1 ] },
  { name: "PRODUCT__3" data_type: TYPE_FP32 dims: [ -1 ] }
]
""")


class BoolOps(nn.Module):
    def forward(self, a: Tensor, b: Tensor, x: Tensor):
        return torch.logical_and(a, b), torch.logical_or(a, x > 0.0), x * a.float()


def bool_ops(tests: Path) -> None:
    """BOOL in and out, no batching; plain names, placed by their order in the config."""
    folder = tests / "torch_bool_ops"
    example = (
        torch.tensor([[True, False, True], [False, True, False]]),
        torch.tensor([[True, True, False], [False, False, True]]),
        torch.tensor([[1.0, -1.0, 0.0], [-2.0, 2.0, 0.5]]),
    )
    save(trace(BoolOps(), *example), folder / "1" / "model.pt")
    write_config(folder, """
backend: "pytorch"
max_batch_size: 0
input [
  { name: "a" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "b" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] }
]
output [
  { name: "both" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "a_or_positive" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "x_where_a" data_type: TYPE_FP32 dims: [ 2, 3 ] }
]
""")


# --------------------------------------------------------- model shapes and conventions


class Single(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        assert not bool(torch.any(torch.isnan(x))), "the input holds NaN"
        return torch.tanh(x) * 2.0


def single(tests: Path) -> None:
    """One tensor out (not a tuple), from a file with another name; refuses NaN with an
    assertion that fails inside TorchScript. Scripted: a trace would drop the assertion."""
    folder = tests / "torch_single"
    save(torch.jit.script(Single().eval()), folder / "1" / "net.pt")
    write_config(folder, """
backend: "pytorch"
default_model_filename: "net.pt"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
""")


class WithOptional(nn.Module):
    def forward(self, x: Tensor, y: Optional[Tensor]) -> List[Tensor]:
        if y is None:
            return [x + 1.0, x * 2.0]
        return [x + y, x * 2.0]


def optional(tests: Path) -> None:
    """An optional second input (passed as None when left out), and a list returned.
    Scripted: a trace cannot take None nor keep the branch."""
    folder = tests / "torch_optional"
    save(torch.jit.script(WithOptional().eval()), folder / "1" / "model.pt")
    write_config(folder, """
backend: "pytorch"
max_batch_size: 8
input [
  { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 3 ] optional: true }
]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 3 ] }
]
""")


class Accumulator(nn.Module):
    def forward(self, x: Tensor, start: Tensor, end: Tensor, ready: Tensor, corrid: Tensor,
                state: Tensor):
        total = state + x * ready
        return total, total.clone(), corrid


def accumulator(tests: Path) -> None:
    """The sequence batcher's running sum, as tests/models/onnx/accumulator: the server fills
    the control inputs and keeps the state (STATE__5 in, STATE_OUT__1 out); the backend sees
    them as ordinary inputs and outputs."""
    folder = tests / "torch_accumulator"
    ints = torch.ones(2, 1, dtype=torch.int32)
    example = [ints, ints, ints, ints, torch.ones(2, 1, dtype=torch.int64), ints]
    save(trace(Accumulator(), *example), folder / "1" / "model.pt")
    write_config(folder, """
backend: "pytorch"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "CORRID_OUT__2" data_type: TYPE_INT64 dims: [ 1 ] }
]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START__1" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END__2" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY__3" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID__4" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 } ] }
  ]
  state [ { input_name: "STATE__5" output_name: "STATE_OUT__1" data_type: TYPE_INT32 dims: [ 1 ] } ]
  direct { }
}
instance_group [ { count: 2 kind: KIND_CPU } ]
""")


def main() -> int:
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} <model repository> <tests model folder>", file=sys.stderr)
        return 2
    expected = libtorch_version()
    if torch.__version__.split("+")[0] != expected:
        print(
            f"make-torch-models: torch {torch.__version__} is not the plugin's libtorch "
            f"{expected}; run scripts/setup-python.sh",
            file=sys.stderr,
        )
        return 1
    repository, tests = Path(sys.argv[1]), Path(sys.argv[2])
    mlp(repository)
    int_ops(tests)
    float_ops(tests)
    bool_ops(tests)
    single(tests)
    optional(tests)
    accumulator(tests)
    print(f"make-torch-models: wrote pytorch_mlp to {repository} and the test models to {tests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
