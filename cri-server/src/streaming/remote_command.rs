//! The remote-command (exec/attach) session logic both transports share: which streams a request
//! needs, running it on the [`Backend`], the final status the client reads from the error
//! stream (k8s `metav1.Status` JSON for v4+, plain text before), and the resize stream's JSON.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use super::backend::{Backend, SessionIo, TermSize};

/// How long the client gets to open all the streams it needs after the upgrade (kubelet: 30 s).
pub const STREAM_CREATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes buffered between the backend and a transport per stream.
pub const PIPE_SIZE: usize = 64 * 1024;

/// An exec or attach, as validated by the RPC.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run a new process.
    Exec(k8s_cri::v1::ExecRequest),
    /// Attach to the container's main process.
    Attach(k8s_cri::v1::AttachRequest),
}

/// The streams a command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// Client sends stdin.
    pub stdin: bool,
    /// Client receives stdout.
    pub stdout: bool,
    /// Client receives stderr (never with a TTY).
    pub stderr: bool,
    /// A terminal: resize events are accepted.
    pub tty: bool,
}

impl Command {
    /// The streams this command uses.
    pub fn wants(&self) -> Wants {
        let (stdin, stdout, stderr, tty) = match self {
            Command::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Command::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        };
        Wants {
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
        }
    }

    /// Runs the command on `backend` with `io` and maps the result to the session's outcome.
    pub async fn run(self, backend: Arc<dyn Backend>, io: SessionIo) -> Outcome {
        match self {
            Command::Exec(req) => {
                let cmd = req.cmd.clone();
                match backend.exec(req, io).await {
                    Ok(0) => Outcome::Success,
                    Ok(code) => Outcome::ExitCode { code, cmd },
                    Err(e) => Outcome::Error(format!("error executing command in container: {e}")),
                }
            }
            Command::Attach(req) => match backend.attach(req, io).await {
                Ok(()) => Outcome::Success,
                Err(e) => Outcome::Error(format!("error attaching to container: {e}")),
            },
        }
    }
}

/// How a session ended, as reported on the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0, or the attach ended normally.
    Success,
    /// The command exited with a non-zero code.
    ExitCode {
        /// The exit code.
        code: i32,
        /// The command, for the message.
        cmd: Vec<String>,
    },
    /// The runtime failed; the message says how.
    Error(String),
}

/// How the error stream reports the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// v4 and v5: a `metav1.Status` JSON object, also on success.
    Json,
    /// v1-v3: the error message as text, nothing on success.
    Text,
}

impl StatusFormat {
    /// The format for a negotiated sub-protocol.
    pub fn for_protocol(protocol: &str) -> Self {
        if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        }
    }
}

/// `metav1.Status` with Go's field order and `omitempty`s, as kubelet serializes it.
#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

#[derive(Serialize)]
struct Cause<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    message: &'a str,
}

impl Outcome {
    /// The human-readable message (the text v1-v3 clients get).
    pub fn message(&self) -> String {
        match self {
            Outcome::Success => String::new(),
            Outcome::ExitCode { code, cmd } => format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            ),
            Outcome::Error(msg) => format!("Internal error occurred: {msg}"),
        }
    }

    /// What to write on the error stream; `None` means write nothing (success before v4).
    pub fn encode(&self, format: StatusFormat) -> Option<Vec<u8>> {
        let message = self.message();
        if format == StatusFormat::Text {
            return (!message.is_empty()).then(|| message.into_bytes());
        }
        let code_text;
        let status = match self {
            Outcome::Success => Status {
                metadata: Empty {},
                status: "Success",
                message: "",
                reason: "",
                details: None,
                code: None,
            },
            Outcome::ExitCode { code, .. } => {
                code_text = code.to_string();
                Status {
                    metadata: Empty {},
                    status: "Failure",
                    message: &message,
                    reason: "NonZeroExitCode",
                    details: Some(Details {
                        causes: vec![Cause {
                            reason: "ExitCode",
                            message: &code_text,
                        }],
                    }),
                    code: None,
                }
            }
            Outcome::Error(cause) => Status {
                metadata: Empty {},
                status: "Failure",
                message: &message,
                reason: "InternalError",
                details: Some(Details {
                    causes: vec![Cause {
                        reason: "",
                        message: cause,
                    }],
                }),
                code: Some(500),
            },
        };
        // Serializing these plain structs cannot fail; fall back to the text form if it did.
        Some(serde_json::to_vec(&status).unwrap_or_else(|_| message.into_bytes()))
    }
}

/// Decodes the resize stream: a sequence of JSON objects `{"Width":W,"Height":H}` (field names
/// case-insensitive and missing ones 0, like Go's decoder), possibly split across reads.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

/// A malformed resize stream; the kubelet stops reading it at the first one.
#[derive(Debug, thiserror::Error)]
#[error("malformed terminal resize message: {0}")]
pub struct ResizeError(String);

/// Longest partial JSON value the decoder buffers.
const MAX_RESIZE_MESSAGE: usize = 4096;

impl ResizeDecoder {
    /// Adds `data` and returns every size now complete.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TermSize>, ResizeError> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        {
            let mut values =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
            loop {
                match values.next() {
                    None => {
                        consumed = values.byte_offset();
                        break;
                    }
                    Some(Ok(value)) => {
                        sizes.push(term_size(&value)?);
                        consumed = values.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(ResizeError(e.to_string())),
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_RESIZE_MESSAGE {
            return Err(ResizeError(format!(
                "more than {MAX_RESIZE_MESSAGE} bytes without a complete object"
            )));
        }
        Ok(sizes)
    }
}

fn term_size(value: &serde_json::Value) -> Result<TermSize, ResizeError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ResizeError(format!("expected an object, got {value}")))?;
    let field = |name: &str| -> Result<u16, ResizeError> {
        match obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            None | Some((_, serde_json::Value::Null)) => Ok(0),
            Some((k, v)) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| ResizeError(format!("{k} = {v} is not a 16-bit unsigned number"))),
        }
    };
    Ok(TermSize {
        width: field("width")?,
        height: field("height")?,
    })
}

/// Feeds resize bytes arriving from `rx` into `tx` as sizes, until either side ends or the
/// stream is malformed (logged; later resizes are then ignored, like the kubelet).
pub async fn forward_resizes<R>(mut rx: R, tx: mpsc::Sender<TermSize>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut decoder = ResizeDecoder::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match decoder.feed(&buf[..n]) {
            Ok(sizes) => {
                for size in sizes {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "streaming: ignoring the rest of the resize stream");
                return;
            }
        }
    }
}

/// How long output pumps may take to deliver what is buffered once the backend returned.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `cmd` while `pumps` (the transport's copies of the backend's output to the client) run
/// alongside; returns once the backend finished and the pumps delivered its output (bounded by
/// a drain timeout in case the backend leaked a writer).
pub async fn run_with_pumps<P>(
    cmd: Command,
    backend: Arc<dyn Backend>,
    io: SessionIo,
    pumps: P,
) -> Outcome
where
    P: std::future::Future<Output = ()>,
{
    let run = cmd.run(backend, io);
    tokio::pin!(run);
    tokio::pin!(pumps);
    let mut pumps_done = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            () = &mut pumps, if !pumps_done => pumps_done = true,
        }
    };
    if !pumps_done
        && tokio::time::timeout(DRAIN_TIMEOUT, &mut pumps)
            .await
            .is_err()
    {
        tracing::warn!("streaming: output still open {DRAIN_TIMEOUT:?} after the session ended");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_status() {
        assert_eq!(Outcome::Success.encode(StatusFormat::Text), None);
        assert_eq!(
            String::from_utf8(Outcome::Success.encode(StatusFormat::Json).unwrap()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
    }

    #[test]
    fn exit_code_status() {
        let o = Outcome::ExitCode {
            code: 3,
            cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
        };
        let json: serde_json::Value =
            serde_json::from_slice(&o.encode(StatusFormat::Json).unwrap()).unwrap();
        assert_eq!(json["status"], "Failure");
        assert_eq!(json["reason"], "NonZeroExitCode");
        assert_eq!(json["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(json["details"]["causes"][0]["message"], "3");
        assert_eq!(
            json["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert!(json.get("code").is_none());
        let text = String::from_utf8(o.encode(StatusFormat::Text).unwrap()).unwrap();
        assert!(text.contains("exit code 3"), "{text}");
    }

    #[test]
    fn error_status() {
        let o = Outcome::Error("error executing command in container: boom".into());
        let json: serde_json::Value =
            serde_json::from_slice(&o.encode(StatusFormat::Json).unwrap()).unwrap();
        assert_eq!(json["status"], "Failure");
        assert_eq!(json["reason"], "InternalError");
        assert_eq!(json["code"], 500);
        assert_eq!(
            json["message"],
            "Internal error occurred: error executing command in container: boom"
        );
        assert_eq!(
            json["details"]["causes"][0]["message"],
            "error executing command in container: boom"
        );
        assert!(json["details"]["causes"][0].get("reason").is_none());
        assert_eq!(
            o.encode(StatusFormat::Text).unwrap(),
            b"Internal error occurred: error executing command in container: boom"
        );
    }

    #[test]
    fn status_format_by_protocol() {
        assert_eq!(
            StatusFormat::for_protocol("v4.channel.k8s.io"),
            StatusFormat::Json
        );
        assert_eq!(
            StatusFormat::for_protocol("v5.channel.k8s.io"),
            StatusFormat::Json
        );
        assert_eq!(
            StatusFormat::for_protocol("v4.base64.channel.k8s.io"),
            StatusFormat::Json
        );
        assert_eq!(
            StatusFormat::for_protocol("v3.channel.k8s.io"),
            StatusFormat::Text
        );
        assert_eq!(
            StatusFormat::for_protocol("channel.k8s.io"),
            StatusFormat::Text
        );
        assert_eq!(StatusFormat::for_protocol(""), StatusFormat::Text);
    }

    #[test]
    fn resize_messages_in_pieces() {
        let mut d = ResizeDecoder::default();
        let size = |width, height| TermSize { width, height };
        assert_eq!(d.feed(br#"{"Width":80,"Heig"#).unwrap(), vec![]);
        assert_eq!(
            d.feed(b"ht\":24}\n{\"width\":100,\"height\":50}{\"Width\":1}")
                .unwrap(),
            vec![size(80, 24), size(100, 50), size(1, 0)]
        );
        assert_eq!(d.feed(b"  ").unwrap(), vec![]);
        assert_eq!(d.feed(b"{\"Height\":7}").unwrap(), vec![size(0, 7)]);
    }

    #[test]
    fn malformed_resize_is_an_error() {
        assert!(ResizeDecoder::default().feed(b"{\"Width\":70000}").is_err());
        assert!(ResizeDecoder::default().feed(b"{\"Width\":-1}").is_err());
        assert!(ResizeDecoder::default().feed(b"[1,2]").is_err());
        assert!(ResizeDecoder::default().feed(b"}{").is_err());
        let mut d = ResizeDecoder::default();
        let mut long = b"{\"Width\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_RESIZE_MESSAGE + 1));
        assert!(d.feed(&long).is_err());
    }

    #[test]
    fn wants_drop_stderr_with_tty() {
        let c = Command::Exec(k8s_cri::v1::ExecRequest {
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        });
        assert_eq!(
            c.wants(),
            Wants {
                stdin: false,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
    }
}
