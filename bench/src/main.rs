//! `berth-bench`: drives any CRI endpoint with N pods of one container and prints latency
//! percentiles, pull throughput and memory, so berth and containerd are measured the same way.
//! It prints numbers and never fails a build on them.

mod client;
mod error;
mod images;
mod memory;
mod report;
mod run;
mod smoke;
mod stats;
mod workload;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure one CRI endpoint (pods, pull, memory).
    Run(Box<run::RunArgs>),
    /// Start a local registry, push the bench images, write their references to --env-file as
    /// KEY=value lines, and serve until SIGTERM/SIGINT (then stop the registry).
    Images {
        /// Where to write REGISTRY, IMAGE, PULL_IMAGE, PULL_IMAGE_BYTES, PAUSE_IMAGE.
        #[arg(long)]
        env_file: PathBuf,
        /// Size of the pull image in MiB of incompressible data.
        #[arg(long, default_value_t = 100)]
        pull_mib: usize,
    },
    /// Print berth vs containerd from `run --json-out` files (several rounds each).
    Compare {
        /// JSON reports of berth runs.
        #[arg(long, num_args = 1.., required = true)]
        berth: Vec<PathBuf>,
        /// JSON reports of containerd runs.
        #[arg(long, num_args = 1.., required = true)]
        containerd: Vec<PathBuf>,
    },
    /// Stop and remove every pod the bench created (label `berth-bench`) on an endpoint.
    Cleanup {
        /// CRI socket.
        #[arg(long)]
        endpoint: PathBuf,
    },
    /// CI smoke: a fresh registry and berthd (berth-tests fixtures), a small run, all removed.
    Smoke {
        /// Pods per phase.
        #[arg(short = 'n', long = "pods", default_value_t = 2)]
        pods: usize,
        /// Concurrency of the concurrent phase.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Size of the pull image in MiB.
        #[arg(long, default_value_t = 4)]
        pull_mib: usize,
    },
}

fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<report::RunReport>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

async fn serve_images(env_file: PathBuf, pull_mib: usize) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let reg = berth_tests::Registry::start()
        .await
        .context("starting registry")?;
    let imgs = images::push_all(&reg, pull_mib).await?;
    images::write_atomic(&env_file, &imgs.env_file())?;
    eprintln!(
        "berth-bench: registry {} serving; images in {}",
        reg.host(),
        env_file.display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(reg);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => {
            let r = run::run(&args).await?;
            let json = serde_json::to_string_pretty(&r)?;
            if let Some(p) = &args.json_out {
                std::fs::write(p, &json).with_context(|| format!("{}", p.display()))?;
            }
            if args.json {
                println!("{json}");
            } else {
                print!("{}", r.render());
            }
        }
        Cmd::Images { env_file, pull_mib } => serve_images(env_file, pull_mib).await?,
        Cmd::Compare { berth, containerd } => {
            print!("{}", report::compare(&load(&berth)?, &load(&containerd)?));
        }
        Cmd::Cleanup { endpoint } => {
            let mut cri = client::connect(&endpoint).await?;
            let n = workload::remove_labelled(&mut cri, None).await?;
            println!("removed {n} pods");
        }
        Cmd::Smoke {
            pods,
            concurrency,
            pull_mib,
        } => {
            let r = smoke::smoke(pods, concurrency, pull_mib).await?;
            print!("{}", r.render());
        }
    }
    Ok(())
}
