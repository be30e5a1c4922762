//! Manifests, indexes and image configs: parsing the JSON berth downloads, and choosing the host
//! platform's manifest from an OCI index / Docker manifest list.

use std::collections::BTreeMap;

use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::record::ImageRuntimeConfig;

/// Media types berth asks registries for.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A downloaded manifest document.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(Box<OciImageManifest>),
    /// An OCI index or Docker manifest list.
    Index(OciImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses manifest bytes; Docker schema 1 and unknown media types are rejected.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| {
            Error::InvalidArgument(format!("unsupported or malformed manifest: {why}"))
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if probe.schema_version != Some(2) {
            return Err(bad(format!(
                "schemaVersion {:?} (only 2 is supported)",
                probe.schema_version
            )));
        }
        let is_index = match probe.media_type.as_deref() {
            Some("application/vnd.oci.image.index.v1+json")
            | Some("application/vnd.docker.distribution.manifest.list.v2+json") => true,
            Some("application/vnd.oci.image.manifest.v1+json")
            | Some("application/vnd.docker.distribution.manifest.v2+json") => false,
            None => probe.manifests.is_some(),
            Some(other) => return Err(bad(format!("media type {other:?}"))),
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Manifest::Index)
                .map_err(|e| bad(e.to_string()))
        } else {
            serde_json::from_slice(bytes)
                .map(|m| Manifest::Image(Box::new(m)))
                .map_err(|e| bad(e.to_string()))
        }
    }
}

/// The platform berth runs images for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlatform {
    /// GOOS name, `linux`.
    pub os: String,
    /// GOARCH name, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8` for arm64, `v7` for arm; `None` when the architecture has none.
    pub variant: Option<String>,
}

impl HostPlatform {
    /// The platform of the machine berthd runs on.
    pub fn current() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// Picks the index entry for this platform: same os and architecture; among those, an exact
    /// variant match beats an entry without variant (arm64 images often omit `v8`).
    pub fn select<'a>(&self, entries: &'a [ImageIndexEntry]) -> Option<&'a ImageIndexEntry> {
        let mut fallback = None;
        for entry in entries {
            let Some(platform) = &entry.platform else {
                continue;
            };
            if platform.os.to_string() != self.os
                || platform.architecture.to_string() != self.architecture
            {
                continue;
            }
            match (&platform.variant, &self.variant) {
                (Some(v), Some(want)) if v == want => return Some(entry),
                (None, _) | (Some(_), None) => {
                    if fallback.is_none() {
                        fallback = Some(entry);
                    }
                }
                (Some(_), Some(_)) => {}
            }
        }
        fallback
    }
}

/// The parts of an image config berth reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfigFile {
    /// `rootfs`.
    #[serde(default)]
    pub rootfs: RootFs,
    /// `config` (absent or null in some images).
    #[serde(default)]
    pub config: Option<RuntimeSection>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// Uncompressed layer digests, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// `config` of an image config; every field may be missing or null.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeSection {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    stop_signal: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
}

impl ImageConfigFile {
    /// Parses an image config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidArgument(format!("malformed image config: {e}")))
    }

    /// The runtime settings containers are built from.
    pub fn runtime_config(&self) -> ImageRuntimeConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageRuntimeConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            volumes: c
                .volumes
                .map(|v| v.into_keys().collect())
                .unwrap_or_default(),
        }
    }
}

/// Checks that a manifest's layers line up with the config's diff ids.
pub fn check_layers(manifest: &OciImageManifest, config: &ImageConfigFile) -> Result<()> {
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(Error::InvalidArgument(format!(
            "manifest has {} layers but the image config lists {} diff ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(())
}

/// A descriptor's size as u64 (negative sizes are malformed input).
pub fn descriptor_size(desc: &OciDescriptor) -> Result<u64> {
    u64::try_from(desc.size).map_err(|_| {
        Error::InvalidArgument(format!(
            "descriptor {} has negative size {}",
            desc.digest, desc.size
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
      "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
         "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
         "platform": {"architecture": "arm", "os": "linux", "variant": "v6"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
         "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
         "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
         "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
         "platform": {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
         "digest": "sha256:4444444444444444444444444444444444444444444444444444444444444444",
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
         "digest": "sha256:5555555555555555555555555555555555555555555555555555555555555555",
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 566,
         "digest": "sha256:6666666666666666666666666666666666666666666666666666666666666666",
         "platform": {"architecture": "unknown", "os": "unknown"}}
      ]
    }"#;

    fn platform(arch: &str, variant: Option<&str>) -> HostPlatform {
        HostPlatform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    fn pick(p: &HostPlatform) -> Option<char> {
        let Manifest::Index(index) = Manifest::parse(INDEX.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        p.select(&index.manifests)
            .map(|e| e.digest.chars().last().unwrap())
    }

    #[test]
    fn platform_selection_from_index() {
        assert_eq!(pick(&platform("amd64", None)), Some('4'));
        assert_eq!(pick(&platform("arm64", Some("v8"))), Some('5'));
        assert_eq!(pick(&platform("arm", Some("v7"))), Some('2'));
        assert_eq!(pick(&platform("arm", Some("v5"))), None);
        assert_eq!(pick(&platform("s390x", None)), None);
        assert!(pick(&HostPlatform::current()).is_some());
    }

    #[test]
    fn arm64_without_variant_is_accepted() {
        let index = INDEX.replace(
            r#""arm64", "os": "linux", "variant": "v8""#,
            r#""arm64", "os": "linux""#,
        );
        let Manifest::Index(index) = Manifest::parse(index.as_bytes()).unwrap() else {
            panic!()
        };
        let e = platform("arm64", Some("v8"))
            .select(&index.manifests)
            .unwrap();
        assert!(e.digest.ends_with('5'));
    }

    #[test]
    fn parses_image_manifests_and_rejects_schema1() {
        let docker = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:aa"},
          "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2,"digest":"sha256:bb"}]}"#;
        assert!(
            matches!(Manifest::parse(docker.as_bytes()).unwrap(), Manifest::Image(m) if m.layers.len() == 1)
        );
        let oci_no_media_type = r#"{"schemaVersion":2,"config":{"mediaType":"x","size":1,"digest":"sha256:aa"},"layers":[]}"#;
        assert!(matches!(
            Manifest::parse(oci_no_media_type.as_bytes()).unwrap(),
            Manifest::Image(_)
        ));
        assert!(Manifest::parse(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#).is_err());
        assert!(Manifest::parse(br#"{"schemaVersion":2,"mediaType":"text/html"}"#).is_err());
        assert!(Manifest::parse(b"<html>").is_err());
    }

    #[test]
    fn image_config_with_nulls() {
        let cfg = br#"{"architecture":"amd64","os":"linux",
          "config":{"Cmd":["sh"],"Entrypoint":null,"Env":["PATH=/bin"],"User":"1000:1000","WorkingDir":"",
                    "Labels":null,"Volumes":{"/data":{}},"StopSignal":"SIGQUIT"},
          "rootfs":{"type":"layers","diff_ids":["sha256:cc"]}}"#;
        let parsed = ImageConfigFile::parse(cfg).unwrap();
        let rc = parsed.runtime_config();
        assert_eq!(rc.cmd, vec!["sh"]);
        assert!(rc.entrypoint.is_empty());
        assert_eq!(rc.user, "1000:1000");
        assert_eq!(rc.volumes, vec!["/data"]);
        assert_eq!(rc.stop_signal, "SIGQUIT");
        assert_eq!(parsed.rootfs.diff_ids, vec!["sha256:cc"]);
        let bare = ImageConfigFile::parse(br#"{"rootfs":{"diff_ids":[]},"config":null}"#).unwrap();
        assert_eq!(bare.runtime_config(), ImageRuntimeConfig::default());
    }
}
