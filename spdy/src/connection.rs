//! A SPDY/3.1 connection: one reader task, one writer task, and the shared stream table.
//!
//! Flow control: moby/spdystream (the peer of every kubelet/kubectl/crictl session) ignores
//! SETTINGS and WINDOW_UPDATE and never sends WINDOW_UPDATE itself, so a send window would stall
//! after 64 KiB. This connection therefore never limits what it sends by a window, never sends
//! WINDOW_UPDATE, and accepts and ignores the peer's. Backpressure works like spdystream's instead:
//! - inbound: when a stream holds more than [`RECV_BUFFER_LIMIT`] unread bytes, the reader task
//!   stops reading the transport until the application reads that stream (or drops or resets
//!   it), so TCP pushes back on the peer. Like spdystream this is head-of-line: all streams wait.
//! - outbound: `Stream::poll_write` returns `Pending` while more than [`MAX_QUEUED_BYTES`] of
//!   data sit in the connection's send queue, which drains as fast as the transport accepts it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::error::{Error, Result};
use crate::frame::{self, Frame};
use crate::headers::HeaderList;
use crate::stream::Stream;

/// Largest DATA payload this side sends in one frame; larger writes are split.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Outbound data allowed to wait in the send queue before writers are pushed back.
pub const MAX_QUEUED_BYTES: usize = 512 * 1024;
/// Unread inbound bytes per stream beyond which the reader stops reading the transport.
pub const RECV_BUFFER_LIMIT: usize = 1 << 20;

/// Per-stream state kept by the connection.
#[derive(Default)]
pub(crate) struct StreamState {
    /// Headers of a peer-opened stream, handed to the application on accept.
    pub(crate) headers: HeaderList,
    /// Received, unread DATA payloads.
    pub(crate) recv: VecDeque<Vec<u8>>,
    /// Read offset into the front payload.
    pub(crate) recv_off: usize,
    /// Unread bytes in `recv`.
    pub(crate) recv_bytes: usize,
    /// The peer sent FIN.
    pub(crate) remote_fin: bool,
    /// This side sent FIN.
    pub(crate) local_fin: bool,
    /// Reset by either side.
    pub(crate) reset: bool,
    /// Task waiting to read.
    pub(crate) read_waker: Option<Waker>,
    /// `open` waiting for SYN_REPLY.
    pub(crate) reply_tx: Option<oneshot::Sender<Result<()>>>,
}

/// Connection state behind one mutex (never held across an await).
pub(crate) struct State {
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) out: VecDeque<Frame>,
    pub(crate) queued_bytes: usize,
    pub(crate) write_wakers: Vec<Waker>,
    pub(crate) next_stream_id: u32,
    pub(crate) last_peer_stream_id: u32,
    pub(crate) next_ping_id: u32,
    pub(crate) pings: HashMap<u32, oneshot::Sender<()>>,
    pub(crate) goaway_sent: bool,
    pub(crate) closed: bool,
    pub(crate) accept_tx: Option<mpsc::UnboundedSender<u32>>,
}

/// What the tasks and the handles share.
pub(crate) struct Shared {
    pub(crate) server: bool,
    pub(crate) state: Mutex<State>,
    pub(crate) writer_wake: Notify,
    pub(crate) reader_wake: Notify,
    pub(crate) closed_tx: watch::Sender<bool>,
    pub(crate) writer_done_tx: watch::Sender<bool>,
    /// Bumped after every batch the writer hands to the transport.
    pub(crate) written_tx: watch::Sender<u64>,
    pub(crate) accept_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<u32>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state itself stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame for the writer task; dropped once the connection is closed.
    pub(crate) fn enqueue(&self, st: &mut State, f: Frame) {
        if st.closed {
            return;
        }
        if let Frame::Data { data, .. } = &f {
            st.queued_bytes += data.len();
        }
        st.out.push_back(f);
        self.writer_wake.notify_one();
    }

    /// Lets a reader task blocked on a full stream buffer look again.
    pub(crate) fn wake_reader(&self) {
        self.reader_wake.notify_one();
    }

    /// Sends GOAWAY (once) and closes.
    pub(crate) fn close_with(&self, status: u32) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        if !st.goaway_sent {
            st.goaway_sent = true;
            let last = st.last_peer_stream_id;
            self.enqueue(
                &mut st,
                Frame::GoAway {
                    last_good_stream_id: last,
                    status,
                },
            );
        }
        self.mark_closed(&mut st);
    }

    /// Marks the connection closed and wakes everything that waits on it. The writer task
    /// still flushes what is queued, then shuts the transport down.
    pub(crate) fn mark_closed(&self, st: &mut State) {
        if st.closed {
            return;
        }
        st.closed = true;
        st.accept_tx = None;
        st.pings.clear();
        for s in st.streams.values_mut() {
            if let Some(tx) = s.reply_tx.take() {
                let _ = tx.send(Err(Error::Closed));
            }
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
        }
        for w in st.write_wakers.drain(..) {
            w.wake();
        }
        self.closed_tx.send_replace(true);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
    }

    pub(crate) fn is_peer_id(&self, id: u32) -> bool {
        // Clients use odd ids, servers even ones.
        (id % 2 == 1) == self.server
    }
}

/// Closes the connection once the last handle (connection or stream) is dropped.
pub(crate) struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close_with(frame::GOAWAY_OK);
    }
}

/// A SPDY/3.1 connection over an upgraded transport (HTTP/1.1 `Upgrade: SPDY/3.1`).
///
/// Cheap to clone; all clones drive the same connection. Two tasks run it (spawned on the
/// current tokio runtime): one reads and dispatches frames, one writes queued frames. The
/// connection closes on [`Connection::close`], on a GOAWAY from the peer, on a transport error or
/// EOF, on a protocol error (a GOAWAY PROTOCOL_ERROR is sent), or when every `Connection` and
/// [`Stream`] handle is dropped. Peer-opened streams are answered with an empty SYN_REPLY at once
/// (as k8s' spdystream server does) and wait in [`Connection::accept`]'s queue.
///
/// Flow control: none in the SPDY sense, because spdystream neither honours nor sends
/// WINDOW_UPDATE (a send window would stall after 64 KiB). WINDOW_UPDATE and SETTINGS from the
/// peer are accepted and ignored. Backpressure comes from the transport instead: a stream holding
/// 1 MiB of unread input stops the reader task from reading the transport until the application
/// reads, drops or resets that stream (head-of-line for the whole connection, exactly like
/// spdystream); writes return `Pending` while 512 KiB of data wait in the send queue.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.shared.server)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Runs a connection on `io`; `server`: the side that answered the HTTP upgrade (even stream
    /// ids are its). Must be called from within a tokio runtime (it spawns the two tasks).
    pub fn new<T>(io: T, server: bool) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let first = if server { 2 } else { 1 };
        let shared = Arc::new(Shared {
            server,
            state: Mutex::new(State {
                streams: HashMap::new(),
                out: VecDeque::new(),
                queued_bytes: 0,
                write_wakers: Vec::new(),
                next_stream_id: first,
                last_peer_stream_id: 0,
                next_ping_id: first,
                pings: HashMap::new(),
                goaway_sent: false,
                closed: false,
                accept_tx: Some(accept_tx),
            }),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            closed_tx: watch::Sender::new(false),
            writer_done_tx: watch::Sender::new(false),
            written_tx: watch::Sender::new(0),
            accept_rx: tokio::sync::Mutex::new(accept_rx),
        });
        let (r, w) = tokio::io::split(io);
        tokio::spawn(crate::reader::reader_task(shared.clone(), r));
        tokio::spawn(crate::writer::writer_task(shared.clone(), w));
        let guard = Arc::new(Guard(shared.clone()));
        Connection { shared, guard }
    }

    /// Next stream the peer opened, already answered with SYN_REPLY; None once the connection
    /// is closed.
    pub async fn accept(&self) -> Option<Stream> {
        loop {
            if self.shared.lock().closed {
                return None;
            }
            let id = {
                let mut rx = self.shared.accept_rx.lock().await;
                rx.recv().await?
            };
            let mut st = self.shared.lock();
            if st.closed {
                return None;
            }
            if let Some(s) = st.streams.get_mut(&id) {
                let headers = std::mem::take(&mut s.headers);
                drop(st);
                return Some(Stream::new(
                    id,
                    headers,
                    self.shared.clone(),
                    self.guard.clone(),
                ));
            }
        }
    }

    /// Opens a stream with `headers` (names lower-case), waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Vec<(String, String)>) -> Result<Stream, Error> {
        let headers: HeaderList = headers
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            let id = st.next_stream_id;
            if id > 0x7fff_ffff {
                return Err(Error::StreamIdsExhausted);
            }
            st.next_stream_id = id.saturating_add(2);
            st.streams.insert(
                id,
                StreamState {
                    reply_tx: Some(tx),
                    ..StreamState::default()
                },
            );
            // Queued under the same lock as the id was taken: ids reach the wire in order.
            self.shared.enqueue(
                &mut st,
                Frame::SynStream {
                    stream_id: id,
                    associated_id: 0,
                    priority: 0,
                    slot: 0,
                    flags: 0,
                    headers: headers.clone(),
                },
            );
            id
        };
        match rx.await {
            Ok(Ok(())) => Ok(Stream::new(
                id,
                headers,
                self.shared.clone(),
                self.guard.clone(),
            )),
            Ok(Err(e)) => {
                self.shared.lock().streams.remove(&id);
                Err(e)
            }
            Err(_) => Err(Error::Closed),
        }
    }

    /// Sends GOAWAY, flushes and closes.
    ///
    /// Frames queued before the call (data, FINs) reach the transport first; a peer that does
    /// not read them within 10 s is given up on. Returns once the transport is shut down.
    pub async fn close(&self) {
        self.shared.close_with(frame::GOAWAY_OK);
        let mut done = self.shared.writer_done_tx.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Resolves once the connection is closed (either side).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed_tx.borrow()
    }

    /// Sends a PING and waits for the peer to echo it; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id > 0x7fff_fffd {
                id - 0x7fff_fffc
            } else {
                id + 2
            };
            st.pings.insert(id, tx);
            self.shared.enqueue(&mut st, Frame::Ping { id });
        }
        let start = Instant::now();
        rx.await.map_err(|_| Error::Closed)?;
        Ok(start.elapsed())
    }
}
