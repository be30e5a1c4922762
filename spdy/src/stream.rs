//! A SPDY stream as an async byte pipe.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::{Guard, Shared, MAX_DATA_CHUNK, MAX_QUEUED_BYTES, RECV_BUFFER_LIMIT};
use crate::frame::{Frame, RST_CANCEL};
use crate::headers::HeaderList;

/// One stream of a [`crate::Connection`]: reads yield the peer's DATA, writes send DATA frames of
/// at most 32 KiB, `poll_shutdown` sends an empty DATA frame with FIN.
///
/// Reads return EOF once the peer sent FIN, or after a reset or the connection's close (like
/// spdystream, a reset stream reads as EOF; [`Stream::is_reset`] tells them apart). Writes after
/// a reset fail with `ConnectionReset`, after the close with `BrokenPipe`. `poll_flush` returns at
/// once: written data is queued on the connection and sent in order. Dropping the stream sends
/// FIN if this side has not finished, and discards whatever the peer still sends on it.
/// `tokio::io::split` works for concurrent reading and writing.
pub struct Stream {
    id: u32,
    headers: HeaderList,
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub(crate) fn new(
        id: u32,
        headers: HeaderList,
        shared: Arc<Shared>,
        guard: Arc<Guard>,
    ) -> Self {
        Stream {
            id,
            headers,
            shared,
            _guard: guard,
        }
    }

    /// The stream id (odd: opened by the client, even: by the server).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the SYN_STREAM that opened the stream (the peer's for accepted streams,
    /// the ones sent for opened streams), names lower-case, one pair per value.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Aborts the stream with RST_STREAM CANCEL: buffered input is dropped, reads return EOF,
    /// writes fail.
    pub fn reset(&self) {
        let mut st = self.shared.lock();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.reset {
            return;
        }
        s.reset = true;
        s.recv.clear();
        s.recv_off = 0;
        s.recv_bytes = 0;
        if let Some(w) = s.read_waker.take() {
            w.wake();
        }
        self.shared.enqueue(
            &mut st,
            Frame::RstStream {
                stream_id: self.id,
                status: RST_CANCEL,
            },
        );
        drop(st);
        self.shared.wake_reader();
    }

    /// True once either side reset the stream.
    pub fn is_reset(&self) -> bool {
        let st = self.shared.lock();
        st.streams.get(&self.id).is_none_or(|s| s.reset)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let closed = st.closed;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if s.reset {
            return Poll::Ready(Ok(()));
        }
        if s.recv.is_empty() {
            if s.remote_fin || closed {
                return Poll::Ready(Ok(()));
            }
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let was_full = s.recv_bytes >= RECV_BUFFER_LIMIT;
        while buf.remaining() > 0 {
            let Some(front) = s.recv.front() else {
                break;
            };
            let avail = &front[s.recv_off..];
            let n = avail.len().min(buf.remaining());
            buf.put_slice(&avail[..n]);
            s.recv_off += n;
            s.recv_bytes -= n;
            if s.recv_off == front.len() {
                s.recv.pop_front();
                s.recv_off = 0;
            }
        }
        let now_free = s.recv_bytes < RECV_BUFFER_LIMIT;
        drop(st);
        if was_full && now_free {
            self.shared.wake_reader();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.shared.lock();
        if st.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "spdy: connection closed",
            )));
        }
        match st.streams.get(&self.id) {
            None => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "spdy: stream gone",
                )))
            }
            Some(s) if s.reset => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("spdy: stream {} reset", self.id),
                )))
            }
            Some(s) if s.local_fin => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("spdy: write after shutdown on stream {}", self.id),
                )))
            }
            Some(_) => {}
        }
        if st.queued_bytes >= MAX_QUEUED_BYTES {
            st.write_wakers.push(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(MAX_DATA_CHUNK);
        self.shared.enqueue(
            &mut st,
            Frame::Data {
                stream_id: self.id,
                fin: false,
                data: buf[..n].to_vec(),
            },
        );
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let id = self.id;
        if let Some(s) = st.streams.get_mut(&id) {
            if !s.local_fin && !s.reset {
                s.local_fin = true;
                self.shared.enqueue(
                    &mut st,
                    Frame::Data {
                        stream_id: id,
                        fin: true,
                        data: Vec::new(),
                    },
                );
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(s) = st.streams.remove(&self.id) {
            if !s.local_fin && !s.reset {
                self.shared.enqueue(
                    &mut st,
                    Frame::Data {
                        stream_id: self.id,
                        fin: true,
                        data: Vec::new(),
                    },
                );
            }
        }
        drop(st);
        self.shared.wake_reader();
    }
}
