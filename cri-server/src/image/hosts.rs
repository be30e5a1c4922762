//! Registry host configuration in containerd's `certs.d` format:
//! `<config_path>/<registry>/hosts.toml`, falling back to `<config_path>/_default/hosts.toml`.
//!
//! A file lists mirrors as `[host."URL"]` tables, tried in file order, then the `server` (the
//! upstream). Without a file the upstream is `https://<registry>` (Docker Hub: registry-1.docker.io),
//! and a loopback registry is also tried over plain HTTP, as containerd does for localhost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::reference::DEFAULT_REGISTRY;

const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// URL scheme of a registry host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// TLS.
    Https,
    /// Plain HTTP (`http://` in hosts.toml, or the loopback fallback).
    Http,
}

/// What a host may be used for (containerd's `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch content by digest.
    pub pull: bool,
    /// Resolve a tag to a digest.
    pub resolve: bool,
    /// Push (berth never pushes; parsed for completeness).
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint images of a registry can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `https` or `http`.
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// API root path: `/v2` for standard registries.
    pub path: String,
    /// What the host may be used for.
    pub capabilities: Capabilities,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificate files (PEM) trusted for this host.
    pub ca: Vec<PathBuf>,
    /// Extra request headers (not sent: oci-client has no per-request headers; see docs/images.md).
    pub headers: BTreeMap<String, Vec<String>>,
    /// True for the `server` entry (the upstream), false for a mirror.
    pub is_server: bool,
}

impl RegistryHost {
    /// `scheme://host/path`, for messages.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        format!("{scheme}://{}{}", self.host, self.path)
    }

    /// True when the API root is the standard `/v2`, the only one oci-client can address.
    pub fn has_standard_path(&self) -> bool {
        self.path == "/v2"
    }

    fn upstream(registry: &str, scheme: Scheme) -> Self {
        let host = if registry == DEFAULT_REGISTRY {
            DOCKER_HUB_HOST.to_owned()
        } else {
            registry.to_owned()
        };
        Self {
            scheme,
            host,
            path: "/v2".into(),
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca: Vec::new(),
            headers: BTreeMap::new(),
            is_server: true,
        }
    }
}

/// The hosts to try, in order, for `registry` (e.g. `docker.io`, `127.0.0.1:5000`).
pub fn hosts_for(config_path: &Path, registry: &str) -> Result<Vec<RegistryHost>> {
    for dir in [config_path.join(registry), config_path.join("_default")] {
        let file = dir.join("hosts.toml");
        match std::fs::read_to_string(&file) {
            Ok(text) => return parse_hosts_toml(&text, registry, &dir),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory => {}
            Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
        }
    }
    Ok(default_hosts(registry))
}

/// Hosts for a registry without hosts.toml: HTTPS upstream, plus plain HTTP for loopback registries.
pub fn default_hosts(registry: &str) -> Vec<RegistryHost> {
    let mut hosts = vec![RegistryHost::upstream(registry, Scheme::Https)];
    if is_loopback(registry) {
        hosts.push(RegistryHost::upstream(registry, Scheme::Http));
    }
    hosts
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    server_options: HostOptions,
    #[serde(default)]
    host: BTreeMap<String, HostOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct HostOptions {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    #[allow(dead_code)]
    client: Option<toml::Value>,
    override_path: Option<bool>,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Parses one hosts.toml; relative `ca` paths are resolved against `dir`.
pub fn parse_hosts_toml(text: &str, registry: &str, dir: &Path) -> Result<Vec<RegistryHost>> {
    let invalid = |why: String| {
        Error::InvalidArgument(format!("{}: {why}", dir.join("hosts.toml").display()))
    };
    let file: HostsFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    // toml's map is sorted, but containerd tries hosts in file order: recover it from the text.
    let mut mirrors: Vec<(usize, String, HostOptions)> = file
        .host
        .into_iter()
        .map(|(url, options)| (position_in_text(text, &url), url, options))
        .collect();
    mirrors.sort_by_key(|(pos, _, _)| *pos);

    let mut hosts = Vec::new();
    for (_, url, options) in mirrors {
        hosts.push(build_host(&url, options, dir, false).map_err(invalid)?);
    }
    let server = match file.server {
        Some(url) if !url.is_empty() => {
            let mut host = build_host(&url, file.server_options, dir, true).map_err(invalid)?;
            if host.host == DEFAULT_REGISTRY {
                host.host = DOCKER_HUB_HOST.into();
            }
            host
        }
        _ => {
            let mut host = RegistryHost::upstream(registry, Scheme::Https);
            apply_options(&mut host, file.server_options, dir).map_err(invalid)?;
            host
        }
    };
    hosts.push(server);
    Ok(hosts)
}

fn position_in_text(text: &str, url: &str) -> usize {
    [format!("\"{url}\""), format!("'{url}'")]
        .iter()
        .filter_map(|quoted| text.find(quoted.as_str()))
        .min()
        .unwrap_or(usize::MAX)
}

fn build_host(
    url: &str,
    options: HostOptions,
    dir: &Path,
    is_server: bool,
) -> std::result::Result<RegistryHost, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        Some((other, _)) => return Err(format!("host {url:?}: unsupported scheme {other:?}")),
        None => (Scheme::Https, url),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(format!("host {url:?} has no host name"));
    }
    let path = path.trim_end_matches('/');
    let override_path = options.override_path.unwrap_or(false);
    let path = if override_path {
        path.to_owned()
    } else if path.is_empty() || path.ends_with("/v2") {
        format!("{path}{}", if path.is_empty() { "/v2" } else { "" })
    } else {
        format!("{path}/v2")
    };
    let mut registry_host = RegistryHost {
        scheme,
        host: host.to_owned(),
        path,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: Vec::new(),
        headers: BTreeMap::new(),
        is_server,
    };
    apply_options(&mut registry_host, options, dir)?;
    Ok(registry_host)
}

fn apply_options(
    host: &mut RegistryHost,
    options: HostOptions,
    dir: &Path,
) -> std::result::Result<(), String> {
    if let Some(caps) = options.capabilities {
        let mut parsed = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for cap in caps {
            match cap.as_str() {
                "pull" => parsed.pull = true,
                "resolve" => parsed.resolve = true,
                "push" => parsed.push = true,
                other => return Err(format!("host {}: unknown capability {other:?}", host.url())),
            }
        }
        host.capabilities = parsed;
    }
    host.skip_verify = options.skip_verify.unwrap_or(false);
    host.ca = options
        .ca
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            if Path::new(&p).is_absolute() {
                PathBuf::from(p)
            } else {
                dir.join(p)
            }
        })
        .collect();
    host.headers = options
        .header
        .into_iter()
        .map(|(k, v)| (k, v.into_vec()))
        .collect();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str, registry: &str) -> Vec<RegistryHost> {
        parse_hosts_toml(text, registry, Path::new("/etc/berth/certs.d/x")).unwrap()
    }

    #[test]
    fn containerd_docker_hub_mirror_example() {
        // containerd docs/hosts.md: mirrors tried in file order, then the upstream server.
        let text = r#"
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.gcr.io"]
  capabilities = ["pull"]                   # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"                  # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#;
        let hosts = parse(text, "docker.io");
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].host, "public-mirror.gcr.io");
        assert_eq!(
            hosts[0].capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert_eq!(hosts[1].host, "docker-mirror.internal");
        assert_eq!(
            hosts[1].ca,
            vec![PathBuf::from("/etc/berth/certs.d/x/docker-mirror.crt")]
        );
        assert!(hosts[1].capabilities.resolve);
        assert_eq!(hosts[2].host, "registry-1.docker.io");
        assert!(hosts[2].is_server && hosts[2].capabilities == Capabilities::ALL);
        assert!(hosts
            .iter()
            .all(|h| h.path == "/v2" && h.scheme == Scheme::Https));
    }

    #[test]
    fn file_order_is_kept_even_when_not_sorted() {
        let text = r#"
server = "https://docker.io"
[host."https://z-mirror.example"]
[host."http://a-mirror.example:8080"]
  skip_verify = true
  [host."http://a-mirror.example:8080".header]
    x-custom-1 = "custom header"
    x-custom-2 = ["a", "b"]
"#;
        let hosts = parse(text, "docker.io");
        assert_eq!(hosts[0].host, "z-mirror.example");
        assert_eq!(hosts[1].host, "a-mirror.example:8080");
        assert_eq!(hosts[1].scheme, Scheme::Http);
        assert!(hosts[1].skip_verify);
        assert_eq!(
            hosts[1].headers["x-custom-2"],
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(
            hosts[1].headers["x-custom-1"],
            vec!["custom header".to_string()]
        );
        // `server = "https://docker.io"` means Docker Hub's API host.
        assert_eq!(hosts[2].host, "registry-1.docker.io");
    }

    #[test]
    fn plain_http_local_registry_and_paths() {
        let text = r#"
server = "http://127.0.0.1:5000"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
[host."https://mirror.example/prefix"]
[host."https://odd.example/custom/api"]
  override_path = true
"#;
        let hosts = parse(text, "127.0.0.1:5000");
        assert_eq!(hosts[0].url(), "http://127.0.0.1:5000/v2");
        assert!(hosts[0].has_standard_path());
        assert_eq!(hosts[1].path, "/prefix/v2");
        assert!(!hosts[1].has_standard_path());
        assert_eq!(hosts[2].path, "/custom/api");
        assert_eq!(hosts[3].url(), "http://127.0.0.1:5000/v2");
        assert!(hosts[3].is_server);
    }

    #[test]
    fn missing_server_defaults_to_upstream_with_top_level_options() {
        let hosts = parse("ca = \"/etc/ca.pem\"\nskip_verify = true\n", "quay.io");
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].host, "quay.io");
        assert!(hosts[0].skip_verify);
        assert_eq!(hosts[0].ca, vec![PathBuf::from("/etc/ca.pem")]);
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = Path::new("/x");
        assert!(parse_hosts_toml("server = 5", "a", dir).is_err());
        assert!(parse_hosts_toml("[host.\"ftp://x\"]", "a", dir).is_err());
        assert!(
            parse_hosts_toml("[host.\"https://x\"]\ncapabilities = [\"fly\"]", "a", dir).is_err()
        );
    }

    #[test]
    fn directory_lookup_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = hosts_for(dir.path(), "docker.io").unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].url(), "https://registry-1.docker.io/v2");
        let local = hosts_for(dir.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(
            local.iter().map(|h| h.scheme).collect::<Vec<_>>(),
            vec![Scheme::Https, Scheme::Http]
        );
        assert_eq!(default_hosts("localhost:5000").len(), 2);
        assert_eq!(default_hosts("[::1]:5000").len(), 2);

        std::fs::create_dir_all(dir.path().join("localhost:5000")).unwrap();
        std::fs::write(
            dir.path().join("localhost:5000/hosts.toml"),
            "server = \"http://localhost:5000\"\n",
        )
        .unwrap();
        let hosts = hosts_for(dir.path(), "localhost:5000").unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].scheme, Scheme::Http);

        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"https://catch-all.example\"]\n",
        )
        .unwrap();
        let hosts = hosts_for(dir.path(), "quay.io").unwrap();
        assert_eq!(hosts[0].host, "catch-all.example");
        assert_eq!(hosts[1].host, "quay.io");
    }
}
