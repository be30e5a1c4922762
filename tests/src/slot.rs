//! Per-test resource slots: a number N claimed atomically (mkdir `/tmp/bt-N`) so that parallel
//! tests, even in different test binaries, get distinct dirs, bridges, subnets and cgroup parents.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Lowest and highest slot numbers (they end up in `10.213.N.0/24`).
const FIRST: u32 = 1;
const LAST: u32 = 250;

/// One claimed slot. The directory is removed on drop (by the owner of the slot: [`crate::Berthd`]).
#[derive(Debug)]
pub struct Slot {
    n: u32,
    dir: PathBuf,
}

impl Slot {
    /// Claims the first free slot by creating `/tmp/bt-N`.
    pub fn claim() -> anyhow::Result<Self> {
        // Start at a pid-dependent offset so parallel binaries rarely race for the same N.
        let span = LAST - FIRST + 1;
        let offset = std::process::id() % span;
        for i in 0..span {
            let n = FIRST + (offset + i) % span;
            let dir = PathBuf::from(format!("/tmp/bt-{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Self { n, dir }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        bail!("no free test slot: /tmp/bt-{FIRST}..{LAST} all exist (stale runs? remove them)")
    }

    /// The slot number N.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// `/tmp/bt-N`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Linux bridge of this slot's default network: `btbN`.
    pub fn bridge(&self) -> String {
        format!("btb{}", self.n)
    }

    /// CNI network name: `btN`.
    pub fn network(&self) -> String {
        format!("bt{}", self.n)
    }

    /// Pod subnet: `10.213.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.n)
    }

    /// Cgroup parent given to every pod of this test: `/bt-N`.
    pub fn cgroup_parent(&self) -> String {
        format!("/bt-{}", self.n)
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; tiny race accepted).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("local_addr")?.port())
}
