//! berthd: flags, config load, start. Everything else lives in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cri_server::config::Config;

/// berth CRI runtime daemon.
#[derive(Parser, Debug)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes CRI container runtime"
)]
struct Cli {
    /// TOML config file; missing keys take the embedded defaults (`berthd config default`).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// gRPC unix socket the kubelet and crictl connect to.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Persistent root: images, snapshots, metadata.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state: sockets, namespace pins, bundles (tmpfs).
    #[arg(long)]
    state: Option<PathBuf>,
    /// CNI network configuration directory.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories, searched in order (repeat the flag).
    #[arg(long)]
    cni_bin_dir: Vec<PathBuf>,
    /// Log filter, RUST_LOG syntax (e.g. `info,cri_server=debug`).
    #[arg(long)]
    log_level: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the full embedded default configuration as TOML.
    Default,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config {
        what: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", Config::default().to_toml()?);
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => {
            Config::load(path).with_context(|| format!("loading config {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = cli.socket {
        config.socket = v;
    }
    if let Some(v) = cli.root {
        config.root = v;
    }
    if let Some(v) = cli.state {
        config.state = v;
    }
    if let Some(v) = cli.cni_conf_dir {
        config.cni.conf_dir = v;
    }
    if !cli.cni_bin_dir.is_empty() {
        config.cni.bin_dirs = cli.cni_bin_dir;
    }
    if let Some(v) = cli.log_level {
        config.log.level = v;
    }
    if cli.log_json {
        config.log.json = true;
    }
    cri_server::logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
        .context("starting tokio runtime")?;
    runtime.block_on(cri_server::server::run(config))
}
