//! Builds OCI images from Debian's static busybox, in memory, and pushes them to a [`Registry`].
//!
//! The standard image has three layers: (1, gzip) busybox with its applet links, `/etc/passwd`
//! with `root` and `app` (1000), `/data/`; (2, zstd) adds `data/old.txt` and `opaque/a.txt`;
//! (3, gzip) deletes `data/old.txt` (whiteout) and makes `opaque/` opaque with `opaque/b.txt`.

use std::io::Write;

use anyhow::Context;
use serde_json::json;

use crate::registry::{sha256_digest, Registry};

/// OCI image manifest media type.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// gzip layer media type.
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd layer media type.
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Uncompressed layer media type.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Docker schema 2 manifest media type.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer media type.
pub const MEDIA_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Debian's busybox-static binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into `/bin` of the test image.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "sleep", "id", "nc", "hostname", "ip", "ifconfig", "wget", "httpd",
    "true", "false", "env", "test", "grep", "ps", "readlink", "mkdir", "rm", "touch", "wc", "head",
    "tail", "stat", "pwd", "whoami", "seq", "timeout", "kill", "mount", "uname", "printf", "sed",
    "cut", "tr",
];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// One finished layer blob.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Media type (depends on the compression).
    pub media_type: String,
    /// The compressed blob as pushed.
    pub blob: Vec<u8>,
    /// Digest of the blob.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's rootfs.diff_ids entry).
    pub diff_id: String,
}

/// Builds a layer tarball in memory. Paths are written verbatim (hostile names included).
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar }
    }

    fn header(
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        size: u64,
    ) -> anyhow::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        // Raw name bytes: the tar crate's set_path refuses `..`, and hostile layers need it.
        let name = path.as_bytes();
        anyhow::ensure!(
            name.len() <= 100,
            "tar path too long for this builder: {path}"
        );
        let ustar = h.as_ustar_mut().context("ustar header")?;
        ustar.name = [0; 100];
        ustar.name[..name.len()].copy_from_slice(name);
        Ok(h)
    }

    fn link_header(kind: tar::EntryType, path: &str, target: &str) -> anyhow::Result<tar::Header> {
        let mut h = Self::header(kind, path, 0o777, 0)?;
        let t = target.as_bytes();
        anyhow::ensure!(t.len() <= 100, "link target too long: {target}");
        let ustar = h.as_ustar_mut().context("ustar header")?;
        ustar.linkname = [0; 100];
        ustar.linkname[..t.len()].copy_from_slice(t);
        Ok(h)
    }

    /// Adds a directory.
    pub fn dir(mut self, path: &str, mode: u32) -> anyhow::Result<Self> {
        let mut h = Self::header(tar::EntryType::Directory, path, mode, 0)?;
        h.set_cksum();
        self.tar
            .append(&h, std::io::empty())
            .with_context(|| format!("tar dir {path}"))?;
        Ok(self)
    }

    /// Adds a regular file.
    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<Self> {
        let mut h = Self::header(tar::EntryType::Regular, path, mode, data.len() as u64)?;
        h.set_cksum();
        self.tar
            .append(&h, data)
            .with_context(|| format!("tar file {path}"))?;
        Ok(self)
    }

    /// Adds a symlink `path -> target`.
    pub fn symlink(self, path: &str, target: &str) -> anyhow::Result<Self> {
        self.link(tar::EntryType::Symlink, path, target)
    }

    /// Adds a hardlink `path` to `target` (a path inside the archive, or a hostile one).
    pub fn hardlink(self, path: &str, target: &str) -> anyhow::Result<Self> {
        self.link(tar::EntryType::Link, path, target)
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> anyhow::Result<Self> {
        let mut h = Self::link_header(kind, path, target)?;
        h.set_cksum();
        self.tar
            .append(&h, std::io::empty())
            .with_context(|| format!("tar {kind:?} {path}"))?;
        Ok(self)
    }

    /// Adds an OCI whiteout deleting `path` (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> anyhow::Result<Self> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, b"")
    }

    /// Marks directory `dir` opaque (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> anyhow::Result<Self> {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            0o644,
            b"",
        )
    }

    /// Finishes the tarball and compresses it.
    pub fn finish(self, compression: Compression) -> anyhow::Result<Layer> {
        let tar = self.tar.into_inner().context("finishing tar")?;
        let diff_id = sha256_digest(&tar);
        let (media_type, blob) = match compression {
            Compression::None => (MEDIA_LAYER_TAR, tar),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar).context("gzip")?;
                (MEDIA_LAYER_GZIP, enc.finish().context("gzip finish")?)
            }
            Compression::Zstd => (
                MEDIA_LAYER_ZSTD,
                zstd::encode_all(&tar[..], 3).context("zstd")?,
            ),
        };
        Ok(Layer {
            media_type: media_type.into(),
            digest: sha256_digest(&blob),
            blob,
            diff_id,
        })
    }
}

/// The platform and the one layer of the bogus "other" entry of an index or manifest list: an
/// architecture that is never the host's, so pulls must skip it.
fn other_platform() -> anyhow::Result<(&'static str, Layer)> {
    let arch = if host_arch() == "s390x" {
        "arm64"
    } else {
        "s390x"
    };
    let layer = LayerBuilder::new()
        .file("wrong-platform", 0o644, b"this is not the host platform\n")?
        .finish(Compression::Gzip)?;
    Ok((arch, layer))
}

/// The base layer: busybox, applet links, passwd/group, standard dirs, `/data` with files.
pub fn busybox_base_layer() -> anyhow::Result<Layer> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (install Debian's busybox-static)"))?;
    let mut b = LayerBuilder::new();
    for d in [
        "bin", "etc", "proc", "sys", "dev", "root", "run", "var", "home", "home/app", "data",
    ] {
        b = b.dir(d, 0o755)?;
    }
    b = b.dir("tmp", 0o1777)?;
    b = b.file("bin/busybox", 0o755, &busybox)?;
    for applet in APPLETS {
        b = b.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    b = b
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )?
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")?
        .file("data/keep.txt", 0o644, b"kept\n")?
        .file("data/index.html", 0o644, b"hello from berth\n")?;
    b.finish(Compression::Gzip)
}

/// Layer 2 (zstd): adds `data/old.txt` and `opaque/a.txt`.
pub fn adds_layer() -> anyhow::Result<Layer> {
    LayerBuilder::new()
        .file("data/old.txt", 0o644, b"old\n")?
        .dir("opaque", 0o755)?
        .file("opaque/a.txt", 0o644, b"a\n")?
        .finish(Compression::Zstd)
}

/// Layer 3 (gzip): whiteout for `data/old.txt`, opaque `opaque/` with `opaque/b.txt`.
pub fn whiteout_layer() -> anyhow::Result<Layer> {
    LayerBuilder::new()
        .whiteout("data/old.txt")?
        .dir("opaque", 0o755)?
        .opaque("opaque")?
        .file("opaque/b.txt", 0o644, b"b\n")?
        .finish(Compression::Gzip)
}

/// OCI architecture name of the host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An image to push: layers plus the config fields the tests care about.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// `config.User` (e.g. `app` or `1000`); `None` leaves it unset (root).
    pub user: Option<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.StopSignal`.
    pub stop_signal: Option<String>,
    /// `config.Volumes` (mount points).
    pub volumes: Vec<String>,
    /// Architecture written in the config and the index entry.
    pub architecture: String,
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `127.0.0.1:<port>/<repo>:<tag>`.
    pub reference: String,
    /// Repository name.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// Digest of the host-platform manifest.
    pub manifest_digest: String,
    /// Digest of the config blob: the image id CRI runtimes report.
    pub config_digest: String,
    /// Digest of the index, when pushed as a manifest list.
    pub index_digest: Option<String>,
    /// Config digest of the other (not the host's) platform's entry, when pushed as a manifest list.
    pub other_config_digest: Option<String>,
    /// Sum of the compressed layer sizes.
    pub compressed_size: u64,
}

impl PushedImage {
    /// The digest the tag points at (index if any, else manifest).
    pub fn tag_digest(&self) -> &str {
        self.index_digest
            .as_deref()
            .unwrap_or(&self.manifest_digest)
    }
}

impl ImageSpec {
    /// The standard three-layer busybox image (gzip, zstd with additions, gzip with whiteouts).
    pub fn busybox() -> anyhow::Result<Self> {
        Ok(Self::from_layers(vec![
            busybox_base_layer()?,
            adds_layer()?,
            whiteout_layer()?,
        ]))
    }

    /// An image of the busybox base layer plus `extra` small layers (`/layers/<i>` each): for
    /// images with more layers than one page of overlay options holds.
    pub fn many_layers(extra: usize) -> anyhow::Result<Self> {
        let mut layers = vec![busybox_base_layer()?];
        for i in 0..extra {
            let l = LayerBuilder::new()
                .dir("layers", 0o755)?
                .file(&format!("layers/{i}"), 0o644, format!("{i}\n").as_bytes())?
                .finish(if i % 2 == 0 {
                    Compression::Gzip
                } else {
                    Compression::None
                })?;
            layers.push(l);
        }
        Ok(Self::from_layers(layers))
    }

    /// An image of the given layers with default config (PATH, Cmd `sh`).
    pub fn from_layers(layers: Vec<Layer>) -> Self {
        Self {
            layers,
            user: None,
            cmd: vec!["sh".into()],
            entrypoint: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            stop_signal: None,
            volumes: Vec::new(),
            architecture: host_arch().into(),
        }
    }

    /// Sets `config.User`.
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The OCI image config JSON.
    pub fn config_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut config = serde_json::Map::new();
        config.insert("Env".into(), json!(self.env));
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if let Some(u) = &self.user {
            config.insert("User".into(), json!(u));
        }
        if let Some(w) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(w));
        }
        if let Some(s) = &self.stop_signal {
            config.insert("StopSignal".into(), json!(s));
        }
        if !self.volumes.is_empty() {
            let volumes: serde_json::Map<String, serde_json::Value> = self
                .volumes
                .iter()
                .map(|v| (v.clone(), json!({})))
                .collect();
            config.insert("Volumes".into(), serde_json::Value::Object(volumes));
        }
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let doc = json!({
            "created": "2026-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": self.layers.iter().map(|_| json!({"created_by": "berth-tests"})).collect::<Vec<_>>(),
        });
        Ok(serde_json::to_vec(&doc)?)
    }

    /// The OCI manifest JSON for this image, given its config blob.
    pub fn manifest_json(&self, config: &[u8]) -> anyhow::Result<Vec<u8>> {
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()}))
            .collect();
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": sha256_digest(config), "size": config.len()},
            "layers": layers,
        });
        Ok(serde_json::to_vec(&doc)?)
    }

    async fn push_blobs(&self, reg: &Registry, repo: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        for l in &self.layers {
            reg.push_blob(repo, &l.blob)
                .await
                .with_context(|| format!("pushing layer {}", l.digest))?;
        }
        let config = self.config_json()?;
        reg.push_blob(repo, &config)
            .await
            .context("pushing config")?;
        let manifest = self.manifest_json(&config)?;
        Ok((config, manifest))
    }

    /// Pushes the image as a plain manifest tagged `repo:tag`.
    pub async fn push(&self, reg: &Registry, repo: &str, tag: &str) -> anyhow::Result<PushedImage> {
        let (config, manifest) = self.push_blobs(reg, repo).await?;
        let manifest_digest = reg
            .push_manifest(repo, tag, MEDIA_OCI_MANIFEST, &manifest)
            .await?;
        Ok(self.pushed(reg, repo, tag, manifest_digest, &config, None))
    }

    /// Pushes layers and config; returns the config and a Docker schema 2 manifest (Docker layer and
    /// config media types) for them. Layers must be gzip or uncompressed (Docker has no zstd type).
    async fn push_docker_blobs(
        &self,
        reg: &Registry,
        repo: &str,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut layers = Vec::new();
        for l in &self.layers {
            let media = match l.media_type.as_str() {
                MEDIA_LAYER_GZIP => MEDIA_DOCKER_LAYER_GZIP,
                MEDIA_LAYER_TAR => MEDIA_DOCKER_LAYER_TAR,
                other => anyhow::bail!("no Docker media type for layer type {other}"),
            };
            reg.push_blob(repo, &l.blob)
                .await
                .context("pushing layer")?;
            layers.push(json!({"mediaType": media, "digest": l.digest, "size": l.blob.len()}));
        }
        let config = self.config_json()?;
        reg.push_blob(repo, &config)
            .await
            .context("pushing config")?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_DOCKER_MANIFEST,
            "config": {"mediaType": MEDIA_DOCKER_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
            "layers": layers,
        }))?;
        Ok((config, manifest))
    }

    /// Pushes the image as one Docker schema 2 manifest tagged `repo:tag` (no manifest list). Layers
    /// must be gzip or uncompressed.
    pub async fn push_docker_manifest(
        &self,
        reg: &Registry,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<PushedImage> {
        let (config, manifest) = self.push_docker_blobs(reg, repo).await?;
        let manifest_digest = reg
            .push_manifest(repo, tag, MEDIA_DOCKER_MANIFEST, &manifest)
            .await?;
        Ok(self.pushed(reg, repo, tag, manifest_digest, &config, None))
    }

    /// Pushes the image in Docker's formats: a schema 2 manifest list (host platform plus a bogus
    /// s390x entry) over a schema 2 manifest with Docker layer and config media types. Layers must
    /// be gzip or uncompressed (Docker has no zstd type).
    pub async fn push_docker(
        &self,
        reg: &Registry,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<PushedImage> {
        let (config, manifest) = self.push_docker_blobs(reg, repo).await?;
        let manifest_digest = sha256_digest(&manifest);
        reg.push_manifest(repo, &manifest_digest, MEDIA_DOCKER_MANIFEST, &manifest)
            .await?;
        // A real (tiny) manifest for the other platform: the registry checks list entries exist.
        let (other_arch, other_layer) = other_platform()?;
        reg.push_blob(repo, &other_layer.blob)
            .await
            .context("pushing other layer")?;
        let mut other = Self::from_layers(vec![other_layer.clone()]);
        other.architecture = other_arch.into();
        let other_config = other.config_json()?;
        reg.push_blob(repo, &other_config)
            .await
            .context("pushing other config")?;
        let other_manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_DOCKER_MANIFEST,
            "config": {"mediaType": MEDIA_DOCKER_CONFIG, "digest": sha256_digest(&other_config),
                       "size": other_config.len()},
            "layers": [{"mediaType": MEDIA_DOCKER_LAYER_GZIP, "digest": other_layer.digest,
                        "size": other_layer.blob.len()}],
        }))?;
        let other_digest = sha256_digest(&other_manifest);
        reg.push_manifest(repo, &other_digest, MEDIA_DOCKER_MANIFEST, &other_manifest)
            .await?;
        let list = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_DOCKER_LIST,
            "manifests": [
                {"mediaType": MEDIA_DOCKER_MANIFEST, "digest": other_digest,
                 "size": other_manifest.len(),
                 "platform": {"architecture": other_arch, "os": "linux"}},
                {"mediaType": MEDIA_DOCKER_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
                 "platform": {"architecture": host_arch(), "os": "linux"}},
            ],
        }))?;
        let list_digest = reg
            .push_manifest(repo, tag, MEDIA_DOCKER_LIST, &list)
            .await?;
        let mut pushed = self.pushed(reg, repo, tag, manifest_digest, &config, Some(list_digest));
        pushed.other_config_digest = Some(sha256_digest(&other_config));
        Ok(pushed)
    }

    /// Pushes the image behind an OCI index tagged `repo:tag` whose entries are this image for the
    /// host platform and a different (bogus) image for `linux/s390x` (or `linux/arm64` on s390x).
    pub async fn push_with_index(
        &self,
        reg: &Registry,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<PushedImage> {
        let (config, manifest) = self.push_blobs(reg, repo).await?;
        let manifest_digest = sha256_digest(&manifest);
        reg.push_manifest(repo, &manifest_digest, MEDIA_OCI_MANIFEST, &manifest)
            .await?;

        let (other_arch, other_layer) = other_platform()?;
        let mut other = Self::from_layers(vec![other_layer]);
        other.architecture = other_arch.into();
        let (other_config, other_manifest) = other.push_blobs(reg, repo).await?;
        let other_digest = sha256_digest(&other_manifest);
        reg.push_manifest(repo, &other_digest, MEDIA_OCI_MANIFEST, &other_manifest)
            .await?;

        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": other_digest, "size": other_manifest.len(),
                 "platform": {"architecture": other_arch, "os": "linux"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
                 "platform": {"architecture": host_arch(), "os": "linux"}},
            ],
        });
        let index = serde_json::to_vec(&index)?;
        let index_digest = reg
            .push_manifest(repo, tag, MEDIA_OCI_INDEX, &index)
            .await?;
        let mut pushed = self.pushed(reg, repo, tag, manifest_digest, &config, Some(index_digest));
        pushed.other_config_digest = Some(sha256_digest(&other_config));
        Ok(pushed)
    }

    fn pushed(
        &self,
        reg: &Registry,
        repo: &str,
        tag: &str,
        manifest_digest: String,
        config: &[u8],
        index_digest: Option<String>,
    ) -> PushedImage {
        PushedImage {
            reference: reg.reference(repo, tag),
            repo: repo.into(),
            tag: tag.into(),
            manifest_digest,
            config_digest: sha256_digest(config),
            index_digest,
            other_config_digest: None,
            compressed_size: self.layers.iter().map(|l| l.blob.len() as u64).sum(),
        }
    }
}
