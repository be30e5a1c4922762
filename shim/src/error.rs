//! The shim's error type and its one mapping to ttrpc status codes.

use containerd_shim_protos::ttrpc::{self, Code};

/// Everything a task request can fail with. Messages name the container and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad field, unsupported option).
    #[error("container {id}: {msg}")]
    InvalidArgument {
        /// Container id.
        id: String,
        /// What is wrong with the request.
        msg: String,
    },
    /// The task (or an exec process) does not exist in this shim.
    #[error("container {id}: {what} not found")]
    NotFound {
        /// Container id.
        id: String,
        /// What was looked for.
        what: String,
    },
    /// The container is in the wrong state for the request.
    #[error("container {id}: cannot {op}: {why}")]
    FailedPrecondition {
        /// Container id.
        id: String,
        /// The operation that was refused.
        op: &'static str,
        /// Why it was refused.
        why: String,
    },
    /// The OCI bundle or image content is unusable (config.json, /etc/passwd).
    #[error("container {id}: {msg}")]
    Bundle {
        /// Container id.
        id: String,
        /// What is wrong with the bundle.
        msg: String,
    },
    /// Mounting or unmounting the rootfs failed.
    #[error("container {id}: {op} rootfs {path}: {source}")]
    Rootfs {
        /// Container id.
        id: String,
        /// `mount` or `unmount`.
        op: &'static str,
        /// The rootfs path.
        path: String,
        /// The snapshotter's error.
        source: snapshotter::Error,
    },
    /// libcontainer failed.
    #[error("container {id}: {op}: {source}")]
    Container {
        /// Container id.
        id: String,
        /// The libcontainer operation.
        op: &'static str,
        /// libcontainer's error.
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// Creating the container failed (libcontainer, in the create helper).
    #[error("container {id}: create: {msg}")]
    Create {
        /// Container id.
        id: String,
        /// libcontainer's error.
        msg: String,
    },
    /// Starting an exec process failed (libcontainer, in the exec helper).
    #[error("container {id}: exec {exec_id}: {msg}")]
    Exec {
        /// Container id.
        id: String,
        /// Exec id.
        exec_id: String,
        /// libcontainer's error.
        msg: String,
    },
    /// The cgroup could not be read or changed.
    #[error("container {id}: cgroup {op}: {msg}")]
    Cgroup {
        /// Container id.
        id: String,
        /// The cgroup operation.
        op: &'static str,
        /// The cause.
        msg: String,
    },
    /// A syscall or file operation failed.
    #[error("container {id}: {context}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request is part of the task API this shim does not implement (yet).
    #[error("{0} is not implemented by berth-shim")]
    Unimplemented(&'static str),
}

impl Error {
    /// Shorthand for an [`Error::Io`].
    pub fn io(id: &str, context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            id: id.to_string(),
            context: context.into(),
            source,
        }
    }

    /// Shorthand for an [`Error::Container`].
    pub fn container(
        id: &str,
        op: &'static str,
        source: libcontainer::error::LibcontainerError,
    ) -> Self {
        Error::Container {
            id: id.to_string(),
            op,
            source: Box::new(source),
        }
    }

    /// The ttrpc status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } | Error::Bundle { .. } => Code::INVALID_ARGUMENT,
            Error::NotFound { .. } => Code::NOT_FOUND,
            Error::FailedPrecondition { .. } => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Rootfs { .. }
            | Error::Container { .. }
            | Error::Create { .. }
            | Error::Exec { .. }
            | Error::Cgroup { .. }
            | Error::Io { .. } => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_names_container() {
        let e = Error::InvalidArgument {
            id: "c1".into(),
            msg: "exec stdio path \"x\" is not absolute".into(),
        };
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INVALID_ARGUMENT);
                assert_eq!(
                    s.message(),
                    "container c1: exec stdio path \"x\" is not absolute"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(Error::Unimplemented("exec").code(), Code::UNIMPLEMENTED);
    }
}
