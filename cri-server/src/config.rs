//! berthd configuration: one TOML struct whose serde defaults are the embedded defaults.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole berthd configuration. Every key is optional in the file; see docs/config.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC unix socket for the kubelet and crictl (created with mode 0660).
    pub socket: PathBuf,
    /// Persistent root: content store, snapshots, metadata.
    pub root: PathBuf,
    /// Volatile state: shim sockets, namespace pins, bundles.
    pub state: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// CNI networking.
    pub cni: CniConfig,
    /// Image registries.
    pub registry: RegistryConfig,
    /// Container runtime settings.
    pub runtime: RuntimeConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// The exec/attach/port-forward streaming server.
    pub streaming: StreamingConfig,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in RUST_LOG syntax.
    pub level: String,
    /// Emit JSON lines instead of text.
    pub json: bool,
}

/// CNI settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory holding `.conf` / `.conflist` files; the first by name is used.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// The network berth provides when `conf_dir` holds no configuration.
    pub default_network: DefaultNetworkConfig,
}

/// berth's own bridge network, used when no CNI configuration is installed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultNetworkConfig {
    /// CNI network name.
    pub name: String,
    /// Linux bridge device the pods attach to.
    pub bridge: String,
    /// IPv4 subnet pods get addresses from (host-local IPAM).
    pub subnet: String,
}

/// Registry settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd-style `certs.d` directory: `<host>/hosts.toml` per registry host (mirrors, plain http).
    pub config_path: PathBuf,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
}

/// Container runtime settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// berth-shim binary; empty means next to berthd, then `$PATH`.
    pub shim_path: PathBuf,
    /// Cgroup driver: how pod cgroup parents are read, and what RuntimeConfig reports to the
    /// kubelet. Only `cgroupfs` is implemented; any other value is refused at start-up.
    pub cgroup_driver: CgroupDriver,
    /// Seconds a StopPodSandbox waits for each container before SIGKILL.
    pub sandbox_stop_timeout_secs: u64,
}

/// The cgroup drivers berth implements.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroup parents are paths in the cgroup filesystem (`/kubepods/burstable/pod…`).
    Cgroupfs,
}

/// The Prometheus `/metrics` endpoint (plain HTTP, no auth: keep it on loopback or behind a proxy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// TCP address `/metrics` is served on.
    pub address: SocketAddr,
}

/// `127.0.0.1:9464`: loopback only (the endpoint has no auth), a port in the exporters' 9100-9999 range
/// clear of Prometheus and CRI-O (9090), node_exporter (9100) and the kubelet (10250).
pub const DEFAULT_METRICS_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: DEFAULT_METRICS_ADDRESS,
        }
    }
}

/// The streaming server that serves the URLs Exec, Attach and PortForward return (SPDY/3.1 and
/// WebSocket, like the kubelet's). The kubelet connects to it, so it must be reachable from the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// TCP address to listen on; port 0 picks a free port. An unspecified address (`0.0.0.0`,
    /// `[::]`) listens everywhere and puts loopback in the URLs.
    pub address: SocketAddr,
    /// PEM certificate chain for HTTPS; empty = plain HTTP. Set both files or neither.
    pub tls_cert_file: PathBuf,
    /// PEM private key for HTTPS; empty = plain HTTP. Set both files or neither.
    pub tls_key_file: PathBuf,
    /// A session with no traffic in either direction for this long is closed (kubelet: 4 h).
    pub stream_idle_timeout_secs: u64,
}

/// `127.0.0.1:0`: loopback (the kubelet runs on the node) on a free port chosen at start.
pub const DEFAULT_STREAMING_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_STREAMING_ADDRESS,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            stream_idle_timeout_secs: 4 * 60 * 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/berth/berth.sock"),
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            log: LogConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            runtime: RuntimeConfig::default(),
            metrics: MetricsConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            default_network: DefaultNetworkConfig::default(),
        }
    }
}

impl Default for DefaultNetworkConfig {
    fn default() -> Self {
        Self {
            name: "berth".into(),
            bridge: "berth0".into(),
            subnet: "10.88.0.0/16".into(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from("/etc/berth/certs.d"),
            max_concurrent_downloads: 3,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shim_path: PathBuf::new(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            sandbox_stop_timeout_secs: 10,
        }
    }
}

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid berth TOML.
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// The config could not be rendered.
    #[error("rendering config: {0}")]
    Render(#[from] toml::ser::Error),
}

impl Config {
    /// Reads a TOML file; keys it leaves out keep their defaults, unknown keys are an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Renders the config as TOML (what `berthd config default` prints).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default().to_toml().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
        assert!(text.contains("/run/berth/berth.sock"));
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let cfg: Config =
            toml::from_str("root = \"/tmp/x\"\n[cni]\nconf_dir = \"/tmp/cni\"\n").unwrap();
        assert_eq!(cfg.root, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.cni.conf_dir, PathBuf::from("/tmp/cni"));
        assert_eq!(cfg.cni.bin_dirs, CniConfig::default().bin_dirs);
        assert_eq!(cfg.socket, Config::default().socket);
    }

    #[test]
    fn metrics_section() {
        let cfg = Config::default();
        assert!(cfg.metrics.enabled);
        assert_eq!(cfg.metrics.address.to_string(), "127.0.0.1:9464");
        let cfg: Config =
            toml::from_str("[metrics]\nenabled = false\naddress = \"[::1]:9999\"\n").unwrap();
        assert!(!cfg.metrics.enabled);
        assert_eq!(cfg.metrics.address.to_string(), "[::1]:9999");
        assert!(toml::from_str::<Config>("[metrics]\naddress = \"localhost\"\n").is_err());
    }

    #[test]
    fn streaming_section() {
        let cfg = Config::default();
        assert_eq!(cfg.streaming.address.to_string(), "127.0.0.1:0");
        assert_eq!(cfg.streaming.stream_idle_timeout_secs, 14_400);
        assert!(cfg.streaming.tls_cert_file.as_os_str().is_empty());
        let cfg: Config = toml::from_str(
            "[streaming]\naddress = \"[::]:10010\"\ntls_cert_file = \"/c.pem\"\n\
             tls_key_file = \"/k.pem\"\nstream_idle_timeout_secs = 60\n",
        )
        .unwrap();
        assert_eq!(cfg.streaming.address.to_string(), "[::]:10010");
        assert_eq!(cfg.streaming.tls_cert_file, PathBuf::from("/c.pem"));
        assert_eq!(cfg.streaming.tls_key_file, PathBuf::from("/k.pem"));
        assert_eq!(cfg.streaming.stream_idle_timeout_secs, 60);
        assert!(toml::from_str::<Config>("[streaming]\nport = 1\n").is_err());
    }

    #[test]
    fn unimplemented_cgroup_driver_is_rejected() {
        let err = toml::from_str::<Config>("[runtime]\ncgroup_driver = \"systemd\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("systemd") && err.contains("cgroupfs"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        assert!(toml::from_str::<Config>("sockett = \"/x\"").is_err());
    }
}
