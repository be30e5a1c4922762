//! CNI network configuration: loading `.conflist` / `.conf` files and generating berth's default network.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::NetworkError;
use crate::config::DefaultNetworkConfig;

/// A CNI network configuration list, normalized from either file form (`.conf` becomes a one-plugin list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfList {
    /// CNI spec version the plugins are called with.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin configurations, in ADD order.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Parses a `.conflist` (with `plugins`) or a single-plugin `.conf` document.
    pub fn parse(data: &[u8], origin: &str) -> Result<Self, NetworkError> {
        let invalid = |reason: String| NetworkError::InvalidConfig {
            origin: origin.to_owned(),
            reason,
        };
        let value: Value = serde_json::from_slice(data).map_err(|e| invalid(e.to_string()))?;
        let Value::Object(mut doc) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let name = match doc.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(invalid("missing \"name\"".into())),
        };
        let cni_version = match doc.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            _ => return Err(invalid("missing \"cniVersion\"".into())),
        };
        let plugins = match doc.remove("plugins") {
            Some(Value::Array(list)) => {
                let mut plugins = Vec::with_capacity(list.len());
                for plugin in list {
                    match plugin {
                        Value::Object(p) => plugins.push(p),
                        _ => return Err(invalid("a plugin entry is not an object".into())),
                    }
                }
                plugins
            }
            Some(_) => return Err(invalid("\"plugins\" is not a list".into())),
            // A single-plugin `.conf`: the document itself is the plugin.
            None => vec![doc],
        };
        if plugins.is_empty() {
            return Err(invalid("no plugins".into()));
        }
        for plugin in &plugins {
            match plugin.get("type") {
                Some(Value::String(t)) if valid_plugin_type(t) => {}
                _ => return Err(invalid("a plugin has no valid \"type\"".into())),
            }
        }
        Ok(Self {
            cni_version,
            name,
            plugins,
        })
    }

    /// The configuration berth uses when the CNI config directory is empty: a bridge with host-local IPAM
    /// and port mappings.
    pub fn default_network(cfg: &DefaultNetworkConfig, ipam_data_dir: &Path) -> Self {
        let bridge = json!({
            "type": "bridge",
            "bridge": cfg.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": cfg.subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_data_dir,
            },
        });
        let portmap = json!({ "type": "portmap", "capabilities": { "portMappings": true } });
        let plugins = [bridge, portmap]
            .into_iter()
            .filter_map(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect();
        Self {
            cni_version: "1.0.0".into(),
            name: cfg.name.clone(),
            plugins,
        }
    }

    /// The plugin binaries this list needs, in order, IPAM plugins after the plugin delegating to them.
    pub fn plugin_types(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for plugin in &self.plugins {
            out.extend(plugin.get("type").and_then(Value::as_str));
            out.extend(
                plugin
                    .get("ipam")
                    .and_then(|i| i.get("type"))
                    .and_then(Value::as_str),
            );
        }
        out
    }

    /// Whether results are passed to DEL as `prevResult` (CNI 0.4.0 and later).
    pub fn del_takes_prev_result(&self) -> bool {
        !matches!(
            self.cni_version.as_str(),
            "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1"
        )
    }

    /// Rendered as a `.conflist` document.
    pub fn to_json(&self) -> Value {
        json!({ "cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins })
    }
}

/// Plugin types become file names under the bin dirs: no paths.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && !t.starts_with('.') && !t.contains('/') && !t.contains('\0')
}

/// The first configuration file in `dir` by file name (`.conflist`, `.conf`, `.json`); `None` when there is none.
pub fn find_config_file(dir: &Path) -> Result<Option<PathBuf>, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetworkError::Io {
                context: format!("reading {}", dir.display()),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "conflist" || ext == "conf" || ext == "json")
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files.into_iter().next())
}

/// Reads and parses one configuration file.
pub fn load_file(path: &Path) -> Result<ConfList, NetworkError> {
    let data = std::fs::read(path).map_err(|source| NetworkError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    ConfList::parse(&data, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conflist() {
        let text = br#"{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"bridge","bridge":"b0"},
            {"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let list = ConfList::parse(text, "t").unwrap();
        assert_eq!(list.name, "n");
        assert_eq!(list.plugin_types(), vec!["bridge", "portmap"]);
        assert!(list.del_takes_prev_result());
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let text =
            br#"{"cniVersion":"0.3.1","name":"n","type":"ptp","ipam":{"type":"host-local"}}"#;
        let list = ConfList::parse(text, "t").unwrap();
        assert_eq!(list.plugin_types(), vec!["ptp", "host-local"]);
        assert!(!list.del_takes_prev_result());
    }

    #[test]
    fn rejects_bad_configs() {
        for text in [
            &br#"[]"#[..],
            br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
            br#"{"name":"n","plugins":[{"type":"x"}]}"#,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"notype":1}]}"#,
            br#"not json"#,
        ] {
            assert!(
                ConfList::parse(text, "t").is_err(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn default_network_has_bridge_ipam_and_portmap() {
        let cfg = DefaultNetworkConfig {
            name: "berth".into(),
            bridge: "bx0".into(),
            subnet: "10.9.0.0/24".into(),
        };
        let list = ConfList::default_network(&cfg, Path::new("/var/lib/berth/cni/networks"));
        let doc = list.to_json();
        assert_eq!(doc["plugins"][0]["bridge"], "bx0");
        assert_eq!(doc["plugins"][0]["isGateway"], true);
        assert_eq!(doc["plugins"][0]["ipMasq"], true);
        assert_eq!(doc["plugins"][0]["hairpinMode"], true);
        assert_eq!(
            doc["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.9.0.0/24"
        );
        assert_eq!(
            doc["plugins"][0]["ipam"]["dataDir"],
            "/var/lib/berth/cni/networks"
        );
        assert_eq!(doc["plugins"][1]["capabilities"]["portMappings"], true);
        let back = ConfList::parse(doc.to_string().as_bytes(), "t").unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn first_file_by_name_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_config_file(&dir.path().join("absent")).unwrap(), None);
        std::fs::write(dir.path().join("20-b.conflist"), "{}").unwrap();
        std::fs::write(dir.path().join("10-a.conf"), "{}").unwrap();
        std::fs::write(dir.path().join("05-readme.txt"), "").unwrap();
        assert_eq!(
            find_config_file(dir.path()).unwrap(),
            Some(dir.path().join("10-a.conf"))
        );
    }
}
