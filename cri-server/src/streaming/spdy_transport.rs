//! Remote command and port-forward over SPDY/3.1 (k8s `httpstream/spdy`): the client opens one
//! stream per channel, named by its `streamtype` header. Remote command: error, stdin, stdout,
//! stderr, resize (v3+ with a TTY). Port-forward: a pair of streams (error, data) per forwarded
//! connection, tied by `requestid`, with the pod port in `port`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::backend::{Backend, SessionIo, TermSize};
use super::idle::Activity;
use super::port_forward;
use super::remote_command::{self, Command, StatusFormat, PIPE_SIZE, STREAM_CREATION_TIMEOUT};

/// The streams of a remote-command session, by `streamtype`.
#[derive(Default)]
struct Streams {
    error: Option<spdy::Stream>,
    stdin: Option<spdy::Stream>,
    stdout: Option<spdy::Stream>,
    stderr: Option<spdy::Stream>,
    resize: Option<spdy::Stream>,
}

/// Accepts streams until `expected` of a known type arrived (`None`: the connection closed).
async fn collect_streams(conn: &spdy::Connection, expected: usize) -> Option<Streams> {
    let mut streams = Streams::default();
    let mut received = 0;
    while received < expected {
        let stream = conn.accept().await?;
        let slot = match stream.header("streamtype").unwrap_or("") {
            "error" => &mut streams.error,
            "stdin" => &mut streams.stdin,
            "stdout" => &mut streams.stdout,
            "stderr" => &mut streams.stderr,
            "resize" => &mut streams.resize,
            other => {
                tracing::debug!(
                    streamtype = other,
                    "streaming: unexpected spdy stream, reset"
                );
                stream.reset();
                continue;
            }
        };
        *slot = Some(stream);
        received += 1;
    }
    Some(streams)
}

/// Runs an exec or attach over the upgraded connection `io` (101 already sent with `protocol`):
/// waits for the client's streams, runs the command, writes the status on the error stream.
pub async fn remote_command<S>(
    io: S,
    protocol: &'static str,
    cmd: Command,
    backend: Arc<dyn Backend>,
    activity: Activity,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = spdy::Connection::new(io, true);
    let wants = cmd.wants();
    let resize_supported = !matches!(protocol, "channel.k8s.io" | "v2.channel.k8s.io");
    let expected = 1
        + usize::from(wants.stdin)
        + usize::from(wants.stdout)
        + usize::from(wants.stderr)
        + usize::from(wants.tty && resize_supported);
    let streams =
        match tokio::time::timeout(STREAM_CREATION_TIMEOUT, collect_streams(&conn, expected)).await
        {
            Ok(Some(streams)) => streams,
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(
                    expected,
                    "streaming: timed out waiting for the client to create streams"
                );
                conn.close().await;
                return;
            }
        };
    let Streams {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    } = streams;

    let (stdout_backend, stdout_pump) = output(stdout.filter(|_| wants.stdout), &activity);
    let (stderr_backend, stderr_pump) = output(stderr.filter(|_| wants.stderr), &activity);
    let resize_stream = resize.filter(|_| wants.tty);
    let (resize_tx, resize_rx) = if resize_stream.is_some() {
        let (t, r) = mpsc::channel::<TermSize>(16);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let io = SessionIo {
        stdin: stdin
            .filter(|_| wants.stdin)
            .map(|s| Box::new(activity.track(s)) as _),
        stdout: stdout_backend.map(|p| Box::new(p) as _),
        stderr: stderr_backend.map(|p| Box::new(p) as _),
        resize: resize_rx,
    };
    let resizes = async {
        if let (Some(stream), Some(tx)) = (resize_stream, resize_tx) {
            remote_command::forward_resizes(activity.track(stream), tx).await;
        }
        std::future::pending::<()>().await
    };
    let pumps = async {
        tokio::join!(stdout_pump, stderr_pump);
    };
    let outcome = tokio::select! {
        outcome = remote_command::run_with_pumps(cmd, backend, io, pumps) => Some(outcome),
        () = resizes => None,
        () = conn.closed() => {
            tracing::debug!("streaming: spdy client went away");
            None
        }
        () = activity.idle() => {
            tracing::info!("streaming: closing an idle spdy session");
            None
        }
    };
    if let Some(outcome) = outcome {
        if let remote_command::Outcome::Error(e) = &outcome {
            tracing::warn!(error = %e, "streaming: spdy session");
        }
        if let Some(mut error) = error {
            if let Some(status) = outcome.encode(StatusFormat::for_protocol(protocol)) {
                let _ = error.write_all(&status).await;
            }
            let _ = error.shutdown().await;
        }
    }
    conn.close().await;
}

/// The backend's end of an output pipe and the pump copying the other end to `stream`, then
/// finishing the stream (FIN).
fn output(
    stream: Option<spdy::Stream>,
    activity: &Activity,
) -> (Option<DuplexStream>, BoxFuture<'static, ()>) {
    let Some(stream) = stream else {
        return (None, Box::pin(async {}));
    };
    let (backend_end, mut pump_end) = tokio::io::duplex(PIPE_SIZE);
    let mut stream = activity.track(stream);
    let pump = async move {
        if let Err(e) = tokio::io::copy(&mut pump_end, &mut stream).await {
            tracing::debug!(error = %e, "streaming: spdy output");
        }
        let _ = stream.shutdown().await;
    };
    (Some(backend_end), Box::pin(pump))
}

/// A port-forward request's streams as they arrive.
struct Pair {
    port: u16,
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
}

/// Validates a port-forward stream's headers: its `streamtype` (true: data) and `port`.
fn port_forward_headers(stream: &spdy::Stream) -> Result<(bool, u16), String> {
    let port = stream
        .header("port")
        .ok_or_else(|| "\"port\" header is required".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    match stream.header("streamtype") {
        Some("data") => Ok((true, port)),
        Some("error") => Ok((false, port)),
        Some(other) => Err(format!("invalid stream type {other:?}")),
        None => Err("\"streamtype\" header is required".into()),
    }
}

/// The `requestid` tying a pair; old clients without it pair error stream N with data N+2.
fn request_id(stream: &spdy::Stream, data: bool) -> String {
    match stream.header("requestid") {
        Some(id) => id.to_string(),
        None if data => stream.id().saturating_sub(2).to_string(),
        None => stream.id().to_string(),
    }
}

enum Event {
    Done,
    Timeout(String),
}

/// Runs a port-forward over the upgraded connection `io`: every (error, data) stream pair the
/// client opens becomes a connection to its port in pod `pod`, until the client closes.
pub async fn port_forward<S>(io: S, pod: String, backend: Arc<dyn Backend>, activity: Activity)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = spdy::Connection::new(io, true);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks: FuturesUnordered<BoxFuture<'static, Event>> = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = conn.accept() => {
                let Some(stream) = accepted else { break };
                activity.touch();
                let (is_data, port) = match port_forward_headers(&stream) {
                    Ok(v) => v,
                    Err(msg) => {
                        tracing::debug!(error = %msg, "streaming: refusing a port-forward stream");
                        stream.reset();
                        continue;
                    }
                };
                let id = request_id(&stream, is_data);
                let pair = pairs.entry(id.clone()).or_insert_with(|| {
                    let id = id.clone();
                    tasks.push(Box::pin(async move {
                        tokio::time::sleep(STREAM_CREATION_TIMEOUT).await;
                        Event::Timeout(id)
                    }));
                    Pair { port, data: None, error: None }
                });
                let slot = if is_data { &mut pair.data } else { &mut pair.error };
                if slot.is_some() {
                    let kind = if is_data { "data" } else { "error" };
                    let msg = format!(
                        "error processing stream for request {id}: {kind} stream already assigned"
                    );
                    tracing::debug!(error = %msg, "streaming: port-forward");
                    if let Some(error) = pair.error.as_mut() {
                        let _ = error.write_all(msg.as_bytes()).await;
                    }
                    stream.reset();
                    continue;
                }
                *slot = Some(stream);
                if pair.data.is_some() && pair.error.is_some() {
                    if let Some(Pair { port, data: Some(data), error: Some(error) }) = pairs.remove(&id) {
                        tasks.push(Box::pin(forward_pair(
                            backend.clone(), pod.clone(), port, data, error, activity.clone(),
                        )));
                    }
                }
            }
            Some(event) = tasks.next(), if !tasks.is_empty() => {
                if let Event::Timeout(id) = event {
                    if let Some(Pair { error, data, .. }) = pairs.remove(&id) {
                        let msg = format!("(request={id}) timed out waiting for streams");
                        tracing::debug!(error = %msg, "streaming: port-forward");
                        if let Some(mut error) = error {
                            let _ = error.write_all(msg.as_bytes()).await;
                        }
                        drop(data);
                    }
                }
            }
            () = activity.idle() => {
                tracing::info!("streaming: closing an idle spdy port-forward");
                break;
            }
        }
    }
    drop(tasks);
    drop(pairs);
    conn.close().await;
}

async fn forward_pair(
    backend: Arc<dyn Backend>,
    pod: String,
    port: u16,
    data: spdy::Stream,
    mut error: spdy::Stream,
    activity: Activity,
) -> Event {
    let result = port_forward::forward(backend, pod, port, activity.track(data)).await;
    if let Err(msg) = result {
        tracing::info!(port, error = %msg, "streaming: spdy port-forward");
        let _ = error.write_all(msg.as_bytes()).await;
    }
    let _ = error.shutdown().await;
    Event::Done
}
