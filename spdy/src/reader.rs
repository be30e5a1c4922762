//! The reader task: reads frames off the transport and dispatches them to the stream table.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use crate::connection::{Shared, StreamState, RECV_BUFFER_LIMIT};
use crate::error::{Error, Result};
use crate::frame::{self, Frame, FrameHead, HEAD_LEN};
use crate::headers::HeaderDecompressor;

/// Frames allowed in the send queue before the reader stops answering the peer (PING echoes,
/// SYN_REPLYs): a peer that floods requests but does not read is pushed back, not buffered.
const MAX_QUEUED_FRAMES: usize = 16 * 1024;
/// How long the transport is drained after a local close, so that unread bytes do not turn
/// the close into a TCP reset that could destroy data the peer has not read yet.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads one frame; `Ok(None)` on a clean EOF between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut HeaderDecompressor,
) -> Result<Option<Frame>> {
    let mut head = [0u8; HEAD_LEN];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut head[1..]).await?;
    let head = FrameHead::parse(&head);
    let mut payload = vec![0u8; head.length()];
    r.read_exact(&mut payload).await?;
    Frame::decode(head, payload, dec).map(Some)
}

pub(crate) async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, r: R) {
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut dec = HeaderDecompressor::new();
    let mut closed_rx = shared.closed_tx.subscribe();
    loop {
        let res = tokio::select! {
            res = read_frame(&mut r, &mut dec) => res,
            _ = closed_rx.wait_for(|c| *c) => break,
        };
        match res {
            Ok(Some(f)) => {
                wait_for_send_queue(&shared).await;
                handle_frame(&shared, f).await;
            }
            Ok(None) => {
                tracing::debug!("spdy: peer closed the transport");
                let mut st = shared.lock();
                shared.mark_closed(&mut st);
                return;
            }
            Err(Error::Io(e)) => {
                tracing::debug!("spdy: transport read failed: {e}");
                let mut st = shared.lock();
                shared.mark_closed(&mut st);
                return;
            }
            Err(e) => {
                tracing::warn!("spdy: closing connection on bad input: {e}");
                shared.close_with(frame::GOAWAY_PROTOCOL_ERROR);
                break;
            }
        }
    }
    // Closed locally: keep reading (and discarding) for a moment so the transport is not torn
    // down under bytes still in flight.
    let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn handle_frame(shared: &Shared, f: Frame) {
    match f {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => deliver_data(shared, stream_id, fin, data).await,
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            if st.goaway_sent {
                shared.enqueue(
                    &mut st,
                    Frame::RstStream {
                        stream_id,
                        status: frame::RST_REFUSED_STREAM,
                    },
                );
                return;
            }
            if !shared.is_peer_id(stream_id) || stream_id <= st.last_peer_stream_id {
                tracing::debug!("spdy: refusing SYN_STREAM with invalid id {stream_id}");
                shared.enqueue(
                    &mut st,
                    Frame::RstStream {
                        stream_id,
                        status: frame::RST_PROTOCOL_ERROR,
                    },
                );
                return;
            }
            st.last_peer_stream_id = stream_id;
            let unidirectional = flags & frame::FLAG_UNIDIRECTIONAL != 0;
            st.streams.insert(
                stream_id,
                StreamState {
                    headers,
                    remote_fin: flags & frame::FLAG_FIN != 0,
                    local_fin: unidirectional,
                    ..StreamState::default()
                },
            );
            if !unidirectional {
                shared.enqueue(
                    &mut st,
                    Frame::SynReply {
                        stream_id,
                        fin: false,
                        headers: Vec::new(),
                    },
                );
            }
            if let Some(tx) = &st.accept_tx {
                let _ = tx.send(stream_id);
            }
        }
        Frame::SynReply { stream_id, fin, .. } => {
            let mut st = shared.lock();
            let Some(s) = st.streams.get_mut(&stream_id) else {
                return;
            };
            if fin {
                s.remote_fin = true;
            }
            if let Some(tx) = s.reply_tx.take() {
                if tx.send(Ok(())).is_err() {
                    // The `open` call was abandoned: nobody will ever use this stream.
                    st.streams.remove(&stream_id);
                    shared.enqueue(
                        &mut st,
                        Frame::RstStream {
                            stream_id,
                            status: frame::RST_CANCEL,
                        },
                    );
                }
            }
        }
        Frame::Headers { stream_id, fin, .. } => {
            if fin {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.remote_fin = true;
                    if let Some(w) = s.read_waker.take() {
                        w.wake();
                    }
                }
            }
        }
        Frame::RstStream { stream_id, status } => {
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                s.reset = true;
                s.recv.clear();
                s.recv_off = 0;
                s.recv_bytes = 0;
                if let Some(tx) = s.reply_tx.take() {
                    let _ = tx.send(Err(Error::Reset { stream_id, status }));
                }
                if let Some(w) = s.read_waker.take() {
                    w.wake();
                }
                for w in st.write_wakers.drain(..) {
                    w.wake();
                }
            }
        }
        Frame::Ping { id } => {
            let mut st = shared.lock();
            if shared.is_peer_id(id) {
                shared.enqueue(&mut st, Frame::Ping { id });
            } else if let Some(tx) = st.pings.remove(&id) {
                let _ = tx.send(());
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            tracing::debug!(
                "spdy: GOAWAY from peer (last good stream {last_good_stream_id}, status {status})"
            );
            let mut st = shared.lock();
            // The peer stops reading after GOAWAY (spdystream does): no reply GOAWAY needed.
            st.goaway_sent = true;
            shared.mark_closed(&mut st);
        }
        Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {
            // No flow control (see the module docs); nothing else in them matters here.
        }
    }
}

/// Waits while the send queue holds more than `MAX_QUEUED_FRAMES` frames, so that frames the
/// reader queues in answer to the peer cannot grow without bound.
async fn wait_for_send_queue(shared: &Shared) {
    let mut written = shared.written_tx.subscribe();
    loop {
        {
            let st = shared.lock();
            if st.closed || st.out.len() <= MAX_QUEUED_FRAMES {
                return;
            }
        }
        if written.changed().await.is_err() {
            return;
        }
    }
}

/// Buffers a DATA payload for its stream, waiting (without reading the transport) while the
/// stream already holds `RECV_BUFFER_LIMIT` unread bytes.
async fn deliver_data(shared: &Shared, stream_id: u32, fin: bool, data: Vec<u8>) {
    loop {
        {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            let Some(s) = st.streams.get_mut(&stream_id) else {
                // Unknown, refused, or dropped by the application: ignored, as spdystream does.
                return;
            };
            if s.reset || s.remote_fin {
                return;
            }
            if data.is_empty() || s.recv_bytes < RECV_BUFFER_LIMIT {
                if !data.is_empty() {
                    s.recv_bytes += data.len();
                    s.recv.push_back(data);
                }
                if fin {
                    s.remote_fin = true;
                }
                if let Some(w) = s.read_waker.take() {
                    w.wake();
                }
                return;
            }
        }
        shared.reader_wake.notified().await;
    }
}
