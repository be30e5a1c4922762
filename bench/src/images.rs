//! The bench's images, built with berth-tests' image builder and pushed to a berth-tests registry:
//! the small busybox workload image, a ~100 MB image of incompressible layers for the pull
//! measurement, and a tiny static pause image (own C source, gcc) for containerd's sandboxes.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use berth_tests::image::{busybox_base_layer, Compression};
use berth_tests::{ImageSpec, LayerBuilder, Registry};

/// The pause program containerd runs as each pod's sandbox container: sleeps in pause(2), exits on
/// SIGINT/SIGTERM, reaps zombies (it is PID 1 of the pod when the pid namespace is shared).
pub const PAUSE_C: &str = r#"#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
}
"#;

/// Size of each random layer of the pull image.
const CHUNK_MIB: usize = 25;

/// References of the pushed bench images.
#[derive(Debug, Clone)]
pub struct BenchImages {
    /// `127.0.0.1:<port>`.
    pub registry: String,
    /// The workload image (busybox).
    pub image: String,
    /// The pull-measurement image.
    pub pull_image: String,
    /// Sum of its compressed layer sizes.
    pub pull_image_bytes: u64,
    /// The pause image.
    pub pause_image: String,
}

impl BenchImages {
    /// `KEY=value` lines a shell script can `source`.
    pub fn env_file(&self) -> String {
        format!(
            "REGISTRY={}\nIMAGE={}\nPULL_IMAGE={}\nPULL_IMAGE_BYTES={}\nPAUSE_IMAGE={}\n",
            self.registry, self.image, self.pull_image, self.pull_image_bytes, self.pause_image
        )
    }
}

/// Compiles [`PAUSE_C`] statically with gcc in `dir`; returns the binary.
pub fn build_pause(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let src = dir.join("pause.c");
    let bin = dir.join("pause");
    std::fs::write(&src, PAUSE_C).context("writing pause.c")?;
    let out = Command::new("gcc")
        .args(["-Os", "-static", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running gcc (apt-get install gcc libc6-dev)")?;
    if !out.status.success() {
        bail!("gcc pause.c: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::read(&bin).context("reading the pause binary")
}

/// The pause image: one layer with `/pause`, entrypoint `/pause`.
pub fn pause_image(pause: &[u8]) -> anyhow::Result<ImageSpec> {
    let layer = LayerBuilder::new()
        .file("pause", 0o755, pause)?
        .finish(Compression::Gzip)?;
    let mut spec = ImageSpec::from_layers(vec![layer]);
    spec.cmd = Vec::new();
    spec.entrypoint = vec!["/pause".into()];
    Ok(spec)
}

/// Fills `buf` with xorshift64* output: incompressible, so the compressed size is the size.
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// The pull image: the busybox base layer plus `mib` MiB of random data in gzip layers of at most
/// 25 MiB (real images are gzip; several layers download in parallel as on a real node).
pub fn pull_image(mib: usize) -> anyhow::Result<ImageSpec> {
    let mut layers = vec![busybox_base_layer()?];
    let mut left = mib;
    let mut i = 0u64;
    while left > 0 {
        let size = left.min(CHUNK_MIB);
        left -= size;
        let mut data = vec![0u8; size << 20];
        fill_random(&mut data, 0x9E37_79B9_7F4A_7C15 ^ i);
        let layer = LayerBuilder::new()
            .dir("big", 0o755)?
            .file(&format!("big/blob-{i}"), 0o644, &data)?
            .finish(Compression::Gzip)?;
        layers.push(layer);
        i += 1;
    }
    Ok(ImageSpec::from_layers(layers))
}

/// Builds and pushes the three images to `reg`.
pub async fn push_all(reg: &Registry, pull_mib: usize) -> anyhow::Result<BenchImages> {
    let tmp = tempfile::Builder::new()
        .prefix("berth-bench-pause-")
        .tempdir()
        .context("tempdir for gcc")?;
    let pause = build_pause(tmp.path())?;
    let pause = pause_image(&pause)?
        .push(reg, "bench/pause", "1")
        .await
        .context("pushing pause image")?;
    let image = ImageSpec::busybox()?
        .push(reg, "bench/busybox", "1")
        .await
        .context("pushing busybox image")?;
    let big = pull_image(pull_mib)?
        .push(reg, "bench/big", "1")
        .await
        .context("pushing pull image")?;
    Ok(BenchImages {
        registry: reg.host(),
        image: image.reference,
        pull_image: big.reference,
        pull_image_bytes: big.compressed_size,
        pause_image: pause.reference,
    })
}

/// Writes `text` to `path` atomically (temp file + rename), for a script polling for it.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fill_is_deterministic_and_not_constant() {
        let (mut a, mut b) = (vec![0u8; 1001], vec![0u8; 1001]);
        fill_random(&mut a, 7);
        fill_random(&mut b, 7);
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
    }

    #[test]
    fn env_file_lines() {
        let i = BenchImages {
            registry: "127.0.0.1:1".into(),
            image: "r/i:1".into(),
            pull_image: "r/b:1".into(),
            pull_image_bytes: 42,
            pause_image: "r/p:1".into(),
        };
        assert!(i.env_file().contains("PULL_IMAGE_BYTES=42\n"));
    }
}
