//! A layer tarball is hostile input: `..`, absolute paths, symlink and hardlink escapes and
//! whiteouts through symlinks must be refused or contained, and nothing outside changes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_tests::cri;
use berth_tests::image::{self, Compression, LayerBuilder};
use berth_tests::{leaks, require_root, ImageSpec, TestEnv};

/// (path → (mode, size, inode, content)) of everything under `dir`, symlinks not followed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let content = if m.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (m.mode(), m.size(), m.ino(), content));
        }
    }
    out
}

/// Every path under `dir` whose file name is `name` (symlinks not followed).
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy() == name {
                out.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_are_refused_or_contained() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start().await?;
    let d = &env.d;
    let sentinel = tempfile::Builder::new()
        .prefix("bt-sentinel-")
        .tempdir_in("/tmp")?;
    let s = sentinel.path().display().to_string();
    std::fs::write(sentinel.path().join("secret"), b"original secret\n")?;
    std::fs::create_dir(sentinel.path().join("sub"))?;
    std::fs::write(sentinel.path().join("sub/file"), b"untouched\n")?;
    let before = snapshot(sentinel.path());
    let up = "../".repeat(12);
    let rel = s.trim_start_matches('/');
    let marker = format!("escape-{}", d.slot().n());
    let inside = format!("inside-{}", d.slot().n());

    // One image per attack, so an unpacker that stops at the first bad entry still meets them all.
    type Attack = fn(LayerBuilder, &str, &str, &str, &str) -> anyhow::Result<LayerBuilder>;
    let attacks: Vec<(&str, Attack)> = vec![
        ("dotdot", |b, up, rel, _s, marker| {
            b.file(&format!("../{marker}"), 0o644, b"x")?.file(
                &format!("{up}{rel}/dotdot"),
                0o644,
                b"x",
            )
        }),
        ("absolute", |b, _up, _rel, s, _m| {
            b.file(&format!("{s}/abs"), 0o644, b"x")?
                .file(&format!("{s}/secret"), 0o644, b"x")
        }),
        ("symlink-abs", |b, _up, _rel, s, _m| {
            b.symlink("evil", s)?
                .file("evil/pwned", 0o644, b"x")?
                .file("evil/secret", 0o644, b"overwritten")?
                .dir("evil/sub", 0o777)
        }),
        ("symlink-rel", |b, up, rel, _s, _m| {
            b.symlink("evilrel", &format!("{up}{rel}"))?
                .file("evilrel/pwned2", 0o644, b"x")?
                .file("evilrel/sub/file", 0o644, b"overwritten")
        }),
        ("symlink-chain", |b, _up, _rel, s, _m| {
            b.dir("a", 0o755)?
                .symlink("a/b", "/")?
                .file(&format!("a/b{s}/chained"), 0o644, b"x")
        }),
        ("hardlink", |b, up, rel, s, _m| {
            b.hardlink("hl", &format!("{s}/secret"))?
                .hardlink("hl2", &format!("{up}{rel}/sub/file"))?
                .file("hl", 0o644, b"overwritten")?
                .file("hl2", 0o644, b"overwritten")
        }),
        ("whiteout-through-symlink", |b, _up, _rel, s, _m| {
            b.symlink("wh", s)?.file("wh/.wh.secret", 0o644, b"")?.file(
                "wh/sub/.wh..wh..opq",
                0o644,
                b"",
            )
        }),
        ("whiteout-dotdot", |b, up, rel, _s, _m| {
            b.file(&format!("{up}{rel}/.wh.secret"), 0o644, b"")?
                .file("../.wh.root", 0o644, b"")
        }),
    ];

    let mut outcomes = Vec::new();
    for (i, (name, attack)) in attacks.into_iter().enumerate() {
        let base = LayerBuilder::new().file(&inside, 0o644, b"inside")?;
        let layer = attack(base, &up, rel, &s, &marker)?.finish(if i % 2 == 0 {
            Compression::Gzip
        } else {
            Compression::Zstd
        })?;
        let mut spec = ImageSpec::from_layers(vec![image::busybox_base_layer()?, layer]);
        spec.cmd = vec!["true".into()];
        let pushed = spec.push(&env.reg, &format!("hostile/{name}"), "1").await?;
        let pulled = cri::pull(d, &pushed.reference, None).await;
        outcomes.push(match &pulled {
            Ok(_) => format!("{name}: pulled (must be contained)"),
            Err(e) => format!("{name}: refused: {e:#}"),
        });
        assert_eq!(
            snapshot(sentinel.path()),
            before,
            "attack {name} changed {s} ({outcomes:?})"
        );
        if pulled.is_ok() {
            // Contained: run it, which mounts the layers, and check again.
            let (pod_id, pod) = env.pod(&format!("hostile-{i}")).await?;
            let ctr = cri::shell("look", &pushed.reference, "ls / > /dev/null");
            let (st, _) = cri::run_to_exit(d, &pod_id, &pod, ctr).await?;
            assert_eq!(
                st.exit_code, 0,
                "container of contained image {name}: {st:?}"
            );
            assert_eq!(
                snapshot(sentinel.path()),
                before,
                "running {name} changed {s}"
            );
        }
    }
    // Across layers: an absolute symlink is legitimate in one layer (images have them) and the next
    // layer writes "through" it. Overlay semantics put the write in the upper layer; it must never
    // reach the symlink's target on the host.
    let lower = LayerBuilder::new()
        .symlink("evil", &s)?
        .file(&inside, 0o644, b"inside")?
        .finish(Compression::Gzip)?;
    let upper = LayerBuilder::new()
        .dir("evil", 0o755)?
        .file("evil/pwned", 0o644, b"x")?
        .file("evil/secret", 0o644, b"overwritten")?
        .finish(Compression::Zstd)?;
    let mut spec = ImageSpec::from_layers(vec![image::busybox_base_layer()?, lower, upper]);
    spec.cmd = vec!["true".into()];
    let pushed = spec.push(&env.reg, "hostile/cross-layer", "1").await?;
    let pulled = cri::pull(d, &pushed.reference, None).await;
    outcomes.push(match &pulled {
        Ok(_) => "cross-layer symlink: pulled (must be contained)".to_string(),
        Err(e) => format!("cross-layer symlink: refused: {e:#}"),
    });
    assert_eq!(
        snapshot(sentinel.path()),
        before,
        "cross-layer symlink changed {s}"
    );
    if pulled.is_ok() {
        let (pod_id, pod) = env.pod("hostile-cross").await?;
        let ctr = cri::shell("look", &pushed.reference, "cat /evil/secret");
        let (st, out) = cri::run_to_exit(d, &pod_id, &pod, ctr).await?;
        assert_eq!(st.exit_code, 0, "{st:?}");
        assert_eq!(
            out,
            ["overwritten"],
            "the upper layer's evil/ directory wins in the container"
        );
        assert_eq!(
            snapshot(sentinel.path()),
            before,
            "running cross-layer image changed {s}"
        );
    }

    eprintln!("hostile layer outcomes:\n  {}", outcomes.join("\n  "));

    // `../escape-N` may only exist where the unpacker put it inside a snapshot (next to inside-N).
    for found in find_named(d.dir(), &marker) {
        let dir = found.parent().map(Path::to_path_buf).unwrap_or_default();
        assert!(
            dir.join(&inside).exists(),
            "{} escaped its snapshot (no {inside} beside it)",
            found.display()
        );
    }
    for p in ["/dotdot", "/abs", "/pwned", "/pwned2", "/chained"] {
        assert!(!Path::new(p).exists(), "{p} was created on the host");
    }
    assert!(std::fs::symlink_metadata(format!("/tmp/{marker}")).is_err());
    leaks::assert_no_leaks(d).await;
    Ok(())
}
