//! A real OCI distribution registry (Debian's `docker-registry`) on a free 127.0.0.1 port, with
//! optional htpasswd basic auth, and a small push/fetch client for the distribution HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// Path of Debian's registry binary (package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A running registry; killed and its storage removed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    auth: Option<(String, String)>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Registry {
    /// Starts an anonymous registry.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts a registry that requires basic auth with `user`/`pass` for everything.
    pub async fn start_with_auth(user: &str, pass: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some((user.to_owned(), pass.to_owned()))).await
    }

    async fn start_inner(auth: Option<(String, String)>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bt-reg-")
            .tempdir()
            .context("registry tempdir")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).context("registry storage dir")?;
        let port = crate::slot::free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \
             127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, pass)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .context("running htpasswd (package apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).context("writing htpasswd")?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).context("writing registry config")?;
        // Everything that can fail comes before the spawn: once running, the child is owned by
        // the returned value, which kills it on drop.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .context("http client")?;
        let log = std::fs::File::create(dir.path().join("registry.log")).context("registry log")?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_BIN}"))?;
        let reg = Self {
            child,
            port,
            auth,
            dir,
            http,
        };
        reg.wait_ready().await?;
        Ok(reg)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/v2/", self.base_url());
        let http = self.http.clone();
        crate::wait::until(
            "registry GET /v2/",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let r = http.get(&url).send().await?;
                    let s = r.status().as_u16();
                    Ok((s == 200 || s == 401).then_some(()))
                }
            },
        )
        .await
        .with_context(|| format!("registry log:\n{}", self.log()))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`: the registry host as it appears in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Full image reference `127.0.0.1:<port>/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// The credentials this registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps its blobs and manifests.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base_url())
        }
    }

    /// Uploads a blob (monolithic upload) and returns its digest. Existing blobs are skipped.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let head = format!("{}/v2/{repo}/blobs/{digest}", self.base_url());
        let r = self
            .authed(self.http.head(&head))
            .send()
            .await
            .context("HEAD blob")?;
        if r.status().is_success() {
            return Ok(digest);
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base_url());
        let r = self
            .authed(self.http.post(&start))
            .send()
            .await
            .context("POST blob upload")?;
        if r.status().as_u16() != 202 {
            bail!(
                "POST {start}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let location = r
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("upload response has no Location")?
            .to_owned();
        let mut url = self.absolute(&location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let r = self
            .authed(self.http.put(&url))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .context("PUT blob")?;
        if r.status().as_u16() != 201 {
            bail!(
                "PUT blob {digest}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(digest)
    }

    /// Uploads a manifest (or index) under `reference` (a tag or a digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base_url());
        let r = self
            .authed(self.http.put(&url))
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .context("PUT manifest")?;
        if r.status().as_u16() != 201 {
            bail!(
                "PUT {url}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(sha256_digest(bytes))
    }

    /// Fetches a manifest; returns (content type, bytes).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> anyhow::Result<(String, Vec<u8>)> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base_url());
        let accept = [
            crate::image::MEDIA_OCI_INDEX,
            crate::image::MEDIA_OCI_MANIFEST,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
        .join(", ");
        let r = self
            .authed(self.http.get(&url))
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .context("GET manifest")?;
        if !r.status().is_success() {
            bail!("GET {url}: {}", r.status());
        }
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((ct, r.bytes().await.context("manifest body")?.to_vec()))
    }

    /// Fetches a blob.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base_url());
        let r = self
            .authed(self.http.get(&url))
            .send()
            .await
            .context("GET blob")?;
        if !r.status().is_success() {
            bail!("GET {url}: {}", r.status());
        }
        Ok(r.bytes().await.context("blob body")?.to_vec())
    }

    /// An unauthenticated GET of `path` (e.g. `/v2/`), returning the status code.
    pub async fn anonymous_status(&self, path: &str) -> anyhow::Result<u16> {
        let r = self
            .http
            .get(format!("{}{path}", self.base_url()))
            .send()
            .await?;
        Ok(r.status().as_u16())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
