//! A bearer-token front for a [`Registry`]: the token-auth flow of Docker Hub, GHCR or Harbor, on
//! 127.0.0.1 over plain HTTP, for Debian's `docker-registry` cannot issue tokens itself.
//!
//! Requests to `/v2/...` without a valid `Authorization: Bearer <token>` get 401 with
//! `WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/token",service="berth-test",scope=...`.
//! `GET /token?service=..&scope=..` (and the OAuth2 `POST /token` form) issues a token when the
//! request carries the right basic credentials (or, in anonymous mode, always). Requests with a
//! token covering the repository are forwarded to the backend registry; status, body and the
//! headers a client needs are relayed, the body streamed with its `Content-Length`. Everything
//! seen is recorded so tests can assert on it.
//!
//! The HTTP/1.1 plumbing (module `http`) is deliberately minimal: keep-alive and
//! `Content-Length` bodies only; it serves the registry client under test, not the world.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::registry::Registry;

mod http;

use http::{form_pairs, Conn, Request};

/// The `service` the token server names in its challenges and expects in token requests.
pub const SERVICE: &str = "berth-test";

/// Response headers relayed from the backend registry.
const RELAYED_HEADERS: &[&str] = &[
    "content-type",
    "docker-content-digest",
    "docker-distribution-api-version",
    "docker-upload-uuid",
    "etag",
    "range",
    "content-range",
];

/// One request to the token endpoint, as the token server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` (docker token protocol) or `POST` (OAuth2 form).
    pub method: String,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `scope` parameters, in order.
    pub scopes: Vec<String>,
    /// Basic credentials sent, as (username, password).
    pub basic: Option<(String, String)>,
    /// OAuth2 `grant_type` (POST only).
    pub grant_type: Option<String>,
    /// OAuth2 `refresh_token` (POST only).
    pub refresh_token: Option<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

/// One request to the `/v2/` API, as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRequest {
    /// HTTP method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Whether the request carried a bearer token (valid or not).
    pub had_token: bool,
    /// Whether it was forwarded to the backend (token valid for the scope it needs).
    pub forwarded: bool,
    /// Status code returned to the client.
    pub status: u16,
}

#[derive(Default)]
struct State {
    /// Issued tokens and the scopes they grant.
    tokens: HashMap<String, Vec<String>>,
    token_requests: Vec<TokenRequest>,
    registry_requests: Vec<RegistryRequest>,
}

struct Shared {
    /// Basic credentials that get a token; `None` with `anonymous` only.
    credentials: Option<(String, String)>,
    /// Issue tokens to requests without credentials.
    anonymous: bool,
    /// The realm named in challenges (normally this server's `/token`).
    realm: Mutex<String>,
    backend_url: String,
    self_url: String,
    http: reqwest::Client,
    counter: AtomicU64,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn realm(&self) -> MutexGuard<'_, String> {
        self.realm.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mint(&self, scopes: Vec<String>) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = format!("{}:{n}:{now}:{}", std::process::id(), self.self_url);
        let token = format!("bt-{}", hex::encode(&Sha256::digest(seed.as_bytes())[..20]));
        self.state().tokens.insert(token.clone(), scopes);
        token
    }
}

/// A token-authenticating proxy in front of a backend [`Registry`]; stops on drop.
pub struct TokenRegistry {
    shared: Arc<Shared>,
    port: u16,
    server: JoinHandle<()>,
    // Dropped after the server task is aborted (field order).
    backend: Registry,
}

impl TokenRegistry {
    /// Starts a token server that issues tokens only to requests carrying basic `user`/`pass`.
    pub async fn start(backend: Registry, user: &str, pass: &str) -> anyhow::Result<Self> {
        Self::start_inner(backend, Some((user.to_owned(), pass.to_owned())), false).await
    }

    /// Starts a token server that issues tokens to anyone, with or without credentials (as
    /// Docker Hub does for public images); still no access without a token.
    pub async fn start_anonymous(backend: Registry) -> anyhow::Result<Self> {
        Self::start_inner(backend, None, true).await
    }

    async fn start_inner(
        backend: Registry,
        credentials: Option<(String, String)>,
        anonymous: bool,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the token registry on 127.0.0.1:0")?;
        let port = listener.local_addr().context("local_addr")?.port();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("proxy http client")?;
        let self_url = format!("http://127.0.0.1:{port}");
        let shared = Arc::new(Shared {
            credentials,
            anonymous,
            realm: Mutex::new(format!("{self_url}/token")),
            backend_url: backend.base_url(),
            self_url,
            http,
            counter: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        });
        let server = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            shared,
            port,
            server,
            backend,
        })
    }

    /// The registry behind the proxy (push images to it directly).
    pub fn backend(&self) -> &Registry {
        &self.backend
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`: the registry host as it appears in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.shared.self_url.clone()
    }

    /// The realm challenges name: `http://127.0.0.1:<port>/token` unless [`Self::set_realm`].
    pub fn realm(&self) -> String {
        self.shared.realm().clone()
    }

    /// Names another token endpoint in challenges (e.g. a dead port, to test an unreachable
    /// token server).
    pub fn set_realm(&self, realm: &str) {
        *self.shared.realm() = realm.to_owned();
    }

    /// Full image reference through the proxy: `127.0.0.1:<port>/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// Issues a token for `scopes` (e.g. `repository:bt/busybox:pull`) without a token request,
    /// as a credential helper would hand one to the kubelet.
    pub fn issue_token(&self, scopes: &[&str]) -> String {
        self.shared
            .mint(scopes.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Every token request so far, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.state().token_requests.clone()
    }

    /// Every `/v2/` request so far, in order.
    pub fn registry_requests(&self) -> Vec<RegistryRequest> {
        self.shared.state().registry_requests.clone()
    }

    /// Forgets the recorded requests (issued tokens stay valid).
    pub fn clear_records(&self) {
        let mut st = self.shared.state();
        st.token_requests.clear();
        st.registry_requests.clear();
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut conn = Conn::new(stream);
    // Errors end the connection; the client sees a closed or truncated response.
    while let Ok(Some(req)) = conn.read_request().await {
        let close = req.wants_close();
        let path = req.target.split('?').next().unwrap_or_default().to_owned();
        let served = if path == "/token" {
            serve_token(&mut conn, &shared, &req).await
        } else if path == "/v2" || path.starts_with("/v2/") {
            serve_registry(&mut conn, &shared, &req, &path).await
        } else {
            conn.respond(404, &[], b"not found\n", req.method == "HEAD")
                .await
        };
        if served.is_err() || close {
            break;
        }
    }
}

fn json_headers() -> Vec<(String, String)> {
    vec![("Content-Type".into(), "application/json".into())]
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.header("authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

async fn serve_token(conn: &mut Conn, shared: &Shared, req: &Request) -> anyhow::Result<()> {
    let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut params = form_pairs(query);
    if req.method == "POST" {
        params.extend(form_pairs(&String::from_utf8_lossy(&req.body)));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let service = get("service");
    let grant_type = get("grant_type");
    let refresh_token = get("refresh_token");
    // OAuth2 password grant carries the credentials in the form instead of a header.
    let form_credentials = match (grant_type.as_deref(), get("username"), get("password")) {
        (Some("password"), Some(u), Some(p)) => Some((u, p)),
        _ => None,
    };
    let basic = basic_credentials(req).or(form_credentials);
    let creds_ok = match (&basic, &shared.credentials) {
        (Some(sent), Some(want)) => sent == want,
        (Some(_), None) => shared.anonymous,
        (None, _) => shared.anonymous,
    };
    // OAuth2: a refresh token earlier issued by this server is as good as the credentials.
    let refresh_ok = grant_type.as_deref() == Some("refresh_token")
        && refresh_token
            .as_ref()
            .is_some_and(|t| shared.state().tokens.contains_key(t));
    let known_method = req.method == "GET" || req.method == "POST";
    let granted = known_method && service.as_deref() == Some(SERVICE) && (creds_ok || refresh_ok);
    shared.state().token_requests.push(TokenRequest {
        method: req.method.clone(),
        service,
        scopes: scopes.clone(),
        basic,
        grant_type,
        refresh_token,
        granted,
    });
    if !granted {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        let mut headers = json_headers();
        headers.push((
            "WWW-Authenticate".into(),
            format!("Basic realm=\"{SERVICE}\""),
        ));
        return conn.respond(401, &headers, body, false).await;
    }
    let token = shared.mint(scopes);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
    })
    .to_string();
    conn.respond(200, &json_headers(), body.as_bytes(), false)
        .await
}

/// The repository a `/v2/<name>/(manifests|blobs|tags)/...` path names.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .map(|end| &rest[..end])
        .filter(|name| !name.is_empty())
}

/// Whether `scopes` grant `action` on repository `repo`.
fn grants(scopes: &[String], repo: &str, action: &str) -> bool {
    scopes.iter().any(|s| {
        let mut parts = s.rsplitn(2, ':');
        let (Some(actions), Some(kind_name)) = (parts.next(), parts.next()) else {
            return false;
        };
        kind_name == format!("repository:{repo}")
            && actions.split(',').any(|a| a == action || a == "*")
    })
}

async fn serve_registry(
    conn: &mut Conn,
    shared: &Shared,
    req: &Request,
    path: &str,
) -> anyhow::Result<()> {
    let head_only = req.method == "HEAD";
    let repo = repository_of(path);
    let action = if matches!(req.method.as_str(), "GET" | "HEAD") {
        "pull"
    } else {
        "push"
    };
    let token = req.header("authorization").and_then(|v| {
        let (scheme, t) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
    });
    let granted = token.and_then(|t| shared.state().tokens.get(t).cloned());
    let (allowed, error) = match (&granted, repo) {
        (None, _) if token.is_some() => (false, Some("invalid_token")),
        (None, _) => (false, None),
        (Some(_), None) => (true, None),
        (Some(scopes), Some(repo)) if grants(scopes, repo, action) => (true, None),
        (Some(_), Some(_)) => (false, Some("insufficient_scope")),
    };
    if !allowed {
        let realm = shared.realm().clone();
        let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
        if let Some(repo) = repo {
            challenge.push_str(&format!(",scope=\"repository:{repo}:{action}\""));
        }
        if let Some(e) = error {
            challenge.push_str(&format!(",error=\"{e}\""));
        }
        let mut headers = json_headers();
        headers.push(("WWW-Authenticate".into(), challenge));
        headers.push((
            "Docker-Distribution-Api-Version".into(),
            "registry/2.0".into(),
        ));
        let body = serde_json::json!({"errors": [{
            "code": "UNAUTHORIZED",
            "message": "authentication required",
            "detail": repo.map(|r| serde_json::json!([{"Type": "repository", "Name": r, "Action": action}])),
        }]})
        .to_string();
        shared.state().registry_requests.push(RegistryRequest {
            method: req.method.clone(),
            target: req.target.clone(),
            had_token: token.is_some(),
            forwarded: false,
            status: 401,
        });
        return conn
            .respond(401, &headers, body.as_bytes(), head_only)
            .await;
    }
    let status = forward(conn, shared, req).await?;
    shared.state().registry_requests.push(RegistryRequest {
        method: req.method.clone(),
        target: req.target.clone(),
        had_token: true,
        forwarded: true,
        status,
    });
    Ok(())
}

/// Forwards `req` to the backend and relays the response; returns its status.
async fn forward(conn: &mut Conn, shared: &Shared, req: &Request) -> anyhow::Result<u16> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).context("method")?;
    let head_only = method == reqwest::Method::HEAD;
    let mut rb = shared
        .http
        .request(method, format!("{}{}", shared.backend_url, req.target));
    for name in ["accept", "content-type", "range", "if-none-match"] {
        for (_, v) in req.headers.iter().filter(|(n, _)| n == name) {
            rb = rb.header(name, v);
        }
    }
    if !req.body.is_empty() {
        rb = rb.body(req.body.clone());
    }
    let mut resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("backend unreachable: {e}\n");
            conn.respond(502, &[], msg.as_bytes(), head_only).await?;
            return Ok(502);
        }
    };
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = Vec::new();
    for name in RELAYED_HEADERS {
        for v in resp.headers().get_all(*name) {
            headers.push((
                (*name).to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    if let Some(loc) = resp.headers().get(reqwest::header::LOCATION) {
        let loc = loc.to_str().unwrap_or_default();
        let loc = match loc.strip_prefix(&shared.backend_url) {
            Some(rest) => format!("{}{rest}", shared.self_url),
            None => loc.to_owned(),
        };
        headers.push(("location".into(), loc));
    }
    let declared: Option<u64> = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let no_body = head_only || status == 204 || status == 304;
    match declared {
        Some(len) => {
            conn.write_head(status, &headers, len).await?;
            if no_body {
                return Ok(status);
            }
            let mut sent = 0u64;
            while let Some(chunk) = resp.chunk().await.context("backend body")? {
                sent += chunk.len() as u64;
                if sent > len {
                    bail!("backend sent more than its Content-Length");
                }
                conn.write_body(&chunk).await?;
            }
            if sent != len {
                bail!("backend body ended after {sent} of {len} bytes");
            }
        }
        None => {
            // No length from the backend: buffer to give the client one.
            let body = if no_body {
                Vec::new()
            } else {
                resp.bytes().await.context("backend body")?.to_vec()
            };
            conn.respond(status, &headers, &body, no_body).await?;
        }
    }
    Ok(status)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_scopes() {
        assert_eq!(repository_of("/v2/a/b/manifests/1"), Some("a/b"));
        assert_eq!(repository_of("/v2/a/blobs/uploads/x"), Some("a"));
        assert_eq!(repository_of("/v2/"), None);
        let scopes = vec!["repository:a/b:pull,push".to_owned()];
        assert!(grants(&scopes, "a/b", "pull"));
        assert!(grants(&scopes, "a/b", "push"));
        assert!(!grants(&scopes, "a", "pull"));
    }
}
