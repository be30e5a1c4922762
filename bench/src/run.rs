//! One measurement run against one CRI endpoint: idle memory, the timed pull, the sequential
//! phase (memory sampled with all pods running), the concurrent phase, and the clean-up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1 as cri;

use crate::client::{self, Cri};
use crate::memory;
use crate::report::RunReport;
use crate::workload::{self, RunningPod, Samples, Workload};

/// Options of one run (the `run` subcommand's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// CRI socket (path or unix:// URL).
    #[arg(long)]
    pub endpoint: PathBuf,
    /// Pods per phase (one container each).
    #[arg(short = 'n', long = "pods", default_value_t = 20)]
    pub pods: usize,
    /// Pods in flight at once in the concurrent phase.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Image of the containers (pulled untimed if missing).
    #[arg(long)]
    pub image: String,
    /// The ~100 MB image whose PullImage is timed (removed first so the pull is real).
    #[arg(long)]
    pub pull_image: Option<String>,
    /// Compressed size of --pull-image for MB/s (default: the size the runtime reports).
    #[arg(long)]
    pub pull_image_bytes: Option<u64>,
    /// Images pulled untimed before anything is measured (e.g. containerd's sandbox image).
    #[arg(long)]
    pub prepull: Vec<String>,
    /// The daemon's pid, for its memory.
    #[arg(long, conflicts_with = "daemon_name")]
    pub daemon_pid: Option<u32>,
    /// The daemon's program name (e.g. `containerd`); with several, the one whose command line
    /// mentions --marker.
    #[arg(long)]
    pub daemon_name: Option<String>,
    /// Program names of per-pod/per-container helper processes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "berth-shim,containerd-shim-runc-v2,pause"
    )]
    pub helper_names: Vec<String>,
    /// A string on the command line of this runtime's helpers (default: the endpoint's directory).
    #[arg(long)]
    pub marker: Vec<String>,
    /// `linux.cgroup_parent` of the pods.
    #[arg(long, default_value = "/berth-bench")]
    pub cgroup_parent: String,
    /// Parent of the pods' log directories (default: a temp dir, removed afterwards).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Print the report as JSON (raw samples included) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

fn daemon_pid(args: &RunArgs, markers: &[String]) -> Option<u32> {
    if let Some(p) = args.daemon_pid {
        return Some(p);
    }
    let name = args.daemon_name.as_deref()?;
    let procs = memory::processes();
    markers
        .iter()
        .find_map(|m| memory::find_daemon(&procs, name, m))
        .or_else(|| memory::find_daemon(&procs, name, ""))
}

/// Runs the whole measurement and returns the report. Pods it created are removed even on error.
pub async fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    let endpoint = client::strip_scheme(&args.endpoint);
    let mut cri = client::connect(&endpoint).await?;
    let version = cri
        .rt
        .version(cri::VersionRequest::default())
        .await
        .context("Version")?
        .into_inner();
    let markers = if args.marker.is_empty() {
        let dir = endpoint.parent().map(|p| format!("{}/", p.display()));
        dir.into_iter().collect()
    } else {
        args.marker.clone()
    };
    let pid = daemon_pid(args, &markers);
    let mut report = RunReport {
        runtime: format!("{} {}", version.runtime_name, version.runtime_version),
        endpoint: endpoint.display().to_string(),
        pods: args.pods,
        concurrency: args.concurrency,
        daemon_pid: pid,
        ..Default::default()
    };
    for image in args.prepull.iter().chain(std::iter::once(&args.image)) {
        workload::ensure_image(&mut cri, image)
            .await
            .with_context(|| format!("pulling {image}"))?;
    }
    report.daemon_idle = pid.and_then(|p| memory::rollup(p).ok());
    if let Some(image) = &args.pull_image {
        report.pull = Some(workload::timed_pull(&mut cri, image, args.pull_image_bytes).await?);
    }

    let tmp_logs;
    let log_dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => {
            tmp_logs = tempfile::Builder::new()
                .prefix("berth-bench-logs-")
                .tempdir()
                .context("log tempdir")?;
            tmp_logs.path().to_path_buf()
        }
    };
    let wl = Workload {
        image: args.image.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        log_dir,
        run_id: format!("bench{}", std::process::id()),
        stop_timeout_secs: 10,
    };
    let result = phases(&wl, &cri, args, pid, &markers, &mut report).await;
    // Whatever happened, leave no pod of this run behind.
    let left = wl.remove_leftovers(&mut cri).await;
    result?;
    if let Ok(n) = left {
        if n > 0 {
            eprintln!("berth-bench: removed {n} leftover pods");
        }
    }
    Ok(report)
}

async fn phases(
    wl: &Workload,
    cri: &Cri,
    args: &RunArgs,
    pid: Option<u32>,
    markers: &[String],
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let mut pods: Vec<RunningPod> = Vec::new();
    let mut seq = Samples::new();
    wl.start_all(cri, "s", args.pods, 1, &mut pods, &mut seq)
        .await
        .context("sequential phase: starting pods")?;
    // Let the helpers settle (lazy page faults, first log writes) before sampling.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.daemon_loaded = pid.and_then(|p| memory::rollup(p).ok());
    let procs = memory::processes();
    let helpers = memory::helpers(&procs, &args.helper_names, markers, pid);
    report.helpers = Some(memory::helper_mem(&helpers));
    wl.stop_all(cri, std::mem::take(&mut pods), 1, &mut seq)
        .await
        .context("sequential phase: stopping pods")?;
    report.sequential = seq;

    let mut conc = Samples::new();
    let t = Instant::now();
    wl.start_all(cri, "c", args.pods, args.concurrency, &mut pods, &mut conc)
        .await
        .context("concurrent phase: starting pods")?;
    report.concurrent_start_wall_secs = t.elapsed().as_secs_f64();
    wl.stop_all(cri, pods, args.concurrency, &mut conc)
        .await
        .context("concurrent phase: stopping pods")?;
    report.concurrent = conc;
    Ok(())
}
