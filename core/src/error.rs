//! The server's error type: a kind that maps onto HTTP and gRPC status codes, and a message.

use ferrum_backend_api::{BackendError, ErrorCode};

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed.
    InvalidArgument,
    /// A named model, version or resource does not exist.
    NotFound,
    /// The target exists but cannot serve now.
    Unavailable,
    /// The operation is not supported.
    Unsupported,
    /// Something already exists.
    AlreadyExists,
    /// A limit was exceeded.
    ResourceExhausted,
    /// The request was cancelled.
    Cancelled,
    /// A bug or a backend failure.
    Internal,
}

/// An error with a message written for the client or operator who reads it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
}

impl Error {
    /// An error of this kind with this message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// A malformed-request error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A not-found error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// An unavailable error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// An internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// A cancelled-request error.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// An unsupported-operation error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        let kind = match e.code {
            ErrorCode::INVALID_ARGUMENT => ErrorKind::InvalidArgument,
            ErrorCode::NOT_FOUND => ErrorKind::NotFound,
            ErrorCode::UNAVAILABLE => ErrorKind::Unavailable,
            ErrorCode::UNSUPPORTED => ErrorKind::Unsupported,
            ErrorCode::ALREADY_EXISTS => ErrorKind::AlreadyExists,
            ErrorCode::RESOURCE_EXHAUSTED => ErrorKind::ResourceExhausted,
            ErrorCode::CANCELLED => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        };
        Error {
            kind,
            message: e.message.into_string(),
        }
    }
}

impl From<Error> for BackendError {
    fn from(e: Error) -> Self {
        let code = match e.kind {
            ErrorKind::InvalidArgument => ErrorCode::INVALID_ARGUMENT,
            ErrorKind::NotFound => ErrorCode::NOT_FOUND,
            ErrorKind::Unavailable => ErrorCode::UNAVAILABLE,
            ErrorKind::Unsupported => ErrorCode::UNSUPPORTED,
            ErrorKind::AlreadyExists => ErrorCode::ALREADY_EXISTS,
            ErrorKind::ResourceExhausted => ErrorCode::RESOURCE_EXHAUSTED,
            ErrorKind::Cancelled => ErrorCode::CANCELLED,
            ErrorKind::Internal => ErrorCode::INTERNAL,
        };
        BackendError::new(code, e.message)
    }
}

/// Shorthand for results with the server's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
