//! Resident memory of the daemon and of its per-pod/per-container helper processes, from
//! `/proc/PID/smaps_rollup` (RSS and PSS), and the process-table scan that finds them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// RSS and PSS of one process or a sum of processes, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mem {
    /// Resident set size.
    pub rss_kib: u64,
    /// Proportional set size (shared pages divided among their users).
    pub pss_kib: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Self) {
        self.rss_kib += o.rss_kib;
        self.pss_kib += o.pss_kib;
    }
}

/// Parses the `Rss:` and `Pss:` lines of a `smaps_rollup` file.
pub fn parse_rollup(text: &str) -> Mem {
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = val.parse::<u64>() else { continue };
        match key {
            "Rss:" => m.rss_kib = v,
            "Pss:" => m.pss_kib = v,
            _ => {}
        }
    }
    m
}

/// RSS/PSS of process `pid`.
pub fn rollup(pid: u32) -> Result<Mem> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })?;
    Ok(parse_rollup(&text))
}

/// One row of the process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// `comm` (at most 15 bytes).
    pub comm: String,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Parses `/proc/PID/stat` into (comm, ppid); comm may contain spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<(String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// Every process currently visible in `/proc` (processes that exit mid-scan are skipped).
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((comm, ppid)) = parse_stat(&stat) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid,
            comm,
            cmdline,
        });
    }
    out
}

/// True when `comm` is the (possibly 15-byte truncated) comm of a program called `name`.
pub fn comm_matches(comm: &str, name: &str) -> bool {
    let truncated = name.get(..name.len().min(15)).unwrap_or(name);
    comm == name || comm == truncated
}

/// The daemon called `name` whose command line mentions `marker` (any, when `marker` is empty);
/// the lowest pid wins when several match.
pub fn find_daemon(procs: &[Proc], name: &str, marker: &str) -> Option<u32> {
    procs
        .iter()
        .filter(|p| comm_matches(&p.comm, name) && p.cmdline.contains(marker))
        .map(|p| p.pid)
        .min()
}

/// Helper processes of one runtime: processes named one of `names` that mention one of `markers`
/// on their command line, or descend from the daemon `daemon` or from another helper (e.g. the
/// pause process under containerd-shim-runc-v2).
pub fn helpers(
    procs: &[Proc],
    names: &[String],
    markers: &[String],
    daemon: Option<u32>,
) -> Vec<Proc> {
    let by_pid: HashMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let named = |p: &Proc| names.iter().any(|n| comm_matches(&p.comm, n));
    let marked = |p: &Proc| {
        named(p)
            && markers
                .iter()
                .any(|m| !m.is_empty() && p.cmdline.contains(m))
    };
    let mut out = Vec::new();
    for p in procs.iter().filter(|p| named(p)) {
        let mut hit = marked(p);
        let mut cur = p.ppid;
        // Bounded walk: pid reuse can in theory make a cycle.
        for _ in 0..64 {
            if hit || cur <= 1 {
                break;
            }
            if Some(cur) == daemon {
                hit = true;
                break;
            }
            match by_pid.get(&cur) {
                Some(parent) => {
                    hit = marked(parent);
                    cur = parent.ppid;
                }
                None => break,
            }
        }
        if hit {
            out.push(p.clone());
        }
    }
    out
}

/// Memory of a set of helper processes, in total and per program name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HelperMem {
    /// Number of processes.
    pub count: usize,
    /// Sum over all of them.
    pub total: Mem,
    /// Sum and count per comm.
    pub by_name: BTreeMap<String, (usize, Mem)>,
}

/// Sums RSS/PSS of `procs` (processes that exited meanwhile are skipped).
pub fn helper_mem(procs: &[Proc]) -> HelperMem {
    let mut h = HelperMem::default();
    for p in procs {
        let Ok(m) = rollup(p.pid) else { continue };
        h.count += 1;
        h.total += m;
        let e = h.by_name.entry(p.comm.clone()).or_default();
        e.0 += 1;
        e.1 += m;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_parses_rss_and_pss() {
        let t = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:     1234 kB\nPss:      567 kB\n\
                 Pss_Anon:  10 kB\nShared_Clean: 5 kB\n";
        assert_eq!(
            parse_rollup(t),
            Mem {
                rss_kib: 1234,
                pss_kib: 567
            }
        );
    }

    #[test]
    fn stat_with_odd_comm() {
        let t = "42 (a (b) c) S 7 42 42 0 -1";
        assert_eq!(parse_stat(t), Some(("a (b) c".into(), 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn truncated_comm() {
        assert!(comm_matches("containerd-shim", "containerd-shim-runc-v2"));
        assert!(comm_matches("berth-shim", "berth-shim"));
        assert!(!comm_matches("containerd", "containerd-shim-runc-v2"));
    }

    fn p(pid: u32, ppid: u32, comm: &str, cmdline: &str) -> Proc {
        Proc {
            pid,
            ppid,
            comm: comm.into(),
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn helpers_by_marker_and_descent() {
        let procs = vec![
            p(10, 1, "containerd", "containerd --config /b/c/config.toml"),
            p(20, 1, "containerd-shim", "shim -address /b/c/c.sock -id x"),
            p(21, 20, "pause", "/pause"),
            p(22, 20, "sleep", "sleep 3600"),
            p(
                30,
                1,
                "containerd-shim",
                "shim -address /other/c.sock -id y",
            ),
            p(31, 30, "pause", "/pause"),
        ];
        let names = vec!["containerd-shim-runc-v2".to_string(), "pause".to_string()];
        let got: Vec<u32> = helpers(&procs, &names, &["/b/c/".into()], Some(10))
            .iter()
            .map(|p| p.pid)
            .collect();
        assert_eq!(got, vec![20, 21]);
        assert_eq!(find_daemon(&procs, "containerd", "/b/c/"), Some(10));
        assert_eq!(find_daemon(&procs, "containerd", "/nowhere/"), None);
    }
}
