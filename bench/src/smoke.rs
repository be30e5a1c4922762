//! Self-contained smoke run for CI: a berth-tests registry with the bench images, a berth-tests
//! berthd (binaries next to this one, or `$BERTH_BIN_DIR`), a small run, everything torn down.

use anyhow::Context;
use berth_tests::{Berthd, BerthdOptions, Registry};

use crate::images;
use crate::report::RunReport;
use crate::run::{self, RunArgs};

/// Runs `pods` pods (concurrency `concurrency`) against a fresh berthd, with a `pull_mib` MiB pull.
pub async fn smoke(pods: usize, concurrency: usize, pull_mib: usize) -> anyhow::Result<RunReport> {
    let reg = Registry::start().await.context("starting registry")?;
    let imgs = images::push_all(&reg, pull_mib).await?;
    let d = Berthd::start(BerthdOptions {
        log_level: "warn".into(),
        metrics: false,
        ..Default::default()
    })
    .await
    .context("starting berthd")?;
    d.trust_plain_http(&reg.host())?;
    let args = RunArgs {
        endpoint: d.socket(),
        pods,
        concurrency,
        image: imgs.image,
        pull_image: Some(imgs.pull_image),
        pull_image_bytes: Some(imgs.pull_image_bytes),
        prepull: Vec::new(),
        daemon_pid: d.pid(),
        daemon_name: None,
        helper_names: vec!["berth-shim".into()],
        marker: vec![format!("{}/", d.dir().display())],
        cgroup_parent: d.slot().cgroup_parent(),
        log_dir: Some(d.logs_dir()),
        json: false,
        json_out: None,
    };
    let report = run::run(&args).await?;
    d.pass();
    drop(d);
    drop(reg);
    Ok(report)
}
