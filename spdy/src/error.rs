//! Errors of the spdy crate.

use std::io;

/// Everything that can go wrong on a SPDY connection or while coding a frame.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying transport failed.
    #[error("spdy: transport I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not valid SPDY/3; the connection cannot continue.
    #[error("spdy: protocol error: {0}")]
    Protocol(String),
    /// A control frame carried a version other than 3.
    #[error("spdy: unsupported protocol version {0} (only SPDY/3 is spoken)")]
    UnsupportedVersion(u16),
    /// A compressed header block could not be inflated.
    #[error("spdy: header block decompression: {0}")]
    Decompress(String),
    /// A header block could not be deflated.
    #[error("spdy: header block compression: {0}")]
    Compress(String),
    /// A header block decompressed to more than the allowed size (zlib bomb guard).
    #[error("spdy: header block larger than {limit} bytes once decompressed")]
    HeaderBlockTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A frame to send does not fit in the SPDY 24-bit length field or has an invalid field.
    #[error("spdy: cannot encode frame: {0}")]
    Encode(String),
    /// The connection is closed (GOAWAY sent or received, transport gone, or all handles dropped).
    #[error("spdy: connection closed")]
    Closed,
    /// The peer reset the stream (RST_STREAM) with the given status code.
    #[error("spdy: stream {stream_id} reset by peer (status {status})")]
    Reset {
        /// The stream that was reset.
        stream_id: u32,
        /// The RST_STREAM status code.
        status: u32,
    },
    /// This side has used up all 2^31 stream ids of its parity.
    #[error("spdy: stream ids exhausted")]
    StreamIdsExhausted,
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Closed => io::Error::new(io::ErrorKind::BrokenPipe, e),
            Error::Reset { .. } => io::Error::new(io::ErrorKind::ConnectionReset, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
