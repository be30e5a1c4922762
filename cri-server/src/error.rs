//! berthd's error type and its one mapping onto gRPC status codes.

use tonic::{Code, Status};

/// Everything a berthd request can fail with. Messages name the object and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (missing id, bad image reference, conflicting options).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named sandbox, container or image does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A sandbox or container with that name already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in the wrong state for the request (e.g. starting an exited container).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Something berthd depends on is unreachable (registry, shim).
    #[error("{0}")]
    Unavailable(String),
    /// A filesystem or syscall failure, with what berthd was doing.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Content store or snapshot failure.
    #[error(transparent)]
    Snapshot(#[from] snapshotter::Error),
    /// A CRI feature berth does not implement yet; the message names it.
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected state; the message says which.
    #[error("{0}")]
    Internal(String),
    /// The registry refused the credentials (401): gRPC Unauthenticated.
    #[error("{0}")]
    Unauthorized(String),
}

/// berthd's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unauthorized(_) => Code::Unauthenticated,
            Error::Snapshot(e) if e.is_not_found() => Code::NotFound,
            Error::Snapshot(e) if e.is_invalid_input() => Code::InvalidArgument,
            Error::Snapshot(e) if e.is_already_exists() => Code::AlreadyExists,
            Error::Io { .. } | Error::Snapshot(_) | Error::Internal(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}
