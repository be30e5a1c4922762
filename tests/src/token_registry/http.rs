//! The token registry's HTTP/1.1 plumbing: request parsing (keep-alive, `Content-Length`
//! bodies only), response heads, form and query decoding. Minimal on purpose: it serves the
//! registry client under test, not the world.

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head (request line + headers) the server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the server accepts (pulls send none; pushes go to the backend directly).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A parsed request head plus its body.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    /// Lower-cased names.
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Request {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One client connection and the bytes read ahead of the current request.
pub(super) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Wraps an accepted connection.
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes (part of) a response body whose length the head already announced.
    pub(super) async fn write_body(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the next request; `None` when the client closed the connection between requests.
    pub(super) async fn read_request(&mut self) -> anyhow::Result<Option<Request>> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            // Anything but an HTTP method (a TLS ClientHello, for one) ends the connection
            // instead of waiting for a line end that never comes.
            if self
                .buf
                .iter()
                .take(8)
                .take_while(|b| **b != b' ')
                .any(|b| !b.is_ascii_uppercase())
            {
                bail!("not an HTTP request");
            }
            if self.buf.len() > MAX_HEAD {
                bail!("request head too large");
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("connection closed inside a request head");
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).context("head not UTF-8")?;
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(_version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            bail!("bad request line {request_line:?}");
        };
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .with_context(|| format!("bad header line {line:?}"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut req = Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body: Vec::new(),
        };
        if req.header("transfer-encoding").is_some() {
            bail!("chunked request bodies are not supported");
        }
        let len: usize = match req.header("content-length") {
            Some(v) => v.parse().context("bad Content-Length")?,
            None => 0,
        };
        if len > MAX_BODY {
            bail!("request body too large");
        }
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                bail!("connection closed inside a request body");
            }
        }
        req.body = self.buf.drain(..len).collect();
        Ok(Some(req))
    }

    pub(super) async fn write_head(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        content_length: u64,
    ) -> anyhow::Result<()> {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {content_length}\r\n\r\n"));
        self.stream.write_all(head.as_bytes()).await?;
        Ok(())
    }

    pub(super) async fn respond(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
        head_only: bool,
    ) -> anyhow::Result<()> {
        self.write_head(status, headers, body.len() as u64).await?;
        if !head_only {
            self.stream.write_all(body).await?;
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (also used for query strings).
pub(super) fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        assert_eq!(
            form_pairs("scope=repository%3Aa%2Fb%3Apull&service=berth-test&x=a+b&bad=%zz"),
            vec![
                ("scope".into(), "repository:a/b:pull".into()),
                ("service".into(), "berth-test".into()),
                ("x".into(), "a b".into()),
                ("bad".into(), "%zz".into()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
    }
}
