//! What one run measured ([`RunReport`], also its `--json` form), how it prints, and the
//! side-by-side comparison of several runs per runtime with ratios berth/containerd.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::memory::{HelperMem, Mem};
use crate::stats::{median, summarize, Summary};
use crate::workload::{PullResult, Samples, OPS};

/// Everything one `berth-bench run` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    /// `runtime_name runtime_version` from Version.
    pub runtime: String,
    /// The CRI socket.
    pub endpoint: String,
    /// Pods per phase.
    pub pods: usize,
    /// Concurrency of the concurrent phase.
    pub concurrency: usize,
    /// Raw samples (ms) of the sequential phase.
    pub sequential: Samples,
    /// Raw samples (ms) of the concurrent phase.
    pub concurrent: Samples,
    /// Wall time of starting all pods in the concurrent phase (s).
    pub concurrent_start_wall_secs: f64,
    /// The timed pull, if asked for.
    pub pull: Option<PullResult>,
    /// The daemon's pid, when found.
    pub daemon_pid: Option<u32>,
    /// Daemon memory before any pod.
    pub daemon_idle: Option<Mem>,
    /// Daemon memory with `pods` pods running.
    pub daemon_loaded: Option<Mem>,
    /// Helper processes with `pods` pods running.
    pub helpers: Option<HelperMem>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl RunReport {
    /// Helper RSS/PSS per container (sum over helpers / pods), KiB.
    pub fn per_container(&self) -> Option<Mem> {
        let h = self.helpers.as_ref()?;
        let n = self.pods.max(1) as u64;
        Some(Mem {
            rss_kib: h.total.rss_kib / n,
            pss_kib: h.total.pss_kib / n,
        })
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "runtime: {}  endpoint: {}", self.runtime, self.endpoint);
        for (title, samples) in [
            ("sequential".to_string(), &self.sequential),
            (
                format!("concurrency {}", self.concurrency),
                &self.concurrent,
            ),
        ] {
            let _ = writeln!(s, "\n{title}, {} pods (ms)", self.pods);
            let _ = writeln!(s, "{:<18} {:>9} {:>9} {:>9}", "op", "p50", "p90", "p99");
            for op in OPS {
                let x = summarize(samples.get(op).map(Vec::as_slice).unwrap_or(&[]));
                let _ = writeln!(s, "{op:<18} {:>9.1} {:>9.1} {:>9.1}", x.p50, x.p90, x.p99);
            }
        }
        if self.concurrent_start_wall_secs > 0.0 {
            let _ = writeln!(
                s,
                "concurrent start of {} pods: {:.2} s wall ({:.1} pods/s)",
                self.pods,
                self.concurrent_start_wall_secs,
                self.pods as f64 / self.concurrent_start_wall_secs
            );
        }
        if let Some(p) = &self.pull {
            let _ = writeln!(
                s,
                "\npull {}: {:.2} s, {:.1} MB, {:.1} MB/s",
                p.image,
                p.secs,
                p.bytes as f64 / 1e6,
                p.mb_per_s
            );
        }
        let _ = writeln!(s, "\nmemory (MiB)              RSS      PSS");
        if let Some(m) = self.daemon_idle {
            let _ = writeln!(
                s,
                "daemon idle         {:>9.1} {:>8.1}",
                mib(m.rss_kib),
                mib(m.pss_kib)
            );
        }
        if let Some(m) = self.daemon_loaded {
            let _ = writeln!(
                s,
                "daemon, {:>3} pods    {:>9.1} {:>8.1}",
                self.pods,
                mib(m.rss_kib),
                mib(m.pss_kib)
            );
        }
        if let Some(h) = &self.helpers {
            for (name, (n, m)) in &h.by_name {
                let _ = writeln!(
                    s,
                    "{n:>3} x {name:<15} {:>9.1} {:>8.1}",
                    mib(m.rss_kib),
                    mib(m.pss_kib)
                );
            }
        }
        if let Some(m) = self.per_container() {
            let _ = writeln!(
                s,
                "per container       {:>9.2} {:>8.2}",
                mib(m.rss_kib),
                mib(m.pss_kib)
            );
        }
        s
    }
}

/// One row of the comparison: a value for berth, for containerd, and berth/containerd.
fn row(s: &mut String, label: &str, b: f64, c: f64, unit: &str) {
    let ratio = if c > 0.0 { b / c } else { f64::NAN };
    let _ = writeln!(s, "{label:<34} {b:>10.2} {c:>12.2} {ratio:>7.2}  {unit}");
}

fn pooled(runs: &[RunReport], concurrent: bool, op: &str) -> Summary {
    let all: Vec<f64> = runs
        .iter()
        .flat_map(|r| {
            let s = if concurrent {
                &r.concurrent
            } else {
                &r.sequential
            };
            s.get(op).cloned().unwrap_or_default()
        })
        .collect();
    summarize(&all)
}

fn med(runs: &[RunReport], f: impl Fn(&RunReport) -> Option<f64>) -> f64 {
    let v: Vec<f64> = runs.iter().filter_map(f).collect();
    median(&v)
}

/// The side-by-side table: latency percentiles pooled over all rounds, memory and pull as the
/// median over rounds, ratio berth/containerd, and where berth stands against the targets.
pub fn compare(berth: &[RunReport], containerd: &[RunReport]) -> String {
    let mut s = String::new();
    let name = |r: &[RunReport]| r.first().map(|x| x.runtime.clone()).unwrap_or_default();
    let pods = berth.first().map_or(0, |r| r.pods);
    let conc = berth.first().map_or(0, |r| r.concurrency);
    let _ = writeln!(
        s,
        "berth: {} | containerd: {} | {} rounds each, {pods} pods per phase, concurrency {conc}",
        name(berth),
        name(containerd),
        berth.len().min(containerd.len())
    );
    let _ = writeln!(
        s,
        "{:<34} {:>10} {:>12} {:>7}",
        "", "berth", "containerd", "ratio"
    );
    for (concurrent, title) in [(false, "sequential"), (true, "concurrent")] {
        for op in OPS {
            let (b, c) = (
                pooled(berth, concurrent, op),
                pooled(containerd, concurrent, op),
            );
            for (p, bv, cv) in [
                ("p50", b.p50, c.p50),
                ("p90", b.p90, c.p90),
                ("p99", b.p99, c.p99),
            ] {
                row(&mut s, &format!("{title} {op} {p}"), bv, cv, "ms");
            }
        }
    }
    let wall = |r: &RunReport| Some(r.concurrent_start_wall_secs).filter(|w| *w > 0.0);
    row(
        &mut s,
        "concurrent start, all pods",
        med(berth, wall),
        med(containerd, wall),
        "s",
    );
    let pull_s = |r: &RunReport| r.pull.as_ref().map(|p| p.secs);
    let pull_r = |r: &RunReport| r.pull.as_ref().map(|p| p.mb_per_s);
    let mb = med(berth, |r: &RunReport| {
        r.pull.as_ref().map(|p| p.bytes as f64 / 1e6)
    });
    row(
        &mut s,
        &format!("PullImage {mb:.0} MB"),
        med(berth, pull_s),
        med(containerd, pull_s),
        "s",
    );
    row(
        &mut s,
        "PullImage throughput",
        med(berth, pull_r),
        med(containerd, pull_r),
        "MB/s",
    );
    let idle_r = |r: &RunReport| r.daemon_idle.map(|m| mib(m.rss_kib));
    let idle_p = |r: &RunReport| r.daemon_idle.map(|m| mib(m.pss_kib));
    let load_r = |r: &RunReport| r.daemon_loaded.map(|m| mib(m.rss_kib));
    let load_p = |r: &RunReport| r.daemon_loaded.map(|m| mib(m.pss_kib));
    let grow = |r: &RunReport| {
        let (i, l) = (r.daemon_idle?, r.daemon_loaded?);
        Some((mib(l.rss_kib) - mib(i.rss_kib)) / r.pods.max(1) as f64)
    };
    let pc_r = |r: &RunReport| r.per_container().map(|m| mib(m.rss_kib));
    let pc_p = |r: &RunReport| r.per_container().map(|m| mib(m.pss_kib));
    let fresh = |runs: &[RunReport]| runs.first().and_then(idle_r).unwrap_or(0.0);
    row(
        &mut s,
        "daemon RSS idle, fresh (round 1)",
        fresh(berth),
        fresh(containerd),
        "MiB",
    );
    row(
        &mut s,
        "daemon RSS idle (median of rounds)",
        med(berth, idle_r),
        med(containerd, idle_r),
        "MiB",
    );
    row(
        &mut s,
        "daemon PSS idle",
        med(berth, idle_p),
        med(containerd, idle_p),
        "MiB",
    );
    row(
        &mut s,
        &format!("daemon RSS, {pods} pods"),
        med(berth, load_r),
        med(containerd, load_r),
        "MiB",
    );
    row(
        &mut s,
        &format!("daemon PSS, {pods} pods"),
        med(berth, load_p),
        med(containerd, load_p),
        "MiB",
    );
    row(
        &mut s,
        "daemon RSS growth per pod",
        med(berth, grow),
        med(containerd, grow),
        "MiB",
    );
    let procs = |r: &RunReport| {
        r.helpers
            .as_ref()
            .map(|h| h.count as f64 / r.pods.max(1) as f64)
    };
    row(
        &mut s,
        "helper processes per pod",
        med(berth, procs),
        med(containerd, procs),
        "",
    );
    row(
        &mut s,
        "helpers RSS per container",
        med(berth, pc_r),
        med(containerd, pc_r),
        "MiB",
    );
    row(
        &mut s,
        "helpers PSS per container",
        med(berth, pc_p),
        med(containerd, pc_p),
        "MiB",
    );

    let _ = writeln!(s, "\ntargets (issue 4):");
    for op in ["RunPodSandbox", "StartContainer", "StopPodSandbox"] {
        let (b, c) = (
            pooled(berth, false, op).p50,
            pooled(containerd, false, op).p50,
        );
        let r = if c > 0.0 { b / c } else { f64::NAN };
        let ok = if r <= 0.2 { "met" } else { "not met" };
        let _ = writeln!(s, "  {op} p50 <= 1/5 of containerd: {r:.2}x, {ok}");
    }
    let pc = med(berth, pc_r);
    let idle = fresh(berth);
    let load = med(berth, load_r);
    let _ = writeln!(
        s,
        "  per-container RSS < 2 MiB: {pc:.2} MiB, {}",
        if pc <= 0.0 {
            "not measured"
        } else if pc < 2.0 {
            "met"
        } else {
            "not met"
        }
    );
    let _ = writeln!(
        s,
        "  berthd idle RSS < 15 MiB: {idle:.1} MiB fresh, {:.1} MiB between rounds, {}",
        med(berth, idle_r),
        if idle < 15.0 { "met" } else { "not met" }
    );
    let verdict = if pods >= 100 {
        format!("measured, {}", if load < 30.0 { "met" } else { "not met" })
    } else {
        // Growth per pod from a handful of pods is mostly noise: only an estimate, run -n 100.
        let est = idle + med(berth, grow) * 100.0;
        format!("{est:.1} MiB extrapolated to 100 pods; run -n 100 to measure")
    };
    let _ = writeln!(
        s,
        "  berthd RSS < 30 MiB with 100 pods: {load:.1} MiB with {pods} pods ({verdict})"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, scale: f64) -> RunReport {
        let mut r = RunReport {
            runtime: name.into(),
            pods: 2,
            concurrency: 2,
            daemon_idle: Some(Mem {
                rss_kib: (10240.0 * scale) as u64,
                pss_kib: 1,
            }),
            ..Default::default()
        };
        for op in OPS {
            r.sequential
                .insert(op.into(), vec![10.0 * scale, 20.0 * scale]);
        }
        r
    }

    #[test]
    fn ratio_of_p50() {
        let out = compare(&[run("berth", 1.0)], &[run("containerd", 10.0)]);
        assert!(out.contains("sequential RunPodSandbox p50"), "{out}");
        assert!(
            out.contains("RunPodSandbox p50 <= 1/5 of containerd: 0.10x, met"),
            "{out}"
        );
        assert!(
            out.contains("berthd idle RSS < 15 MiB: 10.0 MiB fresh"),
            "{out}"
        );
    }

    #[test]
    fn json_round_trip() {
        let r = run("berth", 1.0);
        let text = serde_json::to_string(&r).unwrap_or_default();
        let back: RunReport = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back.sequential, r.sequential);
        assert!(r.render().contains("RunPodSandbox"));
    }
}
