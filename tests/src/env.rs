//! The usual test set-up: a registry with the busybox image pushed behind a manifest list, a
//! berthd that trusts that registry over plain http, and the image pulled.

use anyhow::Context;
use k8s_cri::v1 as cri;

use crate::daemon::{Berthd, BerthdOptions};
use crate::image::{ImageSpec, PushedImage};
use crate::registry::Registry;

/// Repository of the standard busybox image.
pub const BUSYBOX_REPO: &str = "bt/busybox";
/// Tag of the standard busybox image.
pub const BUSYBOX_TAG: &str = "1";

/// A daemon, a registry and the pushed standard image.
pub struct TestEnv {
    /// The daemon (dropped first: it removes its pods while the registry still runs).
    pub d: Berthd,
    /// The registry.
    pub reg: Registry,
    /// The standard busybox image (manifest list; zstd layer; whiteouts; opaque dir).
    pub image: PushedImage,
}

impl TestEnv {
    /// Starts registry + daemon and pushes the busybox image (not pulled yet).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(BerthdOptions::default()).await
    }

    /// [`TestEnv::start`] with daemon options.
    pub async fn start_with(opts: BerthdOptions) -> anyhow::Result<Self> {
        let reg = Registry::start().await.context("starting registry")?;
        let image = ImageSpec::busybox()?
            .push_with_index(&reg, BUSYBOX_REPO, BUSYBOX_TAG)
            .await
            .context("pushing busybox image")?;
        let d = Berthd::start(opts).await.context("starting berthd")?;
        d.trust_plain_http(&reg.host())?;
        Ok(Self { d, reg, image })
    }

    /// [`TestEnv::start`] and pull the busybox image.
    pub async fn start_pulled() -> anyhow::Result<Self> {
        let env = Self::start().await?;
        crate::cri::pull(&env.d, &env.image.reference, None).await?;
        Ok(env)
    }

    /// The busybox image reference.
    pub fn busybox(&self) -> &str {
        &self.image.reference
    }

    /// Runs a pod named `name`; returns (id, config).
    pub async fn pod(&self, name: &str) -> anyhow::Result<(String, cri::PodSandboxConfig)> {
        let cfg = crate::cri::pod_config(&self.d, name)?;
        let id = crate::cri::run_pod(&self.d, &cfg).await?;
        Ok((id, cfg))
    }
}
