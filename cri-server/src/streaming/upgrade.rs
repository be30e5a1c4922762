//! HTTP upgrade negotiation: is the request SPDY/3.1 or WebSocket, and which sub-protocol
//! (`X-Stream-Protocol-Version` / `Sec-WebSocket-Protocol`) both sides speak. Pure header logic,
//! mirroring k8s.io/apimachinery's `httpstream.Handshake` and `wsstream`.

use http::HeaderMap;

/// `X-Stream-Protocol-Version`, the SPDY sub-protocol header.
pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The reply header listing what the server accepts when negotiation fails.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";

/// Remote command (exec/attach) over SPDY, best first: v4 adds JSON status with exit codes, v3
/// the resize stream, v2 drops v1's quirks.
pub const SPDY_REMOTE_COMMAND: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Port-forward over SPDY.
pub const SPDY_PORT_FORWARD: &[&str] = &["portforward.k8s.io"];
/// Remote command over WebSocket, best first. `""` is a client that names no protocol (binary
/// frames, v1 status), as the kubelet allows.
pub const WS_REMOTE_COMMAND: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];
/// Port-forward over WebSocket, best first.
pub const WS_PORT_FORWARD: &[&str] = &[
    super::tunnel::SPDY_PORT_FORWARD_TUNNEL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
    "",
];

/// Which upgrade the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `Upgrade: SPDY/3.1`.
    Spdy,
    /// `Upgrade: websocket`.
    WebSocket,
}

/// Why an upgrade was refused; the `Display` text is the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// No `Connection: Upgrade`, or an `Upgrade` that is neither SPDY/3.1 nor websocket (400).
    #[error("unable to upgrade: missing upgrade headers in request (want SPDY/3.1 or websocket)")]
    NotUpgrade,
    /// SPDY without `X-Stream-Protocol-Version` (400, like the kubelet).
    #[error("unable to upgrade: X-Stream-Protocol-Version is required")]
    NoProtocol,
    /// No protocol in common (403, like the kubelet).
    #[error("unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server:?}")]
    NoCommonProtocol {
        /// What the client offered.
        client: Vec<String>,
        /// What the server accepts.
        server: Vec<String>,
    },
    /// WebSocket without a usable `Sec-WebSocket-Key` or with a version other than 13 (400).
    #[error("unable to upgrade: websocket handshake needs Sec-WebSocket-Version 13 and a Sec-WebSocket-Key")]
    BadWebSocket,
}

impl UpgradeError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpgradeError::NoCommonProtocol { .. } => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Comma-separated tokens of every `name` header, trimmed, empty ones dropped.
fn tokens<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The transport of an upgrade request (`Connection` must list `upgrade`).
pub fn transport(headers: &HeaderMap) -> Result<Transport, UpgradeError> {
    if !tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(UpgradeError::NotUpgrade);
    }
    let upgrade = headers
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if upgrade.eq_ignore_ascii_case("websocket") {
        Ok(Transport::WebSocket)
    } else if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        Ok(Transport::Spdy)
    } else {
        Err(UpgradeError::NotUpgrade)
    }
}

/// The best of `server` (ordered best first) that the client offered in `offered`.
fn pick<'s>(offered: &[&str], server: &[&'s str]) -> Option<&'s str> {
    server.iter().copied().find(|s| offered.contains(s))
}

/// Negotiates `X-Stream-Protocol-Version` for SPDY.
pub fn spdy_protocol(
    headers: &HeaderMap,
    server: &[&'static str],
) -> Result<&'static str, UpgradeError> {
    let offered: Vec<&str> = tokens(headers, STREAM_PROTOCOL_HEADER).collect();
    if offered.is_empty() {
        return Err(UpgradeError::NoProtocol);
    }
    pick(&offered, server).ok_or_else(|| no_common(&offered, server))
}

/// Negotiates `Sec-WebSocket-Protocol`; a client offering none gets `""` when `server` allows it.
pub fn websocket_protocol(
    headers: &HeaderMap,
    server: &[&'static str],
) -> Result<&'static str, UpgradeError> {
    let mut offered: Vec<&str> = tokens(headers, "sec-websocket-protocol").collect();
    if offered.is_empty() {
        offered.push("");
    }
    pick(&offered, server).ok_or_else(|| no_common(&offered, server))
}

fn no_common(offered: &[&str], server: &[&str]) -> UpgradeError {
    UpgradeError::NoCommonProtocol {
        client: offered.iter().map(|s| s.to_string()).collect(),
        server: server.iter().map(|s| s.to_string()).collect(),
    }
}

/// `Sec-WebSocket-Accept` for the request's key (RFC 6455 handshake, version 13 only).
pub fn websocket_accept(headers: &HeaderMap) -> Result<String, UpgradeError> {
    let version = headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match (version, key) {
        (Some("13"), Some(key)) => {
            Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
        }
        _ => Err(UpgradeError::BadWebSocket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn transport_detection() {
        let spdy = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        assert_eq!(transport(&spdy), Ok(Transport::Spdy));
        let ws = headers(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(transport(&ws), Ok(Transport::WebSocket));
        assert_eq!(
            transport(&headers(&[("upgrade", "SPDY/3.1")])),
            Err(UpgradeError::NotUpgrade)
        );
        assert_eq!(
            transport(&headers(&[("connection", "Upgrade"), ("upgrade", "h2c")])),
            Err(UpgradeError::NotUpgrade)
        );
    }

    #[test]
    fn spdy_picks_highest_common_version() {
        let h = headers(&[
            (STREAM_PROTOCOL_HEADER, "channel.k8s.io"),
            (STREAM_PROTOCOL_HEADER, "v3.channel.k8s.io"),
            (STREAM_PROTOCOL_HEADER, "v4.channel.k8s.io"),
            (STREAM_PROTOCOL_HEADER, "v9.channel.k8s.io"),
        ]);
        assert_eq!(
            spdy_protocol(&h, SPDY_REMOTE_COMMAND),
            Ok("v4.channel.k8s.io")
        );
        let h = headers(&[(STREAM_PROTOCOL_HEADER, "v2.channel.k8s.io, channel.k8s.io")]);
        assert_eq!(
            spdy_protocol(&h, SPDY_REMOTE_COMMAND),
            Ok("v2.channel.k8s.io")
        );
        assert_eq!(
            spdy_protocol(&HeaderMap::new(), SPDY_REMOTE_COMMAND),
            Err(UpgradeError::NoProtocol)
        );
        assert_eq!(
            UpgradeError::NoProtocol.status(),
            http::StatusCode::BAD_REQUEST
        );
        let err = spdy_protocol(
            &headers(&[(STREAM_PROTOCOL_HEADER, "v4.channel.k8s.io")]),
            SPDY_PORT_FORWARD,
        )
        .unwrap_err();
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
        assert!(err.to_string().contains("portforward.k8s.io"), "{err}");
    }

    #[test]
    fn websocket_protocols() {
        let h = headers(&[(
            "sec-websocket-protocol",
            "v4.base64.channel.k8s.io, v5.channel.k8s.io",
        )]);
        assert_eq!(
            websocket_protocol(&h, WS_REMOTE_COMMAND),
            Ok("v5.channel.k8s.io")
        );
        assert_eq!(
            websocket_protocol(&HeaderMap::new(), WS_REMOTE_COMMAND),
            Ok("")
        );
        let h = headers(&[("sec-websocket-protocol", "v5.channel.k8s.io")]);
        assert!(websocket_protocol(&h, WS_PORT_FORWARD).is_err());
        let h = headers(&[("sec-websocket-protocol", "v4.base64.channel.k8s.io")]);
        assert_eq!(
            websocket_protocol(&h, WS_PORT_FORWARD),
            Ok("v4.base64.channel.k8s.io")
        );
    }

    #[test]
    fn websocket_accept_key() {
        // The example from RFC 6455 section 1.3.
        let h = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(
            websocket_accept(&h).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let h = headers(&[("sec-websocket-version", "8"), ("sec-websocket-key", "x")]);
        assert_eq!(websocket_accept(&h), Err(UpgradeError::BadWebSocket));
    }
}
