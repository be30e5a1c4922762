//! The leak checker every test ends with: after all pods are removed, berthd must have left no
//! mount, namespace pin, cgroup, shim process, state directory, IPAM reservation or veth behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::Berthd;
use crate::host::{mounts_under, pids_mentioning};

/// Cgroup directories named `parent` (e.g. `/bt-7`) under every mounted hierarchy: v2 at
/// `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`, and each v1 controller dir (deduplicated).
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            roots.push(e.path());
        }
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for root in roots {
        let d = root.join(rel);
        let Ok(canon) = d.canonicalize() else {
            continue;
        };
        if canon.is_dir() && !out.contains(&canon) {
            out.push(canon);
        }
    }
    out
}

fn sub_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What a daemon currently holds on the host, by kind. While pods run, every field is expected
/// to be non-empty (see [`Footprint::missing`]); after all pods are removed, all must be empty.
#[derive(Debug, Default, Clone)]
pub struct Footprint {
    /// Mount points under the daemon's root and state dirs.
    pub mounts: Vec<String>,
    /// Cgroup dirs (and processes) under the test's cgroup parent.
    pub cgroups: Vec<String>,
    /// Processes (other than berthd) naming the test dir: shims and anything they started.
    pub processes: Vec<String>,
    /// Entries of `<state>/sandboxes` and `<state>/containers`.
    pub state_dirs: Vec<String>,
    /// Keyed (writable) snapshots: entries of `<root>/snapshots/keys`.
    pub snapshots: Vec<String>,
    /// host-local IPAM reservations of the test network.
    pub ipam: Vec<String>,
    /// Interfaces attached to the test bridge.
    pub veths: Vec<String>,
}

impl Footprint {
    /// All entries, each prefixed with its kind.
    pub fn all(&self) -> Vec<String> {
        let kinds = [
            ("mount", &self.mounts),
            ("cgroup", &self.cgroups),
            ("process", &self.processes),
            ("state", &self.state_dirs),
            ("snapshot", &self.snapshots),
            ("ipam", &self.ipam),
            ("veth", &self.veths),
        ];
        kinds
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |e| format!("{k}: {e}")))
            .collect()
    }

    /// Kinds with no entry (used while pods run: proves the leak checks look in the right places).
    pub fn missing(&self) -> Vec<&'static str> {
        let kinds = [
            ("mounts", &self.mounts),
            ("cgroups", &self.cgroups),
            ("processes", &self.processes),
            ("state_dirs", &self.state_dirs),
            ("snapshots", &self.snapshots),
            ("ipam", &self.ipam),
            ("veths", &self.veths),
        ];
        kinds
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }
}

/// Collects what the daemon `d` holds on the host right now.
pub fn footprint(d: &Berthd) -> Footprint {
    let mut f = Footprint::default();
    for dir in [d.root(), d.state()] {
        f.mounts.extend(mounts_under(&dir));
    }
    for cg in cgroup_dirs(&d.slot().cgroup_parent()) {
        for sub in sub_dirs(&cg) {
            f.cgroups.push(sub.display().to_string());
        }
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            f.cgroups.push(format!(
                "processes in {}: {}",
                cg.display(),
                procs.replace('\n', " ")
            ));
        }
    }
    let marker = format!("{}/", d.dir().display());
    let berthd = d.pid().map(|p| p as i32);
    for pid in pids_mentioning(&marker) {
        if Some(pid) == berthd {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        f.processes.push(format!("{pid}: {cmd}"));
    }
    for sub in ["sandboxes", "containers"] {
        let dir = d.state().join(sub);
        f.state_dirs.extend(
            entries(&dir)
                .into_iter()
                .map(|e| format!("{}/{e}", dir.display())),
        );
    }
    let keys = d.root().join("snapshots").join("keys");
    f.snapshots = entries(&keys)
        .into_iter()
        .map(|k| format!("{}/{k}", keys.display()))
        .collect();
    let ipam = d
        .root()
        .join("cni")
        .join("networks")
        .join(d.slot().network());
    f.ipam = entries(&ipam)
        .into_iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .map(|n| format!("{}/{n}", ipam.display()))
        .collect();
    let brif = PathBuf::from(format!("/sys/class/net/{}/brif", d.slot().bridge()));
    f.veths = entries(&brif);
    f
}

/// Everything of `d` that is still there although no pod exists. Empty means clean.
pub fn find_leaks(d: &Berthd) -> Vec<String> {
    footprint(d).all()
}

/// Removes every pod through CRI, then waits (up to 15 s) until [`find_leaks`] is empty; panics
/// listing the leaks otherwise. On success the test counts as passed (log not printed on drop).
pub async fn assert_no_leaks(d: &Berthd) {
    if let Err(e) = d.remove_all_pods().await {
        panic!("removing all pods before the leak check failed: {e:#}");
    }
    let mut leaks = Vec::new();
    for _ in 0..75 {
        leaks = find_leaks(d);
        if leaks.is_empty() {
            d.pass();
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "berthd leaked after all pods were removed:\n  {}",
        leaks.join("\n  ")
    );
}
