//! berth-shim: one process per container, serving containerd's shim v2 task API over ttrpc on
//! `<bundle>/shim.sock`. See docs/shim.md.
//!
//! - `berth-shim start --id <ID> --bundle <DIR>`: launch the daemon, print its socket path.
//! - `berth-shim serve --id <ID> --bundle <DIR>`: the daemon itself.
//! - `berth-shim create-helper --id <ID> --bundle <DIR>`: internal, see `helper.rs`.
//! - `berth-shim exec-helper --id <ID> --bundle <DIR>`: internal, see `exec_helper.rs`.
//! - `berth-shim pod-init --id <SANDBOX> --bundle <SANDBOX DIR>`: a pod's PID namespace init,
//!   see `pod_init.rs`.
//!
//! No async runtime: a sync ttrpc server, std threads and blocking I/O keep the resident set
//! of a per-container process small.

mod attach;
mod console;
mod container;
mod cri_log;
mod error;
mod exec;
mod exec_helper;
mod exec_io;
mod executor;
mod helper;
mod log;
mod log_reopen;
mod pod_init;
mod propagation;
mod pump;
mod reaper;
mod serve;
mod service;
mod start;
mod stdio;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

/// Parsed command line.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    command: Command,
    id: String,
    bundle: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Start,
    Serve,
    CreateHelper,
    ExecHelper,
    PodInit,
}

const USAGE: &str = "usage: berth-shim start|serve|pod-init --id <ID> --bundle <DIR>";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let command = match args.first().map(String::as_str) {
        Some("start") => Command::Start,
        Some("serve") => Command::Serve,
        Some("create-helper") => Command::CreateHelper,
        Some("exec-helper") => Command::ExecHelper,
        Some("pod-init") => Command::PodInit,
        _ => return Err(USAGE.to_string()),
    };
    let (mut id, mut bundle) = (None, None);
    let mut it = args[1..].iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match key {
            "--id" => &mut id,
            "--bundle" => &mut bundle,
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{key} needs a value\n{USAGE}"))?,
        };
        *slot = Some(value);
    }
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("--id is required\n{USAGE}"))?;
    let bundle = bundle
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("--bundle is required\n{USAGE}"))?;
    Ok(Args {
        command,
        id,
        bundle: PathBuf::from(bundle),
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("berth-shim: {msg}");
            return ExitCode::from(2);
        }
    };
    let bundle = match std::fs::canonicalize(&args.bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("berth-shim: bundle {}: {e}", args.bundle.display());
            return ExitCode::FAILURE;
        }
    };
    let res = match args.command {
        Command::Start => start::run(&args.id, &bundle),
        Command::Serve => serve::run(&args.id, &bundle),
        // The sandbox dir is only named (on the command line, to find leaked holders).
        Command::PodInit => pod_init::run(),
        Command::CreateHelper | Command::ExecHelper => {
            // Its stdout/stderr are the container's: it reports on fd 3 and prints nothing.
            let ok = if args.command == Command::ExecHelper {
                exec_helper::run(&args.id, &bundle)
            } else {
                helper::run(&args.id, &bundle)
            };
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            let what = match args.command {
                Command::PodInit => "pod sandbox",
                _ => "container",
            };
            eprintln!("berth-shim: {what} {}: {msg}", args.id);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_both_forms() {
        let a = parse_args(&v(&["start", "--id", "c1", "--bundle=/b"]));
        assert_eq!(
            a,
            Ok(Args {
                command: Command::Start,
                id: "c1".into(),
                bundle: PathBuf::from("/b")
            })
        );
        assert!(parse_args(&v(&["serve", "--id", "c1"])).is_err());
        assert!(parse_args(&v(&["run", "--id", "c1", "--bundle", "/b"])).is_err());
        assert!(parse_args(&v(&["start", "--id", "c1", "--bundle", "/b", "--x", "1"])).is_err());
        assert!(parse_args(&v(&["start", "--id"])).is_err());
        assert_eq!(
            parse_args(&v(&["pod-init", "--id", "p1", "--bundle", "/s/p1"])).map(|a| a.command),
            Ok(Command::PodInit)
        );
    }
}
