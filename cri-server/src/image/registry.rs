//! The registry client: one oci-client per registry host (scheme, TLS trust), credentials from the
//! CRI `AuthConfig` (an `identity_token` is exchanged in the `oauth` submodule), and classification
//! of registry failures into what the kubelet should see.

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::error::{Error, Result};
use crate::image::hosts::{RegistryHost, Scheme};
use crate::image::manifest::ACCEPTED_MANIFEST_TYPES;
use crate::image::reference::ImageRef;

mod oauth;

use oauth::{BearerChallenge, OAuthError, RefreshRequest};

/// Credentials for a pull, from the CRI `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `server_address` the kubelet matched the credentials to; empty means any host.
    pub server_address: String,
    /// What to send.
    pub auth: Auth,
}

/// How to authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (bearer challenges are still answered anonymously).
    #[default]
    Anonymous,
    /// HTTP basic, or the credentials for a bearer token endpoint.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A ready bearer token (`registry_token`), sent to the registry as is.
    Bearer(String),
    /// An OAuth2 refresh token (`identity_token`), exchanged at the registry's token server
    /// for an access token on each pull (as containerd and docker do).
    IdentityToken(String),
}

impl std::fmt::Debug for Auth {
    /// Never prints secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => write!(f, "Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Auth::Bearer(_) => write!(f, "Bearer(<redacted>)"),
            Auth::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials({:?}, server {:?})",
            self.auth, self.server_address
        )
    }
}

impl Credentials {
    /// Builds credentials from the CRI fields: `username`/`password`, or `auth` (base64 `user:pass`),
    /// or `identity_token` (a refresh token) / `registry_token` (a bearer token).
    pub fn from_cri(auth: Option<&k8s_cri::v1::AuthConfig>) -> Result<Self> {
        let Some(a) = auth else {
            return Ok(Self::default());
        };
        let server_address = strip_scheme(&a.server_address)
            .trim_end_matches('/')
            .to_owned();
        let auth = if !a.registry_token.is_empty() {
            Auth::Bearer(a.registry_token.clone())
        } else if !a.identity_token.is_empty() {
            Auth::IdentityToken(a.identity_token.clone())
        } else if !a.username.is_empty() {
            Auth::Basic {
                username: a.username.clone(),
                password: a.password.clone(),
            }
        } else if !a.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .map_err(|e| {
                    Error::InvalidArgument(format!("auth config: `auth` is not base64: {e}"))
                })?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| Error::InvalidArgument("auth config: `auth` is not UTF-8".into()))?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                Error::InvalidArgument("auth config: `auth` is not \"user:password\"".into())
            })?;
            Auth::Basic {
                username: username.into(),
                password: password.into(),
            }
        } else {
            Auth::Anonymous
        };
        Ok(Self {
            server_address,
            auth,
        })
    }

    /// Whether these credentials go to `host` when pulling from `registry`: when the kubelet did
    /// not scope them, or scoped them to that very host, or to the registry and `host` is its
    /// upstream (as containerd: credentials for the upstream are not sent to mirrors).
    fn applies_to(&self, host: &RegistryHost, registry: &str) -> bool {
        let address = self.server_address.as_str();
        let hub_alias = registry == crate::image::reference::DEFAULT_REGISTRY
            && [
                "index.docker.io",
                "index.docker.io/v1",
                "registry-1.docker.io",
            ]
            .contains(&address);
        address.is_empty()
            || address == host.host
            || (host.is_server && (address == registry || hub_alias))
    }

    /// What oci-client gets for `host`, and the identity token to exchange first, if any.
    fn for_host(&self, host: &RegistryHost, registry: &str) -> (RegistryAuth, Option<String>) {
        if !self.applies_to(host, registry) {
            return (RegistryAuth::Anonymous, None);
        }
        match &self.auth {
            Auth::Anonymous => (RegistryAuth::Anonymous, None),
            Auth::Basic { username, password } => (
                RegistryAuth::Basic(username.clone(), password.clone()),
                None,
            ),
            Auth::Bearer(token) => (RegistryAuth::Bearer(token.clone()), None),
            Auth::IdentityToken(token) => (RegistryAuth::Anonymous, Some(token.clone())),
        }
    }
}

fn strip_scheme(s: &str) -> &str {
    s.split_once("://").map_or(s, |(_, rest)| rest)
}

/// Why talking to a registry host failed.
#[derive(Debug)]
pub enum RegistryError {
    /// 401 or a rejected token request.
    Unauthorized(String),
    /// The manifest or blob does not exist there.
    NotFound(String),
    /// Connection refused, DNS, TLS handshake, timeout.
    Unreachable(String),
    /// Anything else (5xx, protocol violations, digest mismatch).
    Other(String),
}

impl RegistryError {
    /// Ranks errors so that the most telling one is reported when every host failed.
    pub fn rank(&self) -> u8 {
        match self {
            RegistryError::Unauthorized(_) => 3,
            RegistryError::NotFound(_) => 2,
            RegistryError::Other(_) => 1,
            RegistryError::Unreachable(_) => 0,
        }
    }

    /// The berthd error for a failed pull of `image`.
    pub fn into_error(self, image: &str) -> Error {
        match self {
            RegistryError::Unauthorized(m) => Error::Unauthorized(format!(
                "failed to pull and unpack image {image:?}: failed to resolve reference: {m}: 401 Unauthorized"
            )),
            RegistryError::NotFound(m) => Error::NotFound(format!("image {image} not found in registry: {m}")),
            RegistryError::Unreachable(m) => {
                Error::Unavailable(format!("failed to pull image {image:?}: registry unreachable: {m}"))
            }
            RegistryError::Other(m) => Error::Internal(format!("failed to pull and unpack image {image:?}: {m}")),
        }
    }

    fn classify(host: &RegistryHost, err: OciDistributionError) -> Self {
        let at = host.url();
        match err {
            OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized(url),
            OciDistributionError::AuthenticationFailure(reason) => {
                RegistryError::Unauthorized(format!(
                    "failed to authorize at {at}: token request refused: {}",
                    truncate(reason.trim(), 200)
                ))
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let not_found = envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                });
                let unauthorized = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                let msg = format!("{url}: {envelope}");
                if unauthorized {
                    RegistryError::Unauthorized(msg)
                } else if not_found {
                    RegistryError::NotFound(msg)
                } else {
                    RegistryError::Other(msg)
                }
            }
            OciDistributionError::ServerError { code: 404, url, .. } => {
                RegistryError::NotFound(url)
            }
            OciDistributionError::ServerError {
                code: 401 | 403,
                url,
                ..
            } => RegistryError::Unauthorized(url),
            // Rate limited or failing: the registry is there but cannot serve now (Unavailable,
            // and a mirror answering so loses to the upstream's own answer).
            OciDistributionError::ServerError {
                code: code @ (429 | 500..=599),
                url,
                message,
            } => RegistryError::Unreachable(format!(
                "{url}: HTTP {code}: {}",
                truncate(message.trim(), 200)
            )),
            OciDistributionError::ImageManifestNotFoundError(m) => RegistryError::NotFound(m),
            OciDistributionError::RequestError(e) => {
                if e.is_connect() || e.is_timeout() || e.is_request() {
                    RegistryError::Unreachable(format!("{at}: {}", error_chain(&e)))
                } else {
                    RegistryError::Other(format!("{at}: {}", error_chain(&e)))
                }
            }
            other => RegistryError::Other(format!("{at}: {}", error_chain(&other))),
        }
    }
}

/// At most `max` bytes of `s` (on a char boundary), marked when cut: a token server's error body
/// can be a whole HTML page.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// An identity token to exchange, and the HTTP client (same TLS trust as the registry client)
/// to reach the token server with.
struct Refresh {
    token: String,
    http: reqwest::Client,
}

/// A client bound to one registry host, one repository and one set of credentials.
pub struct HostClient {
    client: Client,
    host: RegistryHost,
    registry: String,
    repository: String,
    /// Set for CRI `identity_token` credentials.
    refresh: Option<Refresh>,
    /// Set once the host's auth challenge has been answered: the credentials oci-client uses
    /// from then on (the access token, for an identity token).
    authorized: tokio::sync::OnceCell<RegistryAuth>,
}

impl HostClient {
    /// Builds the client for `host` serving `image`'s repository, and the credentials to pass to
    /// its calls. For an `identity_token` those are anonymous: the client exchanges the token and
    /// uses the access token it gets instead.
    pub fn new(
        host: &RegistryHost,
        image: &ImageRef,
        credentials: &Credentials,
    ) -> Result<(Self, RegistryAuth)> {
        let (auth, identity_token) = credentials.for_host(host, &image.registry);
        let mut certs = Vec::new();
        for path in &host.ca {
            let data = std::fs::read(path)
                .map_err(|e| Error::io(format!("reading CA {}", path.display()), e))?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: match host.scheme {
                Scheme::Https => ClientProtocol::Https,
                Scheme::Http => ClientProtocol::Http,
            },
            accept_invalid_certificates: host.skip_verify,
            extra_root_certificates: certs,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(15)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let refresh = match identity_token {
            Some(token) => Some(Refresh {
                token,
                http: token_client(host, &config.extra_root_certificates, config.user_agent)?,
            }),
            None => None,
        };
        let client = Client::try_from(config).map_err(|e| {
            Error::InvalidArgument(format!("registry host {}: {}", host.url(), error_chain(&e)))
        })?;
        let this = Self {
            client,
            host: host.clone(),
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            refresh,
            authorized: tokio::sync::OnceCell::new(),
        };
        Ok((this, auth))
    }

    /// The host this client talks to.
    pub fn host(&self) -> &RegistryHost {
        &self.host
    }

    fn reference(&self, tag: Option<&str>, digest: Option<&str>) -> Reference {
        // The upstream is addressed by its API host (registry-1.docker.io for docker.io); a
        // mirror is addressed as a mirror, so oci-client adds containerd's `?ns=<registry>`.
        let registry = if self.host.is_server {
            &self.host.host
        } else {
            &self.registry
        };
        let mut reference = match (digest, tag) {
            (Some(d), _) => {
                Reference::with_digest(registry.clone(), self.repository.clone(), d.to_owned())
            }
            (None, t) => Reference::with_tag(
                registry.clone(),
                self.repository.clone(),
                t.unwrap_or("latest").to_owned(),
            ),
        };
        if reference.resolve_registry() != self.host.host {
            reference.set_mirror_registry(self.host.host.clone());
        }
        reference
    }

    /// Answers the host's auth challenge (bearer token request, or basic) once per client.
    ///
    /// oci-client would otherwise do this lazily and, when the token server refuses the request,
    /// drop that error and go on anonymously: the pull then fails with a bare 401 on the manifest
    /// that does not say the credentials were refused, and an unreachable token server looks
    /// like bad credentials. Asking explicitly surfaces either failure as what it is.
    ///
    /// An identity token is exchanged for an access token first (see [`oauth`]); the credentials
    /// returned are the ones to use for every request of this client.
    async fn authorize(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> std::result::Result<RegistryAuth, RegistryError> {
        self.authorized
            .get_or_try_init(|| async {
                let auth = match &self.refresh {
                    Some(refresh) => self.exchange_identity_token(refresh).await?,
                    None => auth.clone(),
                };
                self.client
                    .auth(reference, &auth, RegistryOperation::Pull)
                    .await
                    .map_err(|e| RegistryError::classify(&self.host, e))?;
                Ok(auth)
            })
            .await
            .cloned()
    }

    /// Asks the host's `/v2/` for its challenge and trades the identity token for an access
    /// token at the bearer realm. A host that wants no auth gets none.
    async fn exchange_identity_token(
        &self,
        refresh: &Refresh,
    ) -> std::result::Result<RegistryAuth, RegistryError> {
        let at = self.host.url();
        let resp = refresh
            .http
            .get(format!("{at}/"))
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable(format!("{at}: {}", error_chain(&e))))?;
        let challenge = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(BearerChallenge::parse);
        let Some(challenge) = challenge else {
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                return Err(RegistryError::Unauthorized(format!(
                    "failed to authorize at {at}: the registry offers no bearer token server to \
                     exchange the identity token at"
                )));
            }
            return Ok(RegistryAuth::Anonymous);
        };
        let scopes = oauth::pull_scopes(challenge.scope.as_deref(), &self.repository);
        let request = RefreshRequest {
            challenge: &challenge,
            scopes: &scopes,
            refresh_token: &refresh.token,
        };
        match oauth::exchange(&refresh.http, request).await {
            Ok(token) => Ok(RegistryAuth::Bearer(token)),
            Err(e @ OAuthError::Unreachable { .. }) => Err(RegistryError::Unreachable(format!(
                "failed to authorize at {at}: {e}"
            ))),
            Err(e @ OAuthError::Refused { .. }) => Err(RegistryError::Unauthorized(format!(
                "failed to authorize at {at}: token request refused: {e}"
            ))),
            Err(e @ OAuthError::BadResponse { .. }) => Err(RegistryError::Other(format!(
                "failed to authorize at {at}: {e}"
            ))),
        }
    }

    /// Fetches a manifest by tag or digest: raw bytes (digest-verified) and its digest.
    pub async fn manifest(
        &self,
        auth: &RegistryAuth,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> std::result::Result<(Vec<u8>, String), RegistryError> {
        let reference = self.reference(tag, digest);
        let auth = self.authorize(&reference, auth).await?;
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFEST_TYPES)
            .await
            .map_err(|e| RegistryError::classify(&self.host, e))?;
        Ok((bytes.to_vec(), digest))
    }

    /// Opens a digest-verified byte stream of a blob.
    pub async fn blob_stream(
        &self,
        auth: &RegistryAuth,
        desc: &OciDescriptor,
    ) -> std::result::Result<
        impl futures::Stream<Item = std::result::Result<impl AsRef<[u8]> + Send + 'static, String>>
            + Unpin
            + Send,
        RegistryError,
    > {
        use futures::StreamExt;
        let reference = self.reference(None, Some(&desc.digest));
        let auth = self.authorize(&reference, auth).await?;
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &auth)
            .await;
        let stream = self
            .client
            .pull_blob_stream(&reference, desc)
            .await
            .map_err(|e| RegistryError::classify(&self.host, e))?;
        Ok(stream.map(|chunk| chunk.map_err(|e| error_chain(&e))))
    }
}

/// The HTTP client for token requests of an identity token: the registry client's TLS trust
/// (`skip_verify`, the host's CAs) and user agent.
fn token_client(
    host: &RegistryHost,
    certs: &[Certificate],
    user_agent: &str,
) -> Result<reqwest::Client> {
    let invalid = |e: &dyn std::error::Error| {
        Error::InvalidArgument(format!("registry host {}: {}", host.url(), error_chain(e)))
    };
    let roots = certs
        .iter()
        .map(reqwest::Certificate::try_from)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    reqwest::Client::builder()
        .danger_accept_invalid_certs(host.skip_verify)
        .tls_certs_merge(roots)
        .connect_timeout(std::time::Duration::from_secs(15))
        .timeout(std::time::Duration::from_secs(60))
        .user_agent(user_agent)
        .build()
        .map_err(|e| invalid(&e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_cri::v1::AuthConfig;

    #[test]
    fn busy_or_failing_registries_are_unavailable_not_internal() {
        let host = crate::image::hosts::RegistryHost {
            scheme: crate::image::hosts::Scheme::Http,
            host: "127.0.0.1:5000".into(),
            path: "/v2".into(),
            capabilities: crate::image::hosts::Capabilities {
                pull: true,
                resolve: true,
                push: false,
            },
            skip_verify: false,
            ca: Vec::new(),
            headers: Default::default(),
            is_server: true,
        };
        for code in [429, 500, 503] {
            let err = RegistryError::classify(
                &host,
                OciDistributionError::ServerError {
                    code,
                    url: "http://127.0.0.1:5000/v2/x/manifests/1".into(),
                    message: "slow down".into(),
                },
            );
            let status: tonic::Status = err.into_error("x:1").into();
            assert_eq!(
                status.code(),
                tonic::Code::Unavailable,
                "{code}: {status:?}"
            );
            assert!(
                status.message().contains(&format!("HTTP {code}")),
                "{status:?}"
            );
        }
        let teapot = RegistryError::classify(
            &host,
            OciDistributionError::ServerError {
                code: 418,
                url: "u".into(),
                message: String::new(),
            },
        );
        assert!(matches!(teapot, RegistryError::Other(_)));
    }

    #[test]
    fn cri_auth_forms() {
        let anon = Credentials::from_cri(None).unwrap();
        assert_eq!(anon.auth, Auth::Anonymous);
        let basic = Credentials::from_cri(Some(&AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            basic.auth,
            Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        let encoded = Credentials::from_cri(Some(&AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("user:pa:ss"),
            server_address: "https://127.0.0.1:5000/".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            encoded.auth,
            Auth::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(encoded.server_address, "127.0.0.1:5000");
        let token = Credentials::from_cri(Some(&AuthConfig {
            identity_token: "t".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(token.auth, Auth::IdentityToken("t".into()));
        let ready = Credentials::from_cri(Some(&AuthConfig {
            registry_token: "r".into(),
            identity_token: "t".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(ready.auth, Auth::Bearer("r".into()));
        assert!(Credentials::from_cri(Some(&AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        }))
        .is_err());
        let secret = Credentials {
            server_address: String::new(),
            auth: Auth::Bearer("s3cret".into()),
        };
        assert!(!format!("{secret:?}").contains("s3cret"));
        let secret = Credentials {
            server_address: String::new(),
            auth: Auth::IdentityToken("s3cret".into()),
        };
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn long_token_server_bodies_are_cut() {
        assert_eq!(truncate("short", 200), "short");
        let cut = truncate(&"é".repeat(150), 201);
        assert!(cut.ends_with("...") && cut.len() <= 203, "{cut}");
    }

    #[test]
    fn credentials_are_scoped_to_their_server() {
        let creds = Credentials {
            server_address: "registry.example".into(),
            auth: Auth::Basic {
                username: "u".into(),
                password: "p".into(),
            },
        };
        let hosts = crate::image::hosts::default_hosts("registry.example");
        assert!(matches!(
            creds.for_host(&hosts[0], "registry.example"),
            (RegistryAuth::Basic(..), None)
        ));
        let other = crate::image::hosts::default_hosts("other.example");
        assert!(matches!(
            creds.for_host(&other[0], "other.example"),
            (RegistryAuth::Anonymous, None)
        ));
        let unscoped = Credentials {
            server_address: String::new(),
            ..creds
        };
        assert!(matches!(
            unscoped.for_host(&other[0], "other.example"),
            (RegistryAuth::Basic(..), None)
        ));
        // An identity token is not handed to oci-client: it is exchanged first.
        let identity = Credentials {
            server_address: "registry.example".into(),
            auth: Auth::IdentityToken("t".into()),
        };
        assert_eq!(
            identity
                .for_host(&hosts[0], "registry.example")
                .1
                .as_deref(),
            Some("t")
        );
        assert!(matches!(
            identity.for_host(&hosts[0], "registry.example").0,
            RegistryAuth::Anonymous
        ));
        assert!(identity.for_host(&other[0], "other.example").1.is_none());
    }
}
