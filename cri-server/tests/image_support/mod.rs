//! Test support for the image service: a real `docker-registry` on 127.0.0.1, a tiny HTTP client
//! that pushes blobs and manifests with the distribution API, and a builder for small images.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Status, lower-cased headers and body of an HTTP response.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// Files of one test layer: `(path, contents)`.
pub type Files<'a> = Vec<(&'a str, &'a [u8])>;

/// A docker-registry process on a free loopback port; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Basic auth the registry demands, if any.
    pub auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Registry {
    /// Starts a registry; with `auth`, it requires those basic-auth credentials (htpasswd, bcrypt).
    pub fn start(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            addr,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((status, _, _)) = registry.request("GET", "/v2/", &[], &[]) {
                if status == 200 || status == 401 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {}",
                registry.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// Sends one HTTP/1.1 request (with the registry's credentials); returns status, headers, body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some((user, pass)) = &self.auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no header end"))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok((status, headers, raw[split + 4..].to_vec()))
    }

    /// Uploads a blob (POST an upload, then a monolithic PUT ?digest=).
    pub fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        let (status, headers, body) = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
            .expect("POST upload");
        assert_eq!(
            status,
            202,
            "starting upload: {}",
            String::from_utf8_lossy(&body)
        );
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .expect("Location");
        let path = match location.split_once("://") {
            Some((_, rest)) => rest[rest.find('/').expect("path")..].to_owned(),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .request(
                "PUT",
                &format!("{path}{sep}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                data,
            )
            .expect("PUT blob");
        assert_eq!(
            status,
            201,
            "uploading blob {digest}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Puts a manifest under a tag or digest.
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, data: &[u8]) {
        let (status, _, body) = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", media_type)],
                data,
            )
            .expect("PUT manifest");
        assert_eq!(
            status,
            201,
            "pushing manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Pushes an image's blobs and manifest(s) and tags it.
    pub fn push_image(&self, repo: &str, tag: &str, image: &TestImage) {
        for (digest, data) in &image.blobs {
            self.push_blob(repo, digest, data);
        }
        for (digest, media_type, data) in &image.manifests {
            self.push_manifest(repo, digest, media_type, data);
        }
        let (_, media_type, data) = image.manifests.last().expect("a manifest");
        self.push_manifest(repo, tag, media_type, data);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sha256:<hex>` of data.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// How a test layer is compressed.
#[derive(Clone, Copy)]
pub enum Comp {
    /// Plain tar.
    Tar,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Builds a tar of regular files.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, *data)
            .expect("tar append");
    }
    builder.into_inner().expect("tar finish")
}

fn compress(data: &[u8], comp: Comp) -> (Vec<u8>, &'static str) {
    match comp {
        Comp::Tar => (data.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("gzip");
            (
                enc.finish().expect("gzip finish"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(data, 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// A built image: blobs to upload and manifests (the last one is what the tag points at).
pub struct TestImage {
    /// `(digest, bytes)` of config and layers.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// `(digest, media type, bytes)`; platform manifests first, the tagged one last.
    pub manifests: Vec<(String, String, Vec<u8>)>,
    /// Image id (config digest) of the manifest the host platform gets.
    pub id: String,
    /// Digest the tag resolves to (index digest for multi-platform images).
    pub digest: String,
    /// Layer blob digests.
    pub layers: Vec<String>,
}

/// Builds a single-platform image (Docker schema 2 when `docker`, else OCI) for `arch`.
pub fn build_image(
    arch: &str,
    layers: &[(Comp, Files<'_>)],
    cmd: &[&str],
    user: &str,
    docker: bool,
) -> TestImage {
    let mut blobs = Vec::new();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for (comp, files) in layers {
        let tar = tar_of(files);
        diff_ids.push(sha256(&tar));
        let (blob, oci_type) = compress(&tar, *comp);
        let media_type = match (docker, comp) {
            (true, Comp::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (true, Comp::Tar) => "application/vnd.docker.image.rootfs.diff.tar",
            _ => oci_type,
        };
        let digest = sha256(&blob);
        layer_descs.push(
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": blob.len()}),
        );
        layer_digests.push(digest.clone());
        blobs.push((digest, blob));
    }
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "User": user, "WorkingDir": "/", "Labels": {"test": "berth"},
                   "StopSignal": "SIGQUIT", "Volumes": {"/data": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).expect("config json");
    let config_digest = sha256(&config);
    let (manifest_type, config_type) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .expect("manifest json");
    blobs.insert(0, (config_digest.clone(), config));
    let digest = sha256(&manifest);
    TestImage {
        blobs,
        manifests: vec![(digest.clone(), manifest_type.to_owned(), manifest)],
        id: config_digest,
        digest,
        layers: layer_digests,
    }
}

/// Combines single-platform images into an OCI index; `host` is the one this machine selects.
pub fn build_index(host: TestImage, others: Vec<(TestImage, &str)>) -> TestImage {
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let (host_id, host_layers) = (host.id.clone(), host.layers.clone());
    let mut entries = Vec::new();
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for (image, arch) in others.into_iter().chain(std::iter::once((host, host_arch))) {
        let (digest, media_type, data) = image.manifests.last().cloned().expect("manifest");
        let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
        if arch == "arm64" {
            platform["variant"] = "v8".into();
        }
        entries.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len(), "platform": platform}));
        blobs.extend(image.blobs);
        manifests.push((digest, media_type, data));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .expect("index json");
    let digest = sha256(&index);
    manifests.push((
        digest.clone(),
        "application/vnd.oci.image.index.v1+json".to_owned(),
        index,
    ));
    TestImage {
        blobs,
        manifests,
        id: host_id,
        digest,
        layers: host_layers,
    }
}

/// A berthd config rooted in `dir`, with `certs.d` at `dir/certs.d`.
pub fn config_in(dir: &Path) -> cri_server::config::Config {
    let registry = cri_server::config::RegistryConfig {
        config_path: dir.join("certs.d"),
        ..Default::default()
    };
    cri_server::config::Config {
        root: dir.join("root"),
        state: dir.join("state"),
        registry,
        ..Default::default()
    }
}

/// Writes `<certs.d>/<registry>/hosts.toml`.
pub fn write_hosts_toml(
    config: &cri_server::config::Config,
    registry: &str,
    text: &str,
) -> PathBuf {
    let dir = config.registry.config_path.join(registry);
    std::fs::create_dir_all(&dir).expect("certs.d dir");
    let file = dir.join("hosts.toml");
    std::fs::write(&file, text).expect("hosts.toml");
    file
}
