//! Plain data that crosses the plugin boundary: data types, memory kinds, buffers, tensor
//! descriptions, parameters and errors. Every type here is `#[repr(C)]`, checked by
//! abi_stable, and frozen once released: the ABI grows by new methods on the handles in
//! `ffi`, never by new fields here. Kinds are open `u32` sets, so a new kind is not a break.

use abi_stable::StableAbi;
use abi_stable::std_types::{RSlice, RStr, RString};

/// A tensor element type, as Triton names them (`BOOL`, `INT32`, `FP32`, `BYTES`, ...).
///
/// A newtype over `u32` rather than an enum, so that a later type can be added without
/// changing the layout that older plugins were built against.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DataType(pub u32);

impl DataType {
    /// No valid type: used for "unknown".
    pub const INVALID: DataType = DataType(0);
    /// Boolean, one byte per element (0 or 1).
    pub const BOOL: DataType = DataType(1);
    /// Unsigned 8-bit integer.
    pub const UINT8: DataType = DataType(2);
    /// Unsigned 16-bit integer.
    pub const UINT16: DataType = DataType(3);
    /// Unsigned 32-bit integer.
    pub const UINT32: DataType = DataType(4);
    /// Unsigned 64-bit integer.
    pub const UINT64: DataType = DataType(5);
    /// Signed 8-bit integer.
    pub const INT8: DataType = DataType(6);
    /// Signed 16-bit integer.
    pub const INT16: DataType = DataType(7);
    /// Signed 32-bit integer.
    pub const INT32: DataType = DataType(8);
    /// Signed 64-bit integer.
    pub const INT64: DataType = DataType(9);
    /// IEEE half precision float.
    pub const FP16: DataType = DataType(10);
    /// IEEE single precision float.
    pub const FP32: DataType = DataType(11);
    /// IEEE double precision float.
    pub const FP64: DataType = DataType(12);
    /// Variable-length byte strings, each element a 4-byte little-endian length then its bytes.
    pub const BYTES: DataType = DataType(13);
    /// bfloat16.
    pub const BF16: DataType = DataType(14);

    /// Every valid data type, in Triton's order.
    pub const ALL: [DataType; 14] = [
        Self::BOOL,
        Self::UINT8,
        Self::UINT16,
        Self::UINT32,
        Self::UINT64,
        Self::INT8,
        Self::INT16,
        Self::INT32,
        Self::INT64,
        Self::FP16,
        Self::FP32,
        Self::FP64,
        Self::BYTES,
        Self::BF16,
    ];

    /// Size of one element in bytes, or `None` for `BYTES` (variable) and invalid types.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Self::BOOL | Self::UINT8 | Self::INT8 => 1,
            Self::UINT16 | Self::INT16 | Self::FP16 | Self::BF16 => 2,
            Self::UINT32 | Self::INT32 | Self::FP32 => 4,
            Self::UINT64 | Self::INT64 | Self::FP64 => 8,
            _ => return None,
        })
    }

    /// The protocol name (`"INT32"`), or `None` for an unknown value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::BOOL => "BOOL",
            Self::UINT8 => "UINT8",
            Self::UINT16 => "UINT16",
            Self::UINT32 => "UINT32",
            Self::UINT64 => "UINT64",
            Self::INT8 => "INT8",
            Self::INT16 => "INT16",
            Self::INT32 => "INT32",
            Self::INT64 => "INT64",
            Self::FP16 => "FP16",
            Self::FP32 => "FP32",
            Self::FP64 => "FP64",
            Self::BYTES => "BYTES",
            Self::BF16 => "BF16",
            _ => return None,
        })
    }

    /// Parses a protocol name (`"INT32"`).
    pub fn from_name(name: &str) -> Option<DataType> {
        Self::ALL.into_iter().find(|dt| dt.name() == Some(name))
    }

    /// Parses a model-config name (`"TYPE_INT32"`; `"TYPE_STRING"` is `BYTES`).
    pub fn from_config_name(name: &str) -> Option<DataType> {
        match name.strip_prefix("TYPE_")? {
            "STRING" => Some(Self::BYTES),
            rest => Self::from_name(rest),
        }
    }

    /// The model-config name (`"TYPE_INT32"`; `BYTES` is `"TYPE_STRING"`).
    pub fn config_name(self) -> Option<String> {
        match self {
            Self::BYTES => Some("TYPE_STRING".to_string()),
            other => other.name().map(|n| format!("TYPE_{n}")),
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "<unknown type {}>", self.0),
        }
    }
}

/// Where a buffer's bytes live.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemoryKind(pub u32);

impl MemoryKind {
    /// Ordinary host memory.
    pub const CPU: MemoryKind = MemoryKind(0);
    /// Page-locked host memory.
    pub const CPU_PINNED: MemoryKind = MemoryKind(1);
    /// Device memory of the GPU named by the buffer's `device_id`.
    pub const GPU: MemoryKind = MemoryKind(2);
}

/// A buffer's memory kind and device.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Memory {
    /// CPU, pinned CPU or GPU.
    pub kind: MemoryKind,
    /// GPU ordinal for `GPU` memory, 0 otherwise.
    pub device_id: i32,
}

impl Memory {
    /// Ordinary host memory.
    pub const CPU: Memory = Memory {
        kind: MemoryKind::CPU,
        device_id: 0,
    };
}

/// Bit in a [`BufferRef`]'s `flags`: the bytes live in memory another process can change
/// while the backend reads them (a client's shared memory region). Read them through the raw
/// pointer (or copy them first); never treat them as an immutable Rust slice.
pub const BUFFER_SHARED: u32 = 1;

/// A read-only view of bytes the server lends a backend; valid while the object it came from
/// (a request, an inference result) is alive.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct BufferRef {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
    /// Where the bytes live.
    pub memory: Memory,
    /// [`BUFFER_SHARED`] and later bits; unknown bits are ignored.
    pub flags: u32,
}

/// A writable buffer the server allocated for an output; valid while the response it belongs
/// to is alive and not yet sent.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct BufferMut {
    /// First byte.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Where the bytes live.
    pub memory: Memory,
    /// [`BUFFER_SHARED`] and later bits; unknown bits are ignored.
    pub flags: u32,
}

/// A tensor's description: name, element type, shape, and how many buffers hold its bytes.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TensorInfo<'a> {
    /// Tensor name as in the model config.
    pub name: RStr<'a>,
    /// Element type.
    pub datatype: DataType,
    /// Full shape, including the batch dimension when the model batches.
    pub shape: RSlice<'a, i64>,
    /// Number of buffers that, concatenated, hold the tensor's bytes.
    pub buffer_count: u32,
    /// Total bytes over all buffers.
    pub byte_size: u64,
}

/// The kind of a parameter value; an open set (an unknown kind is skipped by readers).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ParamKind(pub u32);

impl ParamKind {
    /// A boolean, in `boolean`.
    pub const BOOL: ParamKind = ParamKind(1);
    /// A signed integer, in `int`.
    pub const INT: ParamKind = ParamKind(2);
    /// A double, in `double`.
    pub const DOUBLE: ParamKind = ParamKind(3);
    /// A string, in `text`.
    pub const STRING: ParamKind = ParamKind(4);
}

/// One parameter as it crosses the boundary; only the field its kind names is meaningful.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct ParamRef<'a> {
    /// The parameter's key.
    pub key: RStr<'a>,
    /// Which value field holds the value.
    pub kind: ParamKind,
    /// Value of a `BOOL` parameter.
    pub boolean: bool,
    /// Value of an `INT` parameter.
    pub int: i64,
    /// Value of a `DOUBLE` parameter.
    pub double: f64,
    /// Value of a `STRING` parameter.
    pub text: RStr<'a>,
}

/// The kind of a correlation id; an open set.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CorrelationKind(pub u32);

impl CorrelationKind {
    /// The request belongs to no sequence.
    pub const NONE: CorrelationKind = CorrelationKind(0);
    /// A numeric id, in `number`.
    pub const U64: CorrelationKind = CorrelationKind(1);
    /// A string id, in `text`.
    pub const STRING: CorrelationKind = CorrelationKind(2);
}

/// A sequence correlation id as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct CorrelationRef<'a> {
    /// Which field holds the id.
    pub kind: CorrelationKind,
    /// A numeric id.
    pub number: u64,
    /// A string id.
    pub text: RStr<'a>,
}

/// Bit in a request's flags: first request of a sequence.
pub const SEQUENCE_START: u32 = 1;
/// Bit in a request's flags: last request of a sequence.
pub const SEQUENCE_END: u32 = 2;

/// Bit in a response's flags: this is the last response for the request.
pub const RESPONSE_FINAL: u32 = 1;

/// What kind of failure an error is, mapped by the server to HTTP and gRPC status codes.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// Failure with no better description (HTTP 500, gRPC UNKNOWN).
    pub const UNKNOWN: ErrorCode = ErrorCode(0);
    /// A bug or broken invariant (HTTP 500, gRPC INTERNAL).
    pub const INTERNAL: ErrorCode = ErrorCode(1);
    /// Something named does not exist (HTTP 404, gRPC NOT_FOUND).
    pub const NOT_FOUND: ErrorCode = ErrorCode(2);
    /// The request is malformed (HTTP 400, gRPC INVALID_ARGUMENT).
    pub const INVALID_ARGUMENT: ErrorCode = ErrorCode(3);
    /// Temporarily unable to serve (HTTP 503, gRPC UNAVAILABLE).
    pub const UNAVAILABLE: ErrorCode = ErrorCode(4);
    /// The operation is not supported (HTTP 400, gRPC UNIMPLEMENTED).
    pub const UNSUPPORTED: ErrorCode = ErrorCode(5);
    /// Already exists (HTTP 409, gRPC ALREADY_EXISTS).
    pub const ALREADY_EXISTS: ErrorCode = ErrorCode(6);
    /// The request was cancelled (HTTP 499-ish, gRPC CANCELLED).
    pub const CANCELLED: ErrorCode = ErrorCode(7);
    /// Out of a resource such as queue space or memory (HTTP 429/413, gRPC RESOURCE_EXHAUSTED).
    pub const RESOURCE_EXHAUSTED: ErrorCode = ErrorCode(8);
}

/// An error with a code and a message written for the person who reads it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct BackendError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// What went wrong, for the user.
    pub message: RString,
}

impl BackendError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BackendError {
            code,
            message: RString::from(message.into()),
        }
    }

    /// A malformed-request error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_ARGUMENT, message)
    }

    /// An internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }

    /// An unsupported-operation error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNSUPPORTED, message)
    }

    /// A not-found error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }

    /// An unavailable error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAVAILABLE, message)
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_str())
    }
}

impl std::error::Error for BackendError {}

/// A log message's severity.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LogLevel(pub u32);

impl LogLevel {
    /// An error.
    pub const ERROR: LogLevel = LogLevel(0);
    /// A warning.
    pub const WARN: LogLevel = LogLevel(1);
    /// Information.
    pub const INFO: LogLevel = LogLevel(2);
    /// Verbose detail.
    pub const VERBOSE: LogLevel = LogLevel(3);
}

/// How an instance is placed: on the CPU, on one GPU, or wherever the model decides.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct InstanceKind(pub u32);

impl InstanceKind {
    /// Triton's KIND_AUTO.
    pub const AUTO: InstanceKind = InstanceKind(0);
    /// Triton's KIND_GPU.
    pub const GPU: InstanceKind = InstanceKind(1);
    /// Triton's KIND_CPU.
    pub const CPU: InstanceKind = InstanceKind(2);
    /// Triton's KIND_MODEL.
    pub const MODEL: InstanceKind = InstanceKind(3);
}
