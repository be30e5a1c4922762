//! Pod networking: CNI plugin invocation and berth's default bridge network.
//!
//! A pod's network is set up once (ADD) and torn down once (DEL). Everything DEL needs — the exact
//! configuration list, the arguments and the ADD result — is kept in an [`Attachment`] that the sandbox
//! record stores, so teardown works after a configuration change and after a berthd restart.

pub mod config;
pub mod dial;
pub mod invoke;
pub mod netns;
pub mod result;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Config, DefaultNetworkConfig};
use crate::error::Error;
pub use config::ConfList;
use invoke::{exec_plugin, find_plugin, PluginEnv};

/// How long one plugin may run before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";

/// Failures of CNI configuration or plugins.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A configuration file is malformed.
    #[error("CNI config {origin}: {reason}")]
    InvalidConfig {
        /// File (or "default network").
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin binary is not in any bin dir.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        /// Plugin type.
        plugin: String,
        /// The searched dirs joined by `:`.
        dirs: String,
    },
    /// A plugin reported an error.
    #[error("CNI plugin {plugin}: {message}")]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// A plugin ran too long and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {after:?}")]
    Timeout {
        /// Plugin type.
        plugin: String,
        /// CNI command.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// A filesystem or process failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<NetworkError> for Error {
    fn from(err: NetworkError) -> Self {
        match err {
            NetworkError::Io { context, source } => Error::Io { context, source },
            NetworkError::InvalidConfig { .. } | NetworkError::PluginNotFound { .. } => {
                Error::FailedPrecondition(err.to_string())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

/// A CRI port mapping in CNI `runtimeConfig.portMappings` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the host.
    #[serde(rename = "hostPort")]
    pub host_port: i32,
    /// Port in the pod.
    #[serde(rename = "containerPort")]
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host address to bind; empty for all.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Who the pod is, for `CNI_ARGS`.
#[derive(Debug, Clone)]
pub struct PodRef<'a> {
    /// Sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub sandbox_id: &'a str,
    /// Pod name.
    pub name: &'a str,
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod UID.
    pub uid: &'a str,
}

/// One pod's attachment to a network: what ADD was called with, and what it returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The configuration list, exactly as used for ADD.
    pub config: ConfList,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// Port mappings passed to plugins declaring the `portMappings` capability.
    pub port_mappings: Vec<PortMapping>,
    /// The final ADD result; `None` until ADD succeeded.
    pub result: Option<Value>,
}

impl Attachment {
    /// The pod's addresses from the ADD result, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result
            .as_ref()
            .map(result::pod_ips)
            .unwrap_or_default()
    }
}

/// Chooses the network configuration and runs plugins.
#[derive(Debug, Clone)]
pub struct Network {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    default: DefaultNetworkConfig,
    ipam_data_dir: PathBuf,
    default_conf_file: PathBuf,
    /// Serializes writers of `default_conf_file`: pods started at once share its temp file.
    default_conf_lock: std::sync::Arc<std::sync::Mutex<()>>,
    timeout: Duration,
}

impl Network {
    /// From berthd's config: `<root>/cni/networks` holds host-local reservations of the default network,
    /// `<state>/cni/net.d/berth-default.conflist` shows operators the generated configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            conf_dir: config.cni.conf_dir.clone(),
            bin_dirs: config.cni.bin_dirs.clone(),
            default: config.cni.default_network.clone(),
            ipam_data_dir: config.root.join("cni").join("networks"),
            default_conf_file: config
                .state
                .join("cni")
                .join("net.d")
                .join("berth-default.conflist"),
            default_conf_lock: std::sync::Arc::default(),
            timeout: PLUGIN_TIMEOUT,
        }
    }

    /// NetworkReady: `(true, "")` when a configuration is installed or the default network's plugins exist;
    /// otherwise `(false, what is missing)`.
    pub fn status(&self) -> (bool, String) {
        let (list, origin) = match config::find_config_file(&self.conf_dir) {
            Ok(Some(path)) => match config::load_file(&path) {
                Ok(list) => (list, path.display().to_string()),
                Err(err) => return (false, err.to_string()),
            },
            Ok(None) => (self.default_list(), "berth default network".to_string()),
            Err(err) => return (false, err.to_string()),
        };
        let missing: Vec<&str> = list
            .plugin_types()
            .into_iter()
            .filter(|p| find_plugin(&self.bin_dirs, p).is_none())
            .collect();
        if missing.is_empty() {
            (true, String::new())
        } else {
            let dirs: Vec<String> = self
                .bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            (
                false,
                format!(
                    "{origin}: CNI plugins {} not found in {}",
                    missing.join(", "),
                    dirs.join(":")
                ),
            )
        }
    }

    fn default_list(&self) -> ConfList {
        ConfList::default_network(&self.default, &self.ipam_data_dir)
    }

    /// The configuration a new pod gets: the first file in the config dir, else the default network (which
    /// this writes out and for which it enables IPv4 forwarding). Blocking (small file I/O).
    pub fn select(&self) -> Result<ConfList, NetworkError> {
        if let Some(path) = config::find_config_file(&self.conf_dir)? {
            return config::load_file(&path);
        }
        let list = self.default_list();
        self.write_default(&list)?;
        enable_ip_forward()?;
        Ok(list)
    }

    fn write_default(&self, list: &ConfList) -> Result<(), NetworkError> {
        let io = |context: String| move |source| NetworkError::Io { context, source };
        if let Some(dir) = self.default_conf_file.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let text = serde_json::to_string_pretty(&list.to_json()).unwrap_or_default();
        // A poisoned lock only means another writer panicked; the file is rewritten whole either way.
        let _writer = self
            .default_conf_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::fs::read_to_string(&self.default_conf_file).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let tmp = self.default_conf_file.with_extension("tmp");
        std::fs::write(&tmp, &text).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.default_conf_file)
            .map_err(io(format!("writing {}", self.default_conf_file.display())))
    }

    /// Builds the attachment of a pod (not yet added).
    pub fn attachment(
        &self,
        config: ConfList,
        pod: &PodRef<'_>,
        netns: &Path,
        ports: Vec<PortMapping>,
    ) -> Attachment {
        Attachment {
            config,
            container_id: pod.sandbox_id.to_owned(),
            netns: netns.to_owned(),
            ifname: POD_IFNAME.to_owned(),
            args: cni_args(pod),
            port_mappings: ports,
            result: None,
        }
    }

    /// CNI ADD through the whole list, chaining results. Blocking: call from a blocking thread. On error the
    /// caller runs [`Network::del`] to undo what the plugins that succeeded did.
    pub fn add(&self, att: &mut Attachment) -> Result<(), NetworkError> {
        let mut prev: Option<Value> = None;
        for plugin in &att.config.plugins {
            let conf = plugin_config(&att.config, plugin, prev.as_ref(), &att.port_mappings);
            let kind = plugin_type(plugin);
            let out = exec_plugin(kind, &self.env("ADD", att), &conf)?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| NetworkError::Plugin {
                plugin: kind.to_owned(),
                message: format!("ADD result is not JSON: {e}"),
            })?;
            prev = Some(result);
        }
        att.result = prev;
        Ok(())
    }

    /// CNI DEL through the list in reverse. Every plugin is called even when one fails; the first error is
    /// returned. Blocking: call from a blocking thread.
    pub fn del(&self, att: &Attachment) -> Result<(), NetworkError> {
        let prev = if att.config.del_takes_prev_result() {
            att.result.as_ref()
        } else {
            None
        };
        let mut first_err = None;
        for plugin in att.config.plugins.iter().rev() {
            let conf = plugin_config(&att.config, plugin, prev, &att.port_mappings);
            if let Err(err) = exec_plugin(plugin_type(plugin), &self.env("DEL", att), &conf) {
                tracing::warn!(sandbox = %att.container_id, %err, "CNI DEL failed");
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn env<'a>(&'a self, command: &'a str, att: &'a Attachment) -> PluginEnv<'a> {
        PluginEnv {
            command,
            container_id: &att.container_id,
            netns: &att.netns,
            ifname: &att.ifname,
            args: &att.args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        }
    }
}

fn plugin_type(plugin: &serde_json::Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// `CNI_ARGS` the way the kubelet's dockershim and containerd pass them.
pub fn cni_args(pod: &PodRef<'_>) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.sandbox_id, pod.uid
    )
}

/// What one plugin reads on stdin: its own config plus the list's name and version, the previous result and
/// the runtime config for the capabilities it declares.
pub fn plugin_config(
    list: &ConfList,
    plugin: &serde_json::Map<String, Value>,
    prev_result: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && !ports.is_empty() {
        conf.insert("runtimeConfig".into(), json!({ "portMappings": ports }));
    }
    Value::Object(conf)
}

/// The default network routes pod traffic through the host; without forwarding it goes nowhere.
fn enable_ip_forward() -> Result<(), NetworkError> {
    const KEY: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(KEY).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(KEY, "1").map_err(|source| NetworkError::Io {
        context: format!("enabling {KEY}"),
        source,
    })?;
    tracing::info!("enabled net.ipv4.ip_forward for berth's default network");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ConfList {
        let cfg = DefaultNetworkConfig {
            name: "net".into(),
            bridge: "b0".into(),
            subnet: "10.1.0.0/24".into(),
        };
        ConfList::default_network(&cfg, Path::new("/tmp/ipam"))
    }

    #[test]
    fn plugin_config_adds_name_version_prev_and_capabilities() {
        let list = list();
        let ports = vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }];
        let bridge = plugin_config(&list, &list.plugins[0], None, &ports);
        assert_eq!(bridge["name"], "net");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("prevResult").is_none());
        assert!(bridge.get("runtimeConfig").is_none());
        let prev = json!({"ips": []});
        let portmap = plugin_config(&list, &list.plugins[1], Some(&prev), &ports);
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0],
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
        );
        assert!(plugin_config(&list, &list.plugins[1], None, &[])
            .get("runtimeConfig")
            .is_none());
    }

    #[test]
    fn cni_args_name_the_pod() {
        let pod = PodRef {
            sandbox_id: "abc",
            name: "web",
            namespace: "default",
            uid: "u1",
        };
        assert_eq!(
            cni_args(&pod),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1"
        );
    }

    #[test]
    fn status_names_missing_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.cni.conf_dir = dir.path().join("net.d");
        cfg.cni.bin_dirs = vec![dir.path().join("bin")];
        let net = Network::new(&cfg);
        let (ready, msg) = net.status();
        assert!(!ready);
        assert!(msg.contains("bridge, host-local, portmap"), "{msg}");
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        for p in ["bridge", "host-local", "portmap"] {
            std::fs::write(dir.path().join("bin").join(p), "").unwrap();
        }
        assert!(net.status().0);
    }
}
