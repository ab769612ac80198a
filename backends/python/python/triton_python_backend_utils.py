"""triton_python_backend_utils for Ferrum's python backend.

Models import this module as ``pb_utils``, as they do under Triton. It offers the API of
Triton's Python backend that models use (tensors, requests, responses, errors, response
senders for decoupled models, logging, the auto-complete config) on top of ``_ferrum_python``,
the plugin's native module, which hands over the server's requests and writes the responses
straight into the server's buffers.

Input tensors reach numpy without a copy: ``as_numpy()`` of an input is a read-only view of
the server's buffer. Copy it (``numpy.array(x)``) to change it in place or to keep it after
the request has been answered.
"""

import inspect
import json
import os
import sys
import threading
import traceback

import numpy as np

import _ferrum_python as _native

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "Logger",
    "LogLevel",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
    "serialize_byte_tensor",
    "deserialize_bytes_tensor",
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# Data type codes, as in Triton's model_config.proto (TYPE_BOOL = 1 ... TYPE_BF16 = 14).
_BOOL, _UINT8, _UINT16, _UINT32, _UINT64 = 1, 2, 3, 4, 5
_INT8, _INT16, _INT32, _INT64 = 6, 7, 8, 9
_FP16, _FP32, _FP64, _BYTES, _BF16 = 10, 11, 12, 13, 14

# Code -> numpy type. BF16 has no numpy type: its elements appear as their uint16 bits.
_CODE_TO_NUMPY = {
    _BOOL: np.bool_,
    _UINT8: np.uint8,
    _UINT16: np.uint16,
    _UINT32: np.uint32,
    _UINT64: np.uint64,
    _INT8: np.int8,
    _INT16: np.int16,
    _INT32: np.int32,
    _INT64: np.int64,
    _FP16: np.float16,
    _FP32: np.float32,
    _FP64: np.float64,
    _BYTES: np.object_,
    _BF16: np.uint16,
}

# numpy dtype -> code, for fixed-size types.
_NUMPY_TO_CODE = {
    np.dtype(t): code for code, t in _CODE_TO_NUMPY.items() if code not in (_BYTES, _BF16)
}

_CONFIG_TYPE_TO_NUMPY = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
    "TYPE_BF16": np.uint16,
}


def triton_to_numpy_type(data_type):
    """The numpy type of a Triton data type code (``TYPE_FP32`` is 11), or None."""
    return _CODE_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type):
    """The Triton data type code of a numpy type, or None."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in "OSU":
        return _BYTES
    return _NUMPY_TO_CODE.get(dtype.newbyteorder("="))


def triton_string_to_numpy(triton_type_string):
    """The numpy type of a config data type name (``"TYPE_FP32"`` -> ``numpy.float32``)."""
    return _CONFIG_TYPE_TO_NUMPY[triton_type_string]


def serialize_byte_tensor(input_tensor):
    """Encodes a BYTES tensor (numpy object or bytes array) as its wire form: each element
    a 4-byte little-endian length, then its bytes. Returns a uint8 array, or None for an empty
    or non-bytes tensor."""
    if input_tensor.size == 0 or input_tensor.dtype.kind not in "OSU":
        return None
    parts = []
    for item in _byte_items(input_tensor):
        parts.append(len(item).to_bytes(4, "little"))
        parts.append(item)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor):
    """Decodes the wire form of a BYTES tensor into a 1-D numpy object array of bytes."""
    data = bytes(encoded_tensor)
    items, at = [], 0
    while at < len(data):
        if at + 4 > len(data):
            raise TritonModelException("BYTES tensor is cut off inside a length prefix")
        length = int.from_bytes(data[at : at + 4], "little")
        at += 4
        if at + length > len(data):
            raise TritonModelException("BYTES tensor element runs past the end")
        items.append(data[at : at + length])
        at += length
    return _object_array(items, (len(items),))


def _object_array(items, shape):
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def _to_bytes(item):
    if type(item) is bytes:
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    return str(item).encode("utf-8")


def _byte_items(array):
    return [_to_bytes(x) for x in array.reshape(-1).tolist()]


class TritonError:
    """An error a model returns in a response (``InferenceResponse(error=...)``): a message
    and a code, which the client sees as the matching HTTP/gRPC status."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message, code=INTERNAL):
        self._message = message
        self._code = code

    def message(self):
        """The error's message."""
        return self._message

    def code(self):
        """The error's code (``TritonError.INTERNAL`` ...)."""
        return self._code

    def __str__(self):
        return "" if self._message is None else str(self._message)

    def __repr__(self):
        return f"TritonError({self._message!r}, code={self._code})"


class TritonModelException(Exception):
    """The exception the backend raises for a misuse of this API; models may raise it too."""

    def __init__(self, message):
        super().__init__(message)
        self._message = message

    def message(self):
        """The exception's message."""
        return self._message

    def __str__(self):
        return "" if self._message is None else str(self._message)


class Tensor:
    """A named tensor: an input of a request, or an output of a response. Holds a numpy
    array; BYTES tensors are numpy object arrays of ``bytes``."""

    __slots__ = ("_name", "_array", "_code")

    def __init__(self, name, numpy_array, triton_dtype=None):
        if not isinstance(numpy_array, np.ndarray):
            raise TritonModelException(
                f"tensor '{name}' needs a numpy.ndarray, got {type(numpy_array).__name__}"
            )
        if triton_dtype is not None:
            code = triton_dtype
        else:
            code = numpy_to_triton_type(numpy_array.dtype)
            if code is None:
                raise TritonModelException(
                    f"tensor '{name}' has numpy type {numpy_array.dtype}, which has no Triton "
                    "data type; use numpy.object_ for strings and bytes"
                )
        self._name = name
        self._array = numpy_array
        self._code = code

    @classmethod
    def _from_server(cls, name, code, shape, data):
        self = cls.__new__(cls)
        self._name = name
        self._code = code
        if code == _BYTES:
            self._array = _object_array(data, shape)
        elif len(data) == 0:
            self._array = np.empty(shape, dtype=_CODE_TO_NUMPY[code])
        else:
            self._array = np.frombuffer(data, dtype=_CODE_TO_NUMPY[code]).reshape(shape)
        return self

    def name(self):
        """The tensor's name."""
        return self._name

    def as_numpy(self):
        """The tensor as a numpy array (an input's is read-only)."""
        return self._array

    def shape(self):
        """The tensor's shape, as a list."""
        return list(self._array.shape)

    def triton_dtype(self):
        """The tensor's Triton data type code."""
        return self._code

    def is_cpu(self):
        """Whether the tensor is in CPU memory (always, in this backend)."""
        return True

    def to_dlpack(self):
        """The tensor as a DLPack capsule (for ``torch.from_dlpack`` and the like)."""
        return self._exportable().__dlpack__()

    def __dlpack__(self, *args, **kwargs):
        return self._exportable().__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return (1, 0)

    def _exportable(self):
        if self._code == _BYTES:
            raise TritonModelException(f"BYTES tensor '{self._name}' cannot go through DLPack")
        # DLPack's legacy capsule cannot mark data read-only: export a copy of an input.
        if not self._array.flags.writeable:
            return np.array(self._array)
        return self._array

    @staticmethod
    def from_dlpack(name, dlpack):
        """A tensor from a DLPack capsule or an object with ``__dlpack__`` (CPU memory)."""
        source = dlpack if hasattr(dlpack, "__dlpack__") else _Capsule(dlpack)
        return Tensor(name, np.from_dlpack(source))

    def __repr__(self):
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class _Capsule:
    """Lets numpy take a bare DLPack capsule, which it only accepts behind ``__dlpack__``."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, *args, **kwargs):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)


class InferenceResponse:
    """One response: its output tensors, or an error."""

    def __init__(self, output_tensors=None, error=None, parameters=None):
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException('"output_tensors" must be a list.')
        if error is not None and not isinstance(error, TritonError):
            error = TritonError(str(error))
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._output_tensors = list(output_tensors)
        self._error = error
        self._parameters = dict(parameters or {})

    def output_tensors(self):
        """The output tensors."""
        return self._output_tensors

    def has_error(self):
        """Whether the response carries an error."""
        return self._error is not None

    def error(self):
        """The response's TritonError, or None."""
        return self._error

    def parameters(self):
        """The response's parameters as JSON text."""
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Sends the responses of one request of a decoupled model, any number of them, then the
    final flag."""

    __slots__ = ("_handle",)

    def __init__(self, handle):
        self._handle = handle

    def send(self, response=None, flags=0):
        """Sends a response (or, with ``response=None``, only the flags);
        ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL`` ends the request."""
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                "send() takes a pb_utils.InferenceResponse, got " + type(response).__name__
            )
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is None and not final:
            return
        try:
            _send(self._handle, response, final)
        except RuntimeError as e:
            raise TritonModelException(str(e)) from None

    def is_cancelled(self):
        """Whether the client cancelled the request (or went away)."""
        return self._handle.is_cancelled()


class InferenceRequest:
    """An inference request: a request the server hands to ``execute``."""

    def __init__(
        self,
        model_name=None,
        requested_output_names=None,
        inputs=None,
        request_id="",
        correlation_id=0,
        flags=0,
        timeout=0,
        parameters=None,
        model_version=-1,
        **kwargs,
    ):
        if model_name is not None and not isinstance(model_name, str):
            raise TritonModelException('"model_name" must be a str')
        for tensor in inputs or []:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    '"inputs" must hold pb_utils.Tensor objects, got ' + type(tensor).__name__
                )
        self._handle = None
        self._model_name = model_name
        self._model_version = int(model_version)
        self._inputs = list(inputs or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._requested = list(requested_output_names or [])
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})
        self._sender = None

    @classmethod
    def _from_server(cls, handle):
        self = cls.__new__(cls)
        self._handle = handle
        self._model_name = None
        self._inputs = [Tensor._from_server(*t) for t in handle.inputs()]
        self._sender = None
        return self

    def inputs(self):
        """The input tensors."""
        return self._inputs

    def request_id(self):
        """The client's request id ("" for none)."""
        return self._handle.id() if self._handle is not None else self._request_id

    def correlation_id(self):
        """The sequence correlation id (0 for none; a str for string ids)."""
        if self._handle is not None:
            return self._handle.correlation_id()
        return self._correlation_id

    def flags(self):
        """Sequence flags (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END)."""
        return self._handle.flags() if self._handle is not None else self._flags

    def timeout(self):
        """The request's timeout in microseconds (0 for none)."""
        return self._handle.timeout() if self._handle is not None else self._timeout

    def requested_output_names(self):
        """Names of the outputs the client asked for (empty: all)."""
        if self._handle is not None:
            return self._handle.requested_outputs()
        return self._requested

    def parameters(self):
        """The request's parameters as JSON text (``json.loads`` it)."""
        if self._handle is not None:
            return self._handle.parameters()
        return json.dumps(self._parameters)

    def model_name(self):
        """The model a request built by the model is for."""
        return self._model_name

    def is_cancelled(self):
        """Whether the client cancelled the request (or went away)."""
        return self._handle is not None and self._handle.is_cancelled()

    def get_response_sender(self):
        """The request's response sender (for decoupled models)."""
        if self._handle is None:
            raise TritonModelException("only a request the server sent has a response sender")
        if self._sender is None:
            self._sender = InferenceResponseSender(self._handle)
        return self._sender

    def set_release_flags(self, flags):
        """Request rescheduling is not supported by this backend."""
        raise TritonModelException("request rescheduling (set_release_flags) is not supported")

    def _start(self):
        """Starts this request on its model through the server (BLS)."""
        if self._handle is not None:
            raise TritonModelException("a request the server sent cannot be executed again")
        if not self._model_name:
            raise TritonModelException("InferenceRequest needs a model_name to be executed")
        parameters = dict(self._parameters)
        if self._correlation_id:
            parameters["sequence_id"] = self._correlation_id
        if self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
            parameters["sequence_start"] = True
        if self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
            parameters["sequence_end"] = True
        if self._timeout:
            parameters["timeout"] = int(self._timeout)
        inputs = [_wire(t) for t in self._inputs]
        return _native.host_start(
            self._model_name,
            self._model_version,
            inputs,
            [str(n) for n in self._requested],
            list(parameters.items()),
        )

    def _begin(self, decoupled):
        """Starts the call: (call, None), or (None, what exec returns for a call that could
        not start: an error response, or an iterator over it when decoupled)."""
        try:
            return self._start(), None
        except RuntimeError as e:
            failed = _error_response(e)
            return None, (iter([failed]) if decoupled else failed)

    def exec(self, decoupled=False):
        """Runs this request on its model and waits (BLS). Returns the model's
        InferenceResponse (with ``has_error()`` when it failed); with ``decoupled=True`` an
        iterator over every response the model sends, as they arrive."""
        call, failed = self._begin(decoupled)
        if call is None:
            return failed
        if decoupled:
            return _ResponseIterator(call)
        return _single(_ResponseIterator(call), self._model_name)

    async def async_exec(self, decoupled=False):
        """Like ``exec``, awaitable: start several and await them together
        (``asyncio.gather``), and they run at the same time."""
        import asyncio

        call, failed = self._begin(decoupled)
        if call is None:
            return failed
        if decoupled:
            return _ResponseIterator(call)
        loop = asyncio.get_running_loop()
        responses = await loop.run_in_executor(None, list, _ResponseIterator(call))
        return _single(iter(responses), self._model_name)


def _error_response(exc):
    """An InferenceResponse carrying the error a BLS call raised."""
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int):
        return InferenceResponse(error=TritonError(args[1], args[0]))
    return InferenceResponse(error=TritonError(str(exc)))


def _single(responses, model_name):
    """The one response of a non-decoupled BLS call."""
    responses = list(responses)
    if len(responses) == 1:
        return responses[0]
    if not responses:
        return InferenceResponse(
            error=TritonError(f"model '{model_name}' sent no response", TritonError.INTERNAL)
        )
    return InferenceResponse(
        error=TritonError(
            f"model '{model_name}' sent {len(responses)} responses to one request; call "
            "exec(decoupled=True) for a decoupled model",
            TritonError.UNSUPPORTED,
        )
    )


class _ResponseIterator:
    """The responses of a BLS call, each as it arrives; stopping early cancels the call."""

    __slots__ = ("_call",)

    def __init__(self, call):
        self._call = call

    def __iter__(self):
        return self

    def __next__(self):
        if self._call is None:
            raise StopIteration
        item = self._call.next()
        if item is None:
            self._call = None
            raise StopIteration
        outputs, error, parameters = item
        if error is not None:
            return InferenceResponse(error=TritonError(error[1], error[0]))
        tensors = [Tensor._from_server(*t) for t in outputs]
        return InferenceResponse(tensors, parameters=dict(parameters or []))

    def cancel(self):
        """Stops the call; the model sees the cancellation."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def __del__(self):
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()


def get_input_tensor_by_name(inference_request, name):
    """The input tensor with this name, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response, name):
    """The output tensor with this name, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config, name):
    """The config of the input with this name (a dict), or None."""
    for entry in model_config.get("input", []) or []:
        if entry.get("name") == name:
            return entry
    return None


def get_output_config_by_name(model_config, name):
    """The config of the output with this name (a dict), or None."""
    for entry in model_config.get("output", []) or []:
        if entry.get("name") == name:
            return entry
    return None


def using_decoupled_model_transaction_policy(model_config):
    """Whether a model config (a dict) makes the model decoupled."""
    policy = model_config.get("model_transaction_policy") or {}
    return bool(policy.get("decoupled", False))


class LogLevel:
    """Severity of a log line."""

    ERROR = 0
    WARNING = 1
    INFO = 2
    VERBOSE = 3


class Logger:
    """Writes to the server's log."""

    @staticmethod
    def log(message, level=LogLevel.INFO):
        """Logs a message at a level (LogLevel.INFO by default)."""
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        where = ""
        if frame is not None:
            where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}: "
        _native.log(int(level), where + str(message))

    @staticmethod
    def log_info(message):
        """Logs at INFO."""
        Logger.log(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message):
        """Logs at WARNING."""
        Logger.log(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message):
        """Logs at ERROR."""
        Logger.log(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message):
        """Logs at VERBOSE (shown with --log-verbose)."""
        Logger.log(message, LogLevel.VERBOSE)


class ModelConfig:
    """The model config that ``auto_complete_config`` receives and completes: inputs,
    outputs, max_batch_size, dynamic batching and the transaction policy may be set."""

    def __init__(self, model_config):
        if isinstance(model_config, str):
            model_config = json.loads(model_config)
        self._model_config = model_config
        model_config.setdefault("input", [])
        model_config.setdefault("output", [])
        model_config.setdefault("max_batch_size", 0)

    def _name(self):
        return str(self._model_config.get("name", ""))

    def as_dict(self):
        """The config as a dict."""
        return self._model_config

    def set_max_batch_size(self, max_batch_size):
        """Sets max_batch_size; the config's own non-zero value may not be larger."""
        current = self._model_config.get("max_batch_size") or 0
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self):
        """Turns dynamic batching on, unless the config chose another scheduler."""
        for other in ("sequence_batching", "ensemble_scheduling"):
            if self._model_config.get(other):
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{other}', but "
                    f"auto-complete-config function for model '{self._name()}' tries to set "
                    "scheduling_choice as 'dynamic_batching'"
                )
        if not self._model_config.get("dynamic_batching"):
            self._model_config["dynamic_batching"] = {}

    def _add_tensor(self, section, tensor, allowed):
        kind = section
        if not isinstance(tensor, dict):
            raise ValueError(f"{kind} in auto-complete-config function must be a dict")
        label = tensor.get("name", "")
        for key in tensor:
            if key not in allowed:
                raise ValueError(
                    f"{kind} '{label}' in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than {', '.join(allowed)}."
                )
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"{kind} '{label}' in auto-complete-config function for model "
                    f"'{self._name()}' is missing '{key}' property."
                )
        entries = self._model_config.setdefault(section, [])
        for entry in entries:
            if entry.get("name") != tensor["name"]:
                continue
            have = entry.get("data_type", "TYPE_INVALID")
            if have not in ("TYPE_INVALID", "", None) and have != tensor["data_type"]:
                raise ValueError(
                    f"unable to load model '{self._name()}', configuration expects datatype "
                    f"{have} for {kind} '{label}', model provides {tensor['data_type']}"
                )
            dims = list(entry.get("dims") or [])
            if dims and dims != list(tensor["dims"]):
                raise ValueError(
                    f"model '{self._name()}', tensor '{label}': the model expects dims "
                    f"{list(tensor['dims'])} but the model configuration specifies dims {dims}"
                )
            if "optional" in tensor and "optional" in entry and entry["optional"] != tensor["optional"]:
                raise ValueError(
                    f"model '{self._name()}', tensor '{label}': the model expects optional "
                    f"{tensor['optional']} but the model configuration specifies optional "
                    f"{entry['optional']}"
                )
            entry["data_type"] = tensor["data_type"]
            entry["dims"] = list(tensor["dims"])
            if "optional" in tensor:
                entry["optional"] = tensor["optional"]
            return
        added = dict(tensor)
        added["dims"] = list(tensor["dims"])
        entries.append(added)

    def add_input(self, input):
        """Adds an input (name, data_type, dims, optional), or checks and completes the
        config's input of that name."""
        self._add_tensor("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output):
        """Adds an output (name, data_type, dims), or checks and completes the config's
        output of that name."""
        self._add_tensor("output", output, ("name", "data_type", "dims"))

    def set_model_transaction_policy(self, transaction_policy_dict):
        """Sets the transaction policy (``{"decoupled": True}``)."""
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    "model transaction property in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than 'decoupled'."
                )
        policy = self._model_config.get("model_transaction_policy") or {}
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            # A config that names no policy carries the default (false) here; only an
            # explicit true cannot be changed.
            if policy.get("decoupled") and not wanted:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model "
                    f"'{self._name()}', which is already set to 'True'."
                )
            policy["decoupled"] = wanted
        self._model_config["model_transaction_policy"] = policy


# ---------------------------------------------------------------------------------------
# Called by the plugin.
# ---------------------------------------------------------------------------------------


def _ferrum_load_module(path, name):
    """Executes a model file as a new module called ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _ferrum_auto_complete(model_class, config_json):
    """Runs the model class's ``auto_complete_config`` and returns the completed config as
    JSON text."""
    config = ModelConfig(config_json)
    returned = model_class.auto_complete_config(config)
    if isinstance(returned, ModelConfig):
        config = returned
    return json.dumps(config.as_dict())


def _describe(exc):
    lines = traceback.format_exception_only(type(exc), exc)
    text = [line.strip() for line in "".join(lines).splitlines() if line.strip()]
    return text[-1] if text else type(exc).__name__


def _wire(tensor):
    """An output tensor as the plugin takes it: (name, code, shape, payload)."""
    if not isinstance(tensor, Tensor):
        raise TritonModelException(
            "output_tensors must hold pb_utils.Tensor objects, got " + type(tensor).__name__
        )
    array = tensor._array
    code = tensor._code
    if code == _BYTES:
        return (tensor._name, code, array.shape, _byte_items(array))
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    data = np.ascontiguousarray(array)
    return (tensor._name, code, array.shape, memoryview(data.reshape(-1)).cast("B"))


def _send(handle, response, final):
    """Sends one response (or only the flags when ``response`` is None) for a request."""
    if response is None:
        handle.send(None, None, None, final)
        return
    error = response.error()
    if error is not None:
        code = error.code() if isinstance(error.code(), int) else TritonError.INTERNAL
        handle.send(None, (code, str(error.message())), None, final)
        return
    outputs = [_wire(t) for t in response.output_tensors()]
    parameters = list(response._parameters.items()) or None
    handle.send(outputs, None, parameters, final)


_LOOPS = threading.local()


def _event_loop():
    """This thread's event loop, for models whose ``execute`` is ``async def``."""
    import asyncio

    loop = getattr(_LOOPS, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _LOOPS.loop = loop
    return loop


def _ferrum_execute(model, handles, decoupled, instance_name):
    """Runs one batch: builds the requests, calls ``model.execute``, and sends what it
    returned. An exception fails every request of the batch still open with its message."""
    requests = [InferenceRequest._from_server(h) for h in handles]
    try:
        returned = model.execute(requests)
        if inspect.iscoroutine(returned):
            returned = _event_loop().run_until_complete(returned)
    except BaseException as exc:
        message = (
            f"Failed to process the request(s) for model instance '{instance_name}', "
            f"message: {_describe(exc)}"
        )
        _native.log(
            LogLevel.ERROR,
            message + "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        for handle in handles:
            handle.fail(TritonError.INTERNAL, message)
        return
    if decoupled:
        if returned is not None:
            message = (
                f"model instance '{instance_name}' is decoupled: its execute must return None "
                "and send responses through each request's response sender"
            )
            _native.log(LogLevel.ERROR, message)
            for handle in handles:
                handle.fail(TritonError.INTERNAL, message)
        return
    if returned is None:
        # The model answered through the response senders (or will).
        return
    try:
        responses = list(returned)
    except TypeError:
        responses = None
    if responses is None or len(responses) != len(handles):
        got = "not a list" if responses is None else f"{len(responses)} responses"
        message = (
            f"model instance '{instance_name}' returned {got} for {len(handles)} requests; "
            "execute must return one pb_utils.InferenceResponse per request"
        )
        for handle in handles:
            handle.fail(TritonError.INTERNAL, message)
        return
    for handle, response in zip(handles, responses):
        if handle.closed():
            continue
        if not isinstance(response, InferenceResponse):
            handle.fail(
                TritonError.INTERNAL,
                f"model instance '{instance_name}' returned {type(response).__name__} "
                "where a pb_utils.InferenceResponse was expected",
            )
            continue
        try:
            _send(handle, response, True)
        except BaseException as exc:
            handle.fail(
                TritonError.INTERNAL,
                f"model instance '{instance_name}' returned a response that cannot be sent: "
                f"{_describe(exc)}",
            )
