//! SPDY/3.1 framing and multiplexed async connections.
//!
//! Speaks the dialect of `moby/spdystream` (used by kubelet, kubectl, crictl and critest for
//! `exec`, `attach` and `port-forward` over an upgraded HTTP/1.1 connection): every control frame
//! of SPDY/3 is decoded, header blocks are zlib-compressed with the SPDY/3 dictionary (one zlib
//! stream per direction for the connection's lifetime), peer PINGs are answered, and flow control
//! is *not* enforced because spdystream neither sends nor honours WINDOW_UPDATE (see
//! [`Connection`] for the backpressure that is applied instead).
//!
//! ```no_run
//! # async fn demo(io: tokio::net::TcpStream) -> Result<(), spdy::Error> {
//! use tokio::io::AsyncWriteExt;
//! let conn = spdy::Connection::new(io, true);
//! while let Some(mut stream) = conn.accept().await {
//!     if stream.header("streamtype") == Some("stdout") {
//!         stream.write_all(b"hello\n").await?;
//!         stream.shutdown().await?;
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod connection;
pub mod dictionary;
mod error;
pub mod frame;
pub mod headers;
mod reader;
mod stream;
mod writer;

pub use connection::Connection;
pub use error::{Error, Result};
pub use stream::Stream;

#[cfg(test)]
mod conn_tests;
