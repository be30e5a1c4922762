//! Async tests of `Connection` and `Stream` over in-memory transports: a client and a server
//! `Connection` against each other, and a server against a hand-driven raw frame peer.

use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use crate::frame::{self, Frame, FrameHead, HEAD_LEN};
use crate::headers::{HeaderCompressor, HeaderDecompressor};
use crate::{Connection, Error};

const T: Duration = Duration::from_secs(20);

fn hdrs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn pair(buf: usize) -> (Connection, Connection) {
    let (a, b) = duplex(buf);
    (Connection::new(b, false), Connection::new(a, true))
}

async fn open_accept(
    client: &Connection,
    server: &Connection,
    h: &[(&str, &str)],
) -> (crate::Stream, crate::Stream) {
    let (c, s) = tokio::join!(client.open(hdrs(h)), server.accept());
    (c.expect("open"), s.expect("accept"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[tokio::test]
async fn open_accept_headers_and_bidirectional_data() {
    let (client, server) = pair(64 * 1024);
    let (mut c, mut s) = open_accept(
        &client,
        &server,
        &[
            ("streamType", "stdout"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(c.id(), 1);
    assert_eq!(s.id(), 1);
    assert_eq!(s.header("StreamType"), Some("stdout"));
    assert_eq!(s.header("streamtype"), Some("stdout"));
    assert_eq!(s.headers()[0].0, "streamtype");
    assert_eq!(c.header("STREAMTYPE"), Some("stdout"));
    assert_eq!(s.header("missing"), None);

    c.write_all(b"ping from client").await.unwrap();
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping from client");
    s.write_all(b"pong from server").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong from server");

    // Server-opened streams get even ids.
    let (s2, c2) = tokio::join!(server.open(hdrs(&[("a", "b")])), client.accept());
    assert_eq!(s2.unwrap().id(), 2);
    assert_eq!(c2.unwrap().header("a"), Some("b"));
    let (c3, _s3) = open_accept(&client, &server, &[]).await;
    assert_eq!(c3.id(), 3);
}

#[tokio::test]
async fn half_close_is_eof_and_other_direction_keeps_working() {
    let (client, server) = pair(64 * 1024);
    let (mut c, mut s) = open_accept(&client, &server, &[("streamtype", "stdin")]).await;
    c.write_all(b"input").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(T, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"input");
    // Writing after our own FIN fails; the peer can still write to us.
    assert!(c.write_all(b"more").await.is_err());
    s.write_all(b"reply").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(T, c.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"reply");
}

#[tokio::test]
async fn split_halves_work_concurrently() {
    let (client, server) = pair(8 * 1024);
    let (c, s) = open_accept(&client, &server, &[("streamtype", "data")]).await;
    // Echo server on split halves.
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(s);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let (mut r, mut w) = tokio::io::split(c);
    let data = pattern(3 * 1024 * 1024, 7);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(T, r.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    writer.await.unwrap();
    echo.await.unwrap();
}

#[tokio::test]
async fn large_transfers_both_ways_without_deadlock() {
    let (client, server) = pair(16 * 1024);
    let (c, s) = open_accept(&client, &server, &[("streamtype", "data")]).await;
    let up = pattern(6 * 1024 * 1024, 1);
    let down = pattern(5 * 1024 * 1024 + 17, 2);
    let (mut cr, mut cw) = tokio::io::split(c);
    let (mut sr, mut sw) = tokio::io::split(s);
    let (u, d) = (up.clone(), down.clone());
    let t1 = tokio::spawn(async move {
        cw.write_all(&u).await.unwrap();
        cw.shutdown().await.unwrap();
    });
    let t2 = tokio::spawn(async move {
        sw.write_all(&d).await.unwrap();
        sw.shutdown().await.unwrap();
    });
    let t3 = tokio::spawn(async move {
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got_down = Vec::new();
    timeout(T, cr.read_to_end(&mut got_down))
        .await
        .unwrap()
        .unwrap();
    let got_up = timeout(T, t3).await.unwrap().unwrap();
    t1.await.unwrap();
    t2.await.unwrap();
    assert!(got_up == up, "upload corrupted");
    assert!(got_down == down, "download corrupted");
}

#[tokio::test]
async fn slow_reader_is_backpressured_and_others_resume() {
    let (client, server) = pair(16 * 1024);
    let (mut c, mut s) = open_accept(&client, &server, &[("streamtype", "data")]).await;
    let data = pattern(4 * 1024 * 1024, 9);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        c.write_all(&sent).await.unwrap();
        c.shutdown().await.unwrap();
        c
    });
    // Nobody reads for a while: the writer must be held back, not buffer everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "4 MiB should not fit in the buffers");
    let mut got = Vec::new();
    timeout(T, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert!(got == data);
    let _c = writer.await.unwrap();
    // The connection still works afterwards.
    let (mut c2, mut s2) = open_accept(&client, &server, &[]).await;
    c2.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    s2.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ok");
}

#[tokio::test]
async fn many_streams_interleave() {
    let (client, server) = pair(32 * 1024);
    let srv = server.clone();
    let acceptor = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(mut s) = srv.accept().await {
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                let tag = s.header("requestid").unwrap().to_string();
                s.write_all(tag.as_bytes()).await.unwrap();
                s.write_all(&(got.len() as u32).to_be_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let id = i.to_string();
            let mut st = client
                .open(hdrs(&[("streamtype", "data"), ("requestid", &id)]))
                .await
                .unwrap();
            st.write_all(&pattern(100_000 + i as usize, i as u8))
                .await
                .unwrap();
            st.shutdown().await.unwrap();
            let mut got = Vec::new();
            st.read_to_end(&mut got).await.unwrap();
            let mut want = id.into_bytes();
            want.extend_from_slice(&(100_000 + i).to_be_bytes());
            assert_eq!(got, want);
        }));
    }
    for t in tasks {
        timeout(T, t).await.unwrap().unwrap();
    }
    client.close().await;
    timeout(T, acceptor).await.unwrap().unwrap();
}

#[tokio::test]
async fn reset_by_peer_reads_eof_and_fails_writes() {
    let (client, server) = pair(64 * 1024);
    let (c, mut s) = open_accept(&client, &server, &[("streamtype", "data")]).await;
    c.reset();
    assert!(c.is_reset());
    let mut got = Vec::new();
    timeout(T, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert!(got.is_empty());
    assert!(s.is_reset());
    let err = s.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    // Other streams are unaffected.
    let (mut c2, mut s2) = open_accept(&client, &server, &[]).await;
    s2.write_all(b"alive").await.unwrap();
    s2.shutdown().await.unwrap();
    let mut got = Vec::new();
    c2.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"alive");
}

#[tokio::test]
async fn goaway_closes_both_sides() {
    let (client, server) = pair(64 * 1024);
    let (mut c, mut s) = open_accept(&client, &server, &[("streamtype", "stdout")]).await;
    // Data queued before close() reaches the peer before the GOAWAY.
    s.write_all(b"last words").await.unwrap();
    timeout(T, server.close()).await.unwrap();
    assert!(server.is_closed());
    let mut got = Vec::new();
    timeout(T, c.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"last words");
    timeout(T, client.closed()).await.unwrap();
    timeout(T, server.closed()).await.unwrap();
    assert!(client.accept().await.is_none());
    assert!(server.accept().await.is_none());
    assert!(matches!(client.open(vec![]).await, Err(Error::Closed)));
    assert!(s.write_all(b"late").await.is_err());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (client, server) = pair(64 * 1024);
    let (c, s) = open_accept(&client, &server, &[]).await;
    drop(client);
    // A stream still holds the connection open.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!server.is_closed());
    drop(c);
    timeout(T, server.closed()).await.unwrap();
    drop(s);
}

#[tokio::test]
async fn ping_is_answered_both_ways() {
    let (client, server) = pair(64 * 1024);
    timeout(T, client.ping()).await.unwrap().unwrap();
    timeout(T, server.ping()).await.unwrap().unwrap();
    timeout(T, client.ping()).await.unwrap().unwrap();
}

/// A peer driven frame by frame, to check wire behaviour exactly.
struct RawPeer {
    io: DuplexStream,
    enc: HeaderCompressor,
    dec: HeaderDecompressor,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        RawPeer {
            io,
            enc: HeaderCompressor::new().unwrap(),
            dec: HeaderDecompressor::new(),
        }
    }

    async fn send(&mut self, f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out, &mut self.enc).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Frame> {
        let mut head = [0u8; HEAD_LEN];
        timeout(T, self.io.read_exact(&mut head))
            .await
            .unwrap()
            .ok()?;
        let head = FrameHead::parse(&head);
        let mut payload = vec![0u8; head.length()];
        self.io.read_exact(&mut payload).await.unwrap();
        Some(Frame::decode(head, payload, &mut self.dec).unwrap())
    }
}

fn syn(id: u32, h: &[(&str, &str)]) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated_id: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: hdrs(h),
    }
}

#[tokio::test]
async fn raw_peer_gets_syn_reply_ping_echo_and_data() {
    let (a, b) = duplex(1 << 20);
    let server = Connection::new(a, true);
    let mut peer = RawPeer::new(b);
    peer.send(Frame::Settings {
        clear: false,
        entries: vec![frame::Setting {
            flags: 0,
            id: 7,
            value: 65536,
        }],
    })
    .await;
    peer.send(syn(1, &[("streamtype", "stdin")])).await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: vec![]
        })
    );
    let mut s = server.accept().await.unwrap();
    assert_eq!(s.header("streamtype"), Some("stdin"));
    // spdystream writes a whole buffer as one frame: 1 MiB + 1 in a single DATA frame.
    let big = pattern((1 << 20) + 1, 3);
    peer.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 1000,
    })
    .await;
    peer.send(Frame::Data {
        stream_id: 1,
        fin: true,
        data: big.clone(),
    })
    .await;
    peer.send(Frame::Ping { id: 1 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 1 }));
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert!(got == big);
    // Our writes arrive as DATA frames of at most 32 KiB, then FIN.
    s.write_all(&pattern(70_000, 4)).await.unwrap();
    s.shutdown().await.unwrap();
    let mut total = 0;
    loop {
        match peer.recv().await {
            Some(Frame::Data {
                stream_id: 1,
                fin,
                data,
            }) => {
                assert!(data.len() <= 32 * 1024);
                total += data.len();
                if fin {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, 70_000);
    // Data for unknown streams and unknown control frames are ignored.
    peer.send(Frame::Data {
        stream_id: 99,
        fin: false,
        data: b"stray".to_vec(),
    })
    .await;
    peer.send(Frame::Unknown { frame_type: 5 }).await;
    peer.send(Frame::Ping { id: 3 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 3 }));
    // Our own ping gets an even id.
    let srv = server.clone();
    let pinger = tokio::spawn(async move { srv.ping().await });
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 2 }));
    peer.send(Frame::Ping { id: 2 }).await;
    timeout(T, pinger).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn raw_peer_bad_stream_ids_are_refused() {
    let (a, b) = duplex(1 << 20);
    let server = Connection::new(a, true);
    let mut peer = RawPeer::new(b);
    // Even id from a client: RST PROTOCOL_ERROR.
    peer.send(syn(2, &[])).await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: frame::RST_PROTOCOL_ERROR
        })
    );
    peer.send(syn(5, &[])).await;
    assert!(matches!(
        peer.recv().await,
        Some(Frame::SynReply { stream_id: 5, .. })
    ));
    // Ids must increase.
    peer.send(syn(3, &[])).await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: frame::RST_PROTOCOL_ERROR
        })
    );
    assert_eq!(server.accept().await.unwrap().id(), 5);
}

#[tokio::test]
async fn raw_peer_rst_fails_open_and_garbage_gets_goaway() {
    let (a, b) = duplex(1 << 20);
    let client = Connection::new(a, false);
    let mut peer = RawPeer::new(b);
    let c2 = client.clone();
    let opener = tokio::spawn(async move { c2.open(hdrs(&[("streamtype", "error")])).await });
    match peer.recv().await {
        Some(Frame::SynStream {
            stream_id: 1,
            headers,
            ..
        }) => assert_eq!(headers, hdrs(&[("streamtype", "error")])),
        other => panic!("unexpected {other:?}"),
    }
    peer.send(Frame::RstStream {
        stream_id: 1,
        status: frame::RST_REFUSED_STREAM,
    })
    .await;
    assert!(matches!(
        timeout(T, opener).await.unwrap().unwrap(),
        Err(Error::Reset {
            stream_id: 1,
            status: 3
        })
    ));
    // A control frame with a bad version kills the connection with GOAWAY PROTOCOL_ERROR.
    peer.io
        .write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        peer.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: frame::GOAWAY_PROTOCOL_ERROR
        })
    );
    timeout(T, client.closed()).await.unwrap();
    // And the transport is shut: EOF after the GOAWAY.
    assert_eq!(peer.recv().await, None);
}

#[tokio::test]
async fn raw_peer_truncated_frame_then_eof_closes() {
    let (a, b) = duplex(1 << 20);
    let server = Connection::new(a, true);
    let mut peer = RawPeer::new(b);
    peer.send(syn(1, &[])).await;
    let mut s = server.accept().await.unwrap();
    // Half a DATA frame, then the peer goes away.
    peer.io
        .write_all(&[0, 0, 0, 1, 0, 0, 0, 10, 1, 2])
        .await
        .unwrap();
    drop(peer);
    timeout(T, server.closed()).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty());
}

#[test]
fn handles_and_futures_are_send() {
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    fn send<T: Send>(_: &T) {}
    send_sync_unpin::<Connection>();
    send_sync_unpin::<crate::Stream>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, _server) = pair(1024);
        send(&client.accept());
        send(&client.open(vec![]));
        send(&client.close());
        send(&client.closed());
        send(&client.ping());
    });
}
