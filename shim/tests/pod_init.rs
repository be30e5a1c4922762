//! `berth-shim pod-init`: the holder of a pod's shared PID namespace is PID 1 there, reaps
//! orphans, and exits on SIGTERM. Runs as root (a new PID namespace).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use std::process::Command;
use std::time::{Duration, Instant};

fn stat_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

fn gone(pid: i32) -> bool {
    stat_of(pid).is_none_or(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X'))
    })
}

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs `cmd` and returns its stdout.
fn stdout_of(mut cmd: Command) -> String {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let _ = child.wait();
    out
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !gone(self.0) {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

#[test]
fn init_is_pid_one_reaps_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::SHIM);
    cmd.args(["pod-init", "--id", "p1", "--bundle"])
        .arg(dir.path());
    let pid: i32 = stdout_of(cmd).trim().parse().unwrap();
    let _guard = KillOnDrop(pid);
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(ns, host_ns, "the init has a PID namespace of its own");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("pod-init"));

    // An orphan in the namespace is reaped by the init, not left a zombie.
    let mut orphan = Command::new("nsenter");
    orphan.arg(format!("--pid=/proc/{pid}/ns/pid")).args([
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "sleep 0.2 & echo $!",
    ]);
    assert!(!stdout_of(orphan).trim().is_empty());
    std::thread::sleep(Duration::from_millis(600));
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| stat_of(p).map(|s| (p, s)))
        .filter(|(_, s)| {
            s.rsplit_once(") ").is_some_and(|(_, r)| {
                r.starts_with('Z') && r.split(' ').nth(1) == Some(&pid.to_string())
            })
        })
        .map(|(_, s)| s)
        .collect();
    assert!(zombies.is_empty(), "unreaped children: {zombies:?}");

    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(wait_gone(pid), "pod-init survived SIGTERM");
}
