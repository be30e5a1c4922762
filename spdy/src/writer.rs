//! The writer task: encodes queued frames (header blocks on the connection's one compressor, in
//! queue order) and writes them to the transport.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::connection::Shared;
use crate::error::Error;
use crate::frame::Frame;
use crate::headers::HeaderCompressor;

/// How long queued frames may take to reach the transport once the connection is closed.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn writer_task<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut w: W) {
    write_loop(&shared, &mut w).await;
    shared.writer_done_tx.send_replace(true);
    shared.written_tx.send_modify(|n| *n += 1);
}

/// Resolves `CLOSE_FLUSH_TIMEOUT` after the connection is closed.
async fn close_deadline(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|c| *c).await;
    tokio::time::sleep(CLOSE_FLUSH_TIMEOUT).await;
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: &Shared, w: &mut W) {
    let mut enc = match HeaderCompressor::new() {
        Ok(enc) => enc,
        Err(e) => {
            tracing::error!("spdy: {e}");
            let mut st = shared.lock();
            shared.mark_closed(&mut st);
            return;
        }
    };
    let mut closed_rx = shared.closed_tx.subscribe();
    let mut buf = Vec::new();
    loop {
        let (frames, closed) = {
            let mut st = shared.lock();
            let frames: Vec<Frame> = st.out.drain(..).collect();
            (frames, st.closed)
        };
        if frames.is_empty() {
            if closed {
                let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, w.shutdown()).await;
                return;
            }
            shared.writer_wake.notified().await;
            continue;
        }
        buf.clear();
        let mut data_bytes = 0usize;
        let mut encode_err = None;
        for f in &frames {
            if let Frame::Data { data, .. } = f {
                data_bytes += data.len();
            }
            if let Err(e) = f.encode(&mut buf, &mut enc) {
                encode_err = Some(e);
                break;
            }
        }
        let res = match encode_err {
            // The header compressor state is now unknown to the peer: the connection is lost.
            Some(e) => Err(e),
            None => tokio::select! {
                res = async {
                    w.write_all(&buf).await?;
                    w.flush().await
                } => res.map_err(Error::Io),
                // A peer that stops reading must not keep a closed connection alive.
                _ = close_deadline(&mut closed_rx) => Err(Error::Closed),
            },
        };
        {
            let mut st = shared.lock();
            st.queued_bytes = st.queued_bytes.saturating_sub(data_bytes);
            for waker in st.write_wakers.drain(..) {
                waker.wake();
            }
            if let Err(e) = &res {
                tracing::debug!("spdy: write failed: {e}");
                st.out.clear();
                shared.mark_closed(&mut st);
            }
        }
        shared.written_tx.send_modify(|n| *n += 1);
        if res.is_err() {
            return;
        }
    }
}
