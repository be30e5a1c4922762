//! Bearer-token registry auth: berthd answers `WWW-Authenticate: Bearer` challenges with the CRI
//! credentials, fails clearly without them, sends a ready `registry_token` as is, and exchanges an
//! `identity_token` as an OAuth2 refresh token (as containerd).
//! The registry is a real `docker-registry` behind [`TokenRegistry`], a token-server proxy.

use anyhow::Context;
use berth_tests::cri::{self, code};
use berth_tests::token_registry::{TokenRegistry, SERVICE};
use berth_tests::{leaks, require_root, Berthd, BerthdOptions, ImageSpec, PushedImage, Registry};
use k8s_cri::v1 as k;
use tonic::Code;

const REPO: &str = "private/busybox";
const SCOPE: &str = "repository:private/busybox:pull";
const USER: &str = "puller";
const PASS: &str = "t0ken-pa55";

/// A backend registry with busybox (behind a manifest list) and the token proxy in front of it.
async fn token_registry(anonymous: bool) -> anyhow::Result<(TokenRegistry, PushedImage)> {
    let backend = Registry::start().await?;
    let image = ImageSpec::busybox()?
        .push_with_index(&backend, REPO, "1")
        .await?;
    let proxy = if anonymous {
        TokenRegistry::start_anonymous(backend).await?
    } else {
        TokenRegistry::start(backend, USER, PASS).await?
    };
    Ok((proxy, image))
}

async fn pull_status(
    d: &Berthd,
    image: &str,
    auth: Option<k::AuthConfig>,
) -> Result<String, tonic::Status> {
    d.img()
        .pull_image(k::PullImageRequest {
            image: Some(k::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// Every manifest and blob the proxy served went out with a valid token.
fn assert_served_with_token(proxy: &TokenRegistry) {
    let reqs = proxy.registry_requests();
    let forwarded: Vec<_> = reqs.iter().filter(|r| r.forwarded).collect();
    assert!(
        forwarded.iter().any(|r| r.target.contains("/manifests/"))
            && forwarded.iter().any(|r| r.target.contains("/blobs/")),
        "manifests and blobs must have been fetched with a token: {reqs:#?}"
    );
    assert!(
        reqs.iter()
            .filter(|r| r.target.contains("/blobs/"))
            .all(|r| r.forwarded && r.status < 300),
        "every blob request must succeed with a token: {reqs:#?}"
    );
}

/// The fixture itself: challenges, token issuance, byte-exact forwarding.
#[tokio::test(flavor = "multi_thread")]
async fn token_proxy_fixture_behaves_like_a_token_registry() -> anyhow::Result<()> {
    let (proxy, image) = token_registry(false).await?;
    let http = reqwest::Client::new();
    let base = proxy.base_url();

    let r = http.get(format!("{base}/v2/")).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let manifest_url = format!("{base}/v2/{REPO}/manifests/{}", image.manifest_digest);
    let r = http.get(&manifest_url).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r
        .headers()
        .get("www-authenticate")
        .context("401 without challenge")?
        .to_str()?
        .to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}\",service=\"{SERVICE}\",scope=\"{SCOPE}\"",
            proxy.realm()
        )
    );

    let token_url = format!(
        "{}?service={SERVICE}&scope=repository%3Aprivate%2Fbusybox%3Apull",
        proxy.realm()
    );
    let denied = http.get(&token_url).send().await?;
    assert_eq!(denied.status().as_u16(), 401, "anonymous token request");
    let wrong = http
        .get(&token_url)
        .basic_auth(USER, Some("wrong"))
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401, "wrong password");
    let ok = http
        .get(&token_url)
        .basic_auth(USER, Some(PASS))
        .send()
        .await?;
    assert_eq!(ok.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_slice(&ok.bytes().await?)?;
    let token = body["token"].as_str().context("no token")?.to_owned();
    assert_eq!(body["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(body["expires_in"].as_u64(), Some(300));
    let seen = proxy.token_requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(seen[0].basic, None);
    assert_eq!(seen[1].basic, Some((USER.into(), "wrong".into())));
    assert_eq!(seen[2].basic, Some((USER.into(), PASS.into())));
    assert_eq!(seen[2].scopes, [SCOPE]);
    assert_eq!(seen[2].service.as_deref(), Some(SERVICE));
    assert_eq!(
        seen.iter().map(|t| t.granted).collect::<Vec<_>>(),
        [false, false, true]
    );

    // With the token: the manifest and the blob arrive byte for byte, with their headers.
    let r = http
        .get(&manifest_url)
        .bearer_auth(&token)
        .header("accept", berth_tests::image::MEDIA_OCI_MANIFEST)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let digest = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert_eq!(digest.as_deref(), Some(image.manifest_digest.as_str()));
    let (_, want) = proxy
        .backend()
        .get_manifest(REPO, &image.manifest_digest)
        .await?;
    assert_eq!(r.bytes().await?.to_vec(), want);
    let config = proxy.backend().get_blob(REPO, &image.config_digest).await?;
    let blob_url = format!("{base}/v2/{REPO}/blobs/{}", image.config_digest);
    let head = http.head(&blob_url).bearer_auth(&token).send().await?;
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        head.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(config.len().to_string().as_str())
    );
    let got = http.get(&blob_url).bearer_auth(&token).send().await?;
    assert_eq!(got.bytes().await?.to_vec(), config);
    // A token for another repository does not open this one.
    let other = proxy.issue_token(&["repository:other:pull"]);
    let r = http.get(&blob_url).bearer_auth(&other).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(&blob_url).bearer_auth("forged").send().await?;
    assert_eq!(r.status().as_u16(), 401);
    // Not HTTP at all (berthd tries https first on loopback): the connection is closed.
    let mut s = tokio::net::TcpStream::connect(proxy.host()).await?;
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x16, 0x03, 0x01, 0x02, 0x00]).await?;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await
    .context("the proxy kept a TLS hello hanging")??;
    assert_eq!(n, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_credentials_through_token_server() -> anyhow::Result<()> {
    require_root!();
    let (proxy, image) = token_registry(false).await?;
    let d = Berthd::start(BerthdOptions::default()).await?;
    d.trust_plain_http(&proxy.host())?;
    let reference = proxy.reference(REPO, "1");

    // No credentials: the anonymous token request is refused, so is the pull.
    let status = pull_status(&d, &reference, None)
        .await
        .err()
        .context("anonymous pull through a token registry succeeded")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let msg = status.message().to_lowercase();
    assert!(
        msg.contains("failed to authorize")
            && msg.contains("token request refused")
            && msg.contains(&reference.to_lowercase()),
        "the message must name the image and say authorization failed: {status:?}"
    );
    let seen = proxy.token_requests();
    assert!(
        !seen.is_empty() && seen.iter().all(|t| t.basic.is_none() && !t.granted),
        "berthd should have asked for an anonymous token: {seen:#?}"
    );
    assert!(
        proxy.registry_requests().iter().all(|r| !r.forwarded),
        "nothing may be served without a token"
    );

    // Wrong password: same.
    proxy.clear_records();
    let wrong = k::AuthConfig {
        username: USER.into(),
        password: "wrong".into(),
        server_address: proxy.host(),
        ..Default::default()
    };
    let status = pull_status(&d, &reference, Some(wrong))
        .await
        .err()
        .context("pull with a wrong password succeeded")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The right credentials go to the token endpoint as basic auth; the token opens the pull.
    proxy.clear_records();
    let auth = k::AuthConfig {
        username: USER.into(),
        password: PASS.into(),
        server_address: proxy.host(),
        ..Default::default()
    };
    cri::pull(&d, &reference, Some(auth)).await?;
    let st = cri::image_status(&d, &reference)
        .await?
        .context("status after the token pull")?;
    assert_eq!(st.id, image.config_digest);
    let seen = proxy.token_requests();
    assert!(
        seen.iter().any(|t| t.granted
            && t.basic == Some((USER.into(), PASS.into()))
            && t.scopes == [SCOPE]
            && t.service.as_deref() == Some(SERVICE)),
        "the token endpoint must have seen the basic credentials: {seen:#?}"
    );
    assert_eq!(seen.len(), 1, "one token serves the whole pull: {seen:#?}");
    assert_served_with_token(&proxy);

    // A token server that cannot be reached is an outage, not bad credentials.
    d.img()
        .remove_image(k::RemoveImageRequest {
            image: Some(k::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
        })
        .await?;
    let dead = berth_tests::slot::free_port()?;
    proxy.set_realm(&format!("http://127.0.0.1:{dead}/token"));
    let auth = k::AuthConfig {
        username: USER.into(),
        password: PASS.into(),
        server_address: proxy.host(),
        ..Default::default()
    };
    let status = pull_status(&d, &reference, Some(auth))
        .await
        .err()
        .context("pull with an unreachable token server succeeded")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("127.0.0.1:{dead}")),
        "the message must name the token server: {status:?}"
    );
    leaks::assert_no_leaks(&d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_registry_token_skips_token_endpoint() -> anyhow::Result<()> {
    require_root!();
    let (proxy, image) = token_registry(false).await?;
    let d = Berthd::start(BerthdOptions::default()).await?;
    // No hosts.toml: the loopback registry is reached through berthd's plain-http fallback.
    let reference = proxy.reference(REPO, "1");

    let forged = k::AuthConfig {
        registry_token: "not-a-token".into(),
        server_address: proxy.host(),
        ..Default::default()
    };
    let status = pull_status(&d, &reference, Some(forged))
        .await
        .err()
        .context("pull with an invalid registry_token succeeded")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    proxy.clear_records();
    let token = proxy.issue_token(&[SCOPE]);
    let auth = k::AuthConfig {
        registry_token: token,
        server_address: proxy.host(),
        ..Default::default()
    };
    cri::pull(&d, &reference, Some(auth)).await?;
    let st = cri::image_status(&d, &reference)
        .await?
        .context("status after the registry_token pull")?;
    assert_eq!(st.id, image.config_digest);
    let seen = proxy.token_requests();
    assert!(
        seen.is_empty(),
        "a ready registry_token needs no token request: {seen:#?}"
    );
    assert_served_with_token(&proxy);
    leaks::assert_no_leaks(&d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_token_pull() -> anyhow::Result<()> {
    require_root!();
    // Docker Hub style: public images still need a token, which anyone gets.
    let (proxy, image) = token_registry(true).await?;
    let d = Berthd::start(BerthdOptions::default()).await?;
    d.trust_plain_http(&proxy.host())?;
    let reference = proxy.reference(REPO, "1");
    cri::pull(&d, &reference, None).await?;
    let st = cri::image_status(&d, &reference)
        .await?
        .context("status after the anonymous token pull")?;
    assert_eq!(st.id, image.config_digest);
    let seen = proxy.token_requests();
    assert!(
        seen.iter()
            .any(|t| t.granted && t.basic.is_none() && t.scopes == [SCOPE]),
        "{seen:#?}"
    );
    assert_served_with_token(&proxy);
    assert_eq!(
        code(&pull_status(&d, &proxy.reference("private/missing", "1"), None).await),
        Code::NotFound
    );
    leaks::assert_no_leaks(&d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_identity_token_exchanges_refresh_token() -> anyhow::Result<()> {
    require_root!();
    let (proxy, image) = token_registry(false).await?;
    let d = Berthd::start(BerthdOptions::default()).await?;
    d.trust_plain_http(&proxy.host())?;
    let reference = proxy.reference(REPO, "1");

    // A refresh token the server does not know: refused on the OAuth2 POST and on containerd's
    // GET fallback (identity token as the basic password); the pull fails naming the registry.
    let bad = k::AuthConfig {
        identity_token: "not-a-refresh-token".into(),
        server_address: proxy.host(),
        ..Default::default()
    };
    let status = pull_status(&d, &reference, Some(bad))
        .await
        .err()
        .context("pull with an unknown identity token succeeded")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(&proxy.host())
            && status.message().contains("token request refused"),
        "the message must name the registry and say the token was refused: {status:?}"
    );
    // hosts.toml names the registry as a host and as the server: each attempt is a POST, then a
    // GET fallback.
    let seen = proxy.token_requests();
    assert!(
        !seen.is_empty() && seen.len() % 2 == 0 && seen.iter().all(|t| !t.granted),
        "refused POST/GET pairs only: {seen:#?}"
    );
    for pair in seen.chunks(2) {
        assert_eq!(pair[0].method, "POST", "{seen:#?}");
        assert_eq!(pair[0].grant_type.as_deref(), Some("refresh_token"));
        assert_eq!(
            pair[0].refresh_token.as_deref(),
            Some("not-a-refresh-token")
        );
        assert_eq!(pair[0].scopes, [SCOPE]);
        assert_eq!(pair[1].method, "GET", "{seen:#?}");
        assert_eq!(
            pair[1].basic,
            Some((String::new(), "not-a-refresh-token".into()))
        );
    }
    assert!(
        proxy.registry_requests().iter().all(|r| !r.forwarded),
        "nothing may be served without a token"
    );

    // A refresh token the server issued, good for no repository by itself: berthd must trade it
    // for an access token scoped to the repository rather than send it to the registry.
    proxy.clear_records();
    let refresh = proxy.issue_token(&[]);
    let auth = k::AuthConfig {
        identity_token: refresh.clone(),
        server_address: proxy.host(),
        ..Default::default()
    };
    cri::pull(&d, &reference, Some(auth)).await?;
    let st = cri::image_status(&d, &reference)
        .await?
        .context("status after the identity-token pull")?;
    assert_eq!(st.id, image.config_digest);
    let seen = proxy.token_requests();
    assert_eq!(
        seen.len(),
        1,
        "one token exchange serves the whole pull: {seen:#?}"
    );
    let grant = &seen[0];
    assert!(grant.granted, "{seen:#?}");
    assert_eq!(grant.method, "POST");
    assert_eq!(grant.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(grant.refresh_token.as_deref(), Some(refresh.as_str()));
    assert_eq!(grant.scopes, [SCOPE]);
    assert_eq!(grant.service.as_deref(), Some(SERVICE));
    assert_eq!(grant.basic, None);
    assert_served_with_token(&proxy);
    assert!(
        proxy
            .registry_requests()
            .iter()
            .all(|r| r.status != 401 || !r.had_token),
        "the refresh token itself must never be sent to the registry: {:#?}",
        proxy.registry_requests()
    );
    leaks::assert_no_leaks(&d).await;

    // Without hosts.toml: the HTTPS attempt on loopback fails as unreachable, plain HTTP exchanges.
    let plain = Berthd::start(BerthdOptions::default()).await?;
    proxy.clear_records();
    let auth = k::AuthConfig {
        identity_token: refresh.clone(),
        server_address: proxy.host(),
        ..Default::default()
    };
    cri::pull(&plain, &reference, Some(auth)).await?;
    let seen = proxy.token_requests();
    assert!(
        seen.len() == 1 && seen[0].granted && seen[0].refresh_token == Some(refresh),
        "{seen:#?}"
    );
    leaks::assert_no_leaks(&plain).await;
    Ok(())
}
