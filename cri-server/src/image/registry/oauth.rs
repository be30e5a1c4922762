//! CRI `identity_token` as an OAuth2 refresh token, as containerd and docker use it: on a bearer
//! challenge the token is exchanged at the challenge's realm for an access token
//! (`grant_type=refresh_token`), and that access token is what the registry sees.
//!
//! Token servers without the OAuth2 POST endpoint (GCR answers 404, Artifactory 401, ACR 400) get
//! the docker token protocol's GET with the identity token as the basic-auth password, as
//! containerd falls back.

use std::time::Duration;

use serde::Deserialize;

use super::truncate;

/// The OAuth2 `client_id` berth names itself with (containerd says "containerd-client").
pub const CLIENT_ID: &str = "berth";

/// How long one token request may take, connection included.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A `WWW-Authenticate: Bearer` challenge: where to ask for a token and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerChallenge {
    /// The token endpoint URL.
    pub realm: String,
    /// The `service` to name in the token request.
    pub service: Option<String>,
    /// The scope(s) the registry asked for, space separated.
    pub scope: Option<String>,
}

impl BearerChallenge {
    /// Parses one `WWW-Authenticate` value; `None` unless it is a Bearer challenge with a realm.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (scheme, params) = value.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(params);
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Some(Self {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key=value` / `key="quoted, value"` pairs of a challenge, in order (RFC 7235 auth-params).
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            // End of input, or a bare token (a second challenge): nothing more for us.
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

/// The scopes to ask for: the challenge's plus `repository:<repository>:pull`, sorted and
/// deduplicated (as containerd merges a challenge's scope with the request's).
pub fn pull_scopes(challenge_scope: Option<&str>, repository: &str) -> Vec<String> {
    let mut scopes: Vec<String> = challenge_scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    scopes.push(format!("repository:{repository}:pull"));
    scopes.sort();
    scopes.dedup();
    scopes
}

/// Why no access token could be had for an identity token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The token server could not be reached (connection, TLS, timeout).
    #[error("token server {realm} unreachable: {detail}")]
    Unreachable {
        /// The token endpoint.
        realm: String,
        /// What failed.
        detail: String,
    },
    /// The token server answered with an error status.
    #[error("token server {realm} refused the identity token: HTTP {status}: {body}")]
    Refused {
        /// The token endpoint.
        realm: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The token server answered 2xx without a usable token, or the realm is not a URL.
    #[error("token server {realm}: {detail}")]
    BadResponse {
        /// The token endpoint.
        realm: String,
        /// What was wrong.
        detail: String,
    },
}

/// One exchange of an identity token for an access token.
#[derive(Clone, Copy, Debug)]
pub struct RefreshRequest<'a> {
    /// The challenge answered.
    pub challenge: &'a BearerChallenge,
    /// The scopes wanted (see [`pull_scopes`]).
    pub scopes: &'a [String],
    /// The CRI `identity_token`.
    pub refresh_token: &'a str,
}

/// Never print the identity token itself.
struct RedactedToken<'a>(&'a str);

impl std::fmt::Debug for RedactedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// What a token endpoint answers: OAuth2 has `access_token`, the docker GET protocol `token`
/// (or both, meaning the same).
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Exchanges `req.refresh_token` for an access token at the challenge's realm: OAuth2 POST, then
/// the GET token protocol when the server has no POST endpoint (404, 401, 400).
pub async fn exchange(
    http: &reqwest::Client,
    req: RefreshRequest<'_>,
) -> Result<String, OAuthError> {
    tracing::debug!(
        realm = %req.challenge.realm,
        scopes = ?req.scopes,
        token = ?RedactedToken(req.refresh_token),
        "exchanging identity token"
    );
    match post(http, req).await {
        Err(OAuthError::Refused {
            status: 400 | 401 | 404,
            ..
        }) => {
            tracing::debug!(realm = %req.challenge.realm, "OAuth2 POST refused, trying GET");
            get(http, req).await
        }
        other => other,
    }
}

/// `POST realm` with the OAuth2 refresh-token grant form.
async fn post(http: &reqwest::Client, req: RefreshRequest<'_>) -> Result<String, OAuthError> {
    let request = http
        .post(&req.challenge.realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(refresh_form(req));
    let token = send(request, &req.challenge.realm).await?;
    token
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| no_token(&req.challenge.realm))
}

/// `GET realm?service=..&scope=..` with the identity token as the basic-auth password.
async fn get(http: &reqwest::Client, req: RefreshRequest<'_>) -> Result<String, OAuthError> {
    let realm = &req.challenge.realm;
    let mut url = reqwest::Url::parse(realm).map_err(|e| OAuthError::BadResponse {
        realm: realm.clone(),
        detail: format!("realm is not a URL: {e}"),
    })?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = req.challenge.service.as_deref().filter(|s| !s.is_empty()) {
            query.append_pair("service", service);
        }
        for scope in req.scopes {
            query.append_pair("scope", scope);
        }
    }
    let request = http.get(url).basic_auth("", Some(req.refresh_token));
    let token = send(request, realm).await?;
    token
        .access_token
        .filter(|t| !t.is_empty())
        .or(token.token.filter(|t| !t.is_empty()))
        .ok_or_else(|| no_token(realm))
}

/// The OAuth2 refresh-token grant, form encoded.
fn refresh_form(req: RefreshRequest<'_>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    if !req.scopes.is_empty() {
        form.append_pair("scope", &req.scopes.join(" "));
    }
    form.append_pair("service", req.challenge.service.as_deref().unwrap_or(""));
    form.append_pair("client_id", CLIENT_ID);
    form.append_pair("grant_type", "refresh_token");
    form.append_pair("refresh_token", req.refresh_token);
    form.finish()
}

fn no_token(realm: &str) -> OAuthError {
    OAuthError::BadResponse {
        realm: realm.to_owned(),
        detail: "the response carries no token".into(),
    }
}

/// Sends a token request; 2xx/3xx bodies are decoded, 4xx/5xx are refusals (as containerd).
async fn send(request: reqwest::RequestBuilder, realm: &str) -> Result<TokenResponse, OAuthError> {
    let unreachable = |e: reqwest::Error| OAuthError::Unreachable {
        realm: realm.to_owned(),
        detail: super::error_chain(&e),
    };
    let resp = request
        .timeout(TOKEN_TIMEOUT)
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(unreachable)?;
    if !(200..400).contains(&status) {
        return Err(OAuthError::Refused {
            realm: realm.to_owned(),
            status,
            body: truncate(String::from_utf8_lossy(&body).trim(), 200),
        });
    }
    serde_json::from_slice(&body).map_err(|e| OAuthError::BadResponse {
        realm: realm.to_owned(),
        detail: format!("undecodable token response: {e}"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = BearerChallenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
        let c = BearerChallenge::parse(r#"bearer  Realm=http://x/t , error="a \"b\"""#).unwrap();
        assert_eq!(c.realm, "http://x/t");
        assert_eq!(c.service, None);
        assert!(BearerChallenge::parse(r#"Basic realm="x""#).is_none());
        assert!(BearerChallenge::parse(r#"Bearer service="x""#).is_none());
        assert!(BearerChallenge::parse("Bearer").is_none());
        assert_eq!(
            auth_params(r#"a="1,2", b=3,c="x\\y""#),
            [
                ("a".to_owned(), "1,2".to_owned()),
                ("b".to_owned(), "3".to_owned()),
                ("c".to_owned(), "x\\y".to_owned())
            ]
        );
    }

    #[test]
    fn scopes_merge_the_challenge_and_the_repository() {
        assert_eq!(pull_scopes(None, "a/b"), ["repository:a/b:pull"]);
        assert_eq!(
            pull_scopes(Some("repository:a/b:pull"), "a/b"),
            ["repository:a/b:pull"]
        );
        assert_eq!(
            pull_scopes(Some("registry:catalog:* repository:a/b:pull"), "a/b"),
            ["registry:catalog:*", "repository:a/b:pull"]
        );
    }

    #[test]
    fn refresh_form_is_containerds() {
        let challenge = BearerChallenge {
            realm: "http://x/token".into(),
            service: Some("reg svc".into()),
            scope: None,
        };
        let scopes = pull_scopes(Some("registry:catalog:*"), "a/b");
        let form = refresh_form(RefreshRequest {
            challenge: &challenge,
            scopes: &scopes,
            refresh_token: "r&t=1",
        });
        assert_eq!(
            form,
            "scope=registry%3Acatalog%3A*+repository%3Aa%2Fb%3Apull&service=reg+svc\
             &client_id=berth&grant_type=refresh_token&refresh_token=r%26t%3D1"
        );
    }

    #[test]
    fn the_token_is_never_printed() {
        let shown = format!("{:?}", RedactedToken("s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
