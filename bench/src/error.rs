//! The bench's error type: which CRI call or which file failed, and why.

use std::path::PathBuf;

/// Everything the workload and the memory readers can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the CRI socket failed.
    #[error("connecting to CRI endpoint {endpoint}: {source}")]
    Connect {
        /// The socket path.
        endpoint: PathBuf,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A CRI call returned an error status.
    #[error("{op} {object}: {status}")]
    Rpc {
        /// The CRI method, e.g. `RunPodSandbox`.
        op: &'static str,
        /// The pod, container or image the call was about.
        object: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// A CRI call did not finish in time.
    #[error("{op} {object}: no answer within {secs}s")]
    Timeout {
        /// What was waited for.
        op: &'static str,
        /// The pod, container or image.
        object: String,
        /// The bound that passed.
        secs: u64,
    },
    /// A container never reached RUNNING.
    #[error("container {id}: not RUNNING after {secs}s (state {state})")]
    NotRunning {
        /// The container id.
        id: String,
        /// How long we polled.
        secs: u64,
        /// The last state seen.
        state: i32,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Results of the bench's library modules.
pub type Result<T> = std::result::Result<T, Error>;
