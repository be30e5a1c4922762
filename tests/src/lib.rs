//! Fixtures for berth's integration tests: a real registry, images built from Debian's busybox,
//! a real berthd per test, CRI helpers and the leak checker.
//!
//! Every test claims a [`slot::Slot`] (a number N with its own temp dir `/tmp/bt-N`, bridge `btbN`,
//! subnet `10.213.N.0/24` and cgroup parent `/bt-N`) so tests run in parallel without colliding.

pub mod cri;
pub mod daemon;
pub mod env;
pub mod host;
pub mod image;
pub mod leaks;
pub mod registry;
pub mod slot;
pub mod stream_client;
pub mod token_registry;
pub mod wait;

pub use daemon::{Berthd, BerthdOptions};
pub use env::TestEnv;
pub use image::{ImageSpec, Layer, LayerBuilder, PushedImage};
pub use registry::Registry;

/// True when the suite runs as root; the tests skip (with a message) otherwise.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the calling test (returns early) when not running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipping: berth integration tests need root");
            return Ok(());
        }
    };
}
