//! Snapshotter tests: layout, atomicity, GC and real overlay mounts (root).

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::*;
use crate::testutil::{blob, Layer, MountGuard};
use crate::{mount_all, unmount};

struct Env {
    _t: tempfile::TempDir,
    root: PathBuf,
    blobs: PathBuf,
    s: Snapshotter,
}

fn env_at(base: &Path) -> Env {
    let t = tempfile::tempdir_in(base).expect("tempdir");
    let root = t.path().join("snap");
    let blobs = t.path().join("blobs");
    fs::create_dir(&blobs).expect("mkdir");
    let s = Snapshotter::open(&root).expect("open");
    Env {
        _t: t,
        root,
        blobs,
        s,
    }
}

fn env() -> Env {
    env_at(&std::env::temp_dir())
}

impl Env {
    /// Unpacks `tar` (gzip) on `parent`; returns the chain id.
    fn layer(&self, parent: Option<&str>, tar: &[u8]) -> String {
        let name = crate::fsutil::random_name().expect("name");
        let (path, diff) = blob(&self.blobs, &name, tar, Compression::Gzip);
        self.s
            .unpack_layer(parent, &path, Compression::Gzip, &diff)
            .expect("unpack")
    }

    fn snapshot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join("snapshots"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

fn opt<'a>(m: &'a Mount, prefix: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(prefix))
}

#[test]
fn unpack_commits_once_and_chains() {
    let e = env();
    let base = e.layer(None, &Layer::new().file("a", b"1").finish());
    let tar2 = Layer::new().file("b", b"2").finish();
    let top = e.layer(Some(&base), &tar2);
    assert!(e.s.has_committed(&base) && e.s.has_committed(&top));
    assert_eq!(
        top,
        Snapshotter::chain_id(Some(&base), &crate::digest::of_bytes(&tar2))
    );
    // Unpacking again is a no-op.
    assert_eq!(e.layer(Some(&base), &tar2), top);
    assert_eq!(e.snapshot_dirs(), vec!["1".to_string(), "2".to_string()]);
    assert!(e.root.join("snapshots/1/fs/a").is_file());
    // An unknown parent is NotFound; a bad diff id is InvalidInput.
    let (p, d) = blob(&e.blobs, "x", &tar2, Compression::None);
    let missing = crate::digest::of_bytes(b"missing");
    assert!(e
        .s
        .unpack_layer(Some(&missing), &p, Compression::None, &d)
        .is_err_and(|e| e.is_not_found()));
    assert!(e
        .s
        .unpack_layer(None, &p, Compression::None, "sha256:xyz")
        .is_err_and(|e| e.is_invalid_input()));
}

#[test]
fn failed_unpack_leaves_nothing() {
    let e = env();
    let outside = e.root.join("..").join("outside");
    let tar = Layer::new()
        .file("ok", b"x")
        .symlink("evil", &outside.to_string_lossy())
        .file("evil/x", b"pwned")
        .finish();
    let (p, d) = blob(&e.blobs, "evil", &tar, Compression::None);
    assert!(e
        .s
        .unpack_layer(None, &p, Compression::None, &d)
        .is_err_and(|e| e.is_invalid_input()));
    let wrong = crate::digest::of_bytes(b"other");
    let (p, _) = blob(
        &e.blobs,
        "good",
        &Layer::new().file("a", b"1").finish(),
        Compression::None,
    );
    assert!(e
        .s
        .unpack_layer(None, &p, Compression::None, &wrong)
        .is_err_and(|e| e.is_invalid_input()));
    assert!(!e.s.has_committed(&wrong));
    assert!(e.snapshot_dirs().is_empty(), "{:?}", e.snapshot_dirs());
    assert!(!outside.exists());
}

#[test]
fn open_removes_crash_leftovers() {
    let e = env();
    let base = e.layer(None, &Layer::new().file("a", b"1").finish());
    e.s.prepare("c1", Some(&base)).expect("prepare");
    // A crash mid-unpack, a published-but-unlinked snapshot and a dangling link.
    fs::create_dir_all(e.root.join("snapshots/tmp-deadbeef/fs/x")).expect("mkdir");
    fs::create_dir_all(e.root.join("snapshots/9/fs")).expect("mkdir");
    let meta = r#"{"kind":"committed","chain_id":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}"#;
    fs::write(e.root.join("snapshots/9/meta.json"), meta).expect("write");
    std::os::unix::fs::symlink("77", e.root.join("chains").join("2".repeat(64))).expect("symlink");
    let s = Snapshotter::open(&e.root).expect("reopen");
    assert_eq!(e.snapshot_dirs(), vec!["1".to_string(), "2".to_string()]);
    assert!(fs::symlink_metadata(e.root.join("chains").join("2".repeat(64))).is_err());
    assert!(s.has_committed(&base));
    assert!(s.mounts("c1").is_ok());
}

#[test]
fn prepare_view_mounts_remove() {
    let e = env();
    let l1 = e.layer(None, &Layer::new().file("a", b"1").finish());
    let l2 = e.layer(Some(&l1), &Layer::new().file("b", b"2").finish());
    let fs_of = |n: &str| {
        e.root
            .join("snapshots")
            .join(n)
            .join("fs")
            .to_string_lossy()
            .into_owned()
    };

    let m = e.s.prepare("scratch", None).expect("prepare");
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].kind.as_str(), m[0].options.clone()),
        ("bind", vec!["rw".into(), "rbind".into()])
    );

    let m = e.s.prepare("c1", Some(&l2)).expect("prepare");
    assert_eq!(m[0].kind, "overlay");
    assert_eq!(
        opt(&m[0], "lowerdir="),
        Some(format!("{}:{}", fs_of("2"), fs_of("1")).as_str())
    );
    assert!(opt(&m[0], "upperdir=").is_some() && opt(&m[0], "workdir=").is_some());
    assert_eq!(e.s.mounts("c1").expect("mounts"), m);
    assert!(e
        .s
        .prepare("c1", Some(&l1))
        .is_err_and(|e| e.is_already_exists()));
    assert!(e.s.view("c1", &l1).is_err_and(|e| e.is_already_exists()));

    let v = e.s.view("v1", &l1).expect("view");
    assert_eq!(
        (v[0].kind.as_str(), v[0].source.clone()),
        ("bind", fs_of("1"))
    );
    assert_eq!(v[0].options, vec!["ro".to_string(), "rbind".to_string()]);
    let v = e.s.view("v2", &l2).expect("view");
    assert_eq!(v[0].kind, "overlay");
    assert!(opt(&v[0], "upperdir=").is_none());

    let missing = crate::digest::of_bytes(b"missing");
    assert!(e
        .s
        .prepare("c2", Some(&missing))
        .is_err_and(|e| e.is_not_found()));
    assert!(e.s.mounts("nope").is_err_and(|e| e.is_not_found()));
    assert!(e.s.usage("nope").is_err_and(|e| e.is_not_found()));

    e.s.remove("c1").expect("remove");
    e.s.remove("c1").expect("remove again");
    assert!(e.s.mounts("c1").is_err_and(|e| e.is_not_found()));
    e.s.prepare("c1", Some(&l1))
        .expect("key reusable after remove");
}

#[test]
fn gc_keeps_kept_their_parents_and_snapshot_parents() {
    let e = env();
    let a = e.layer(None, &Layer::new().file("a", b"1").finish());
    let b = e.layer(Some(&a), &Layer::new().file("b", b"2").finish());
    let c = e.layer(Some(&b), &Layer::new().file("c", b"3").finish());
    let x = e.layer(
        None,
        &Layer::new().file("x", vec![7u8; 10000].as_slice()).finish(),
    );
    let y = e.layer(Some(&x), &Layer::new().file("y", b"y").finish());
    let z = e.layer(None, &Layer::new().file("z", b"z").finish());
    e.s.prepare("ctr", Some(&y)).expect("prepare");

    let stats = e.s.gc(&HashSet::from([b.clone()])).expect("gc");
    assert_eq!(stats.snapshots_removed, 2, "c and z");
    assert!(stats.bytes_freed > 0);
    for (chain, kept) in [
        (&a, true),
        (&b, true),
        (&c, false),
        (&x, true),
        (&y, true),
        (&z, false),
    ] {
        assert_eq!(e.s.has_committed(chain), kept, "{chain}");
    }
    e.s.remove("ctr").expect("remove");
    let stats = e.s.gc(&HashSet::new()).expect("gc");
    assert_eq!(stats.snapshots_removed, 4);
    assert!(e.snapshot_dirs().is_empty());
    assert_eq!(e.s.total_usage().expect("usage"), Usage::default());
}

#[test]
fn concurrent_unpacks_of_one_chain() {
    let e = env();
    let tar = Layer::new()
        .file("a", vec![1u8; 100_000].as_slice())
        .finish();
    let (p, d) = blob(&e.blobs, "l", &tar, Compression::Zstd);
    let results: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    e.s.unpack_layer(None, &p, Compression::Zstd, &d)
                        .expect("unpack")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    assert!(results.iter().all(|r| *r == d));
    assert_eq!(e.snapshot_dirs().len(), 1, "{:?}", e.snapshot_dirs());
}

#[test]
fn usage_counts_upper_dir() {
    let e = env();
    e.s.prepare("c", None).expect("prepare");
    let before = e.s.usage("c").expect("usage");
    let upper = PathBuf::from(&e.s.mounts("c").expect("mounts")[0].source);
    fs::write(upper.join("f"), vec![0u8; 64 * 1024]).expect("write");
    fs::hard_link(upper.join("f"), upper.join("g")).expect("link");
    let after = e.s.usage("c").expect("usage");
    assert_eq!(after.inodes, before.inodes + 1);
    assert!(after.bytes >= before.bytes + 64 * 1024);
    assert!(e.s.total_usage().expect("total").bytes >= after.bytes);
}

#[test]
fn overlay_mounts_whiteouts_opaque_upper_and_views() {
    let e = env();
    let l1 = e.layer(
        None,
        &Layer::new()
            .file("etc/passwd", b"root")
            .file("var/old", b"old")
            .file("keep", b"k")
            .finish(),
    );
    let l2 = e.layer(
        Some(&l1),
        &Layer::new()
            .file("etc/.wh.passwd", b"")
            .dir("var")
            .file("var/.wh..wh..opq", b"")
            .file("var/new", b"new")
            .finish(),
    );
    let target = e.mountpoint("rootfs");
    let mounts = e.s.prepare("c", Some(&l2)).expect("prepare");
    mount_all(&mounts, &target).expect("mount");
    let guard = MountGuard(target.clone());
    assert!(
        !target.join("etc/passwd").exists(),
        "whiteout did not hide lower file"
    );
    assert!(
        !target.join("var/old").exists(),
        "opaque dir did not hide lower content"
    );
    assert_eq!(fs::read(target.join("var/new")).expect("read"), b"new");
    assert_eq!(fs::read(target.join("keep")).expect("read"), b"k");
    fs::write(target.join("written"), b"w").expect("write");
    let upper = PathBuf::from(opt(&mounts[0], "upperdir=").expect("upperdir"));
    assert_eq!(fs::read(upper.join("written")).expect("read"), b"w");
    drop(guard);
    assert!(!target.join("written").exists(), "still mounted");

    for (key, parent) in [("v1", &l1), ("v2", &l2)] {
        let target = e.mountpoint(key);
        mount_all(&e.s.view(key, parent).expect("view"), &target).expect("mount view");
        let _g = MountGuard(target.clone());
        assert_eq!(fs::read(target.join("keep")).expect("read"), b"k");
        let err = fs::write(target.join("new"), b"x").expect_err("view writable");
        assert_eq!(err.kind(), ErrorKind::ReadOnlyFilesystem, "{key}: {err}");
    }
    unmount(&target).expect("unmount of unmounted path is fine");
    unmount(&e.root.join("does-not-exist")).expect("unmount of missing path is fine");
}

#[test]
fn mounts_eighty_layers_with_long_root_path() {
    // Root path of ~100 characters, so absolute lowerdir options are far beyond a page.
    let base = std::env::temp_dir().join(format!("berth-long-{}", "p".repeat(70)));
    fs::create_dir_all(&base).expect("mkdir");
    let e = env_at(&base);
    assert!(e.root.to_string_lossy().len() >= 95, "{}", e.root.display());
    let mut parent: Option<String> = None;
    for i in 0..80 {
        let tar = Layer::new()
            .file(&format!("layer{i}"), format!("{i}").as_bytes())
            .finish();
        parent = Some(e.layer(parent.as_deref(), &tar));
    }
    let top = parent.expect("layers");
    let target = e.mountpoint("rootfs");
    for (key, view) in [("c", false), ("v", true)] {
        let mounts = if view {
            e.s.view(key, &top)
        } else {
            e.s.prepare(key, Some(&top))
        }
        .expect("snapshot");
        assert!(mounts[0].options.join(",").len() > 4096);
        mount_all(&mounts, &target).expect("mount long overlay");
        let _g = MountGuard(target.clone());
        assert_eq!(fs::read(target.join("layer0")).expect("bottom"), b"0");
        assert_eq!(fs::read(target.join("layer79")).expect("top"), b"79");
    }
    drop(e);
    let _ = fs::remove_dir(&base);
}

#[test]
fn dangling_chain_link_is_replaced_on_unpack() {
    let e = env();
    let tar = Layer::new().file("a", b"1").finish();
    let chain = e.layer(None, &tar);
    fs::remove_dir_all(e.root.join("snapshots/1")).expect("rm");
    assert!(!e.s.has_committed(&chain));
    assert_eq!(e.layer(None, &tar), chain);
    assert!(e.s.has_committed(&chain));
    assert!(e.s.prepare("c", Some(&chain)).is_ok());
}

#[test]
fn stale_key_link_never_touches_other_snapshots() {
    let e = env();
    let base = e.layer(None, &Layer::new().file("a", b"1").finish());
    // A stale key link pointing at the committed layer's id (as after an id reuse).
    let link = e.root.join("keys").join(key_name("stale").expect("name"));
    std::os::unix::fs::symlink("1", &link).expect("symlink");
    assert!(e.s.mounts("stale").is_err_and(|e| e.is_not_found()));
    e.s.remove("stale").expect("remove");
    assert!(e.s.has_committed(&base));
    assert!(fs::symlink_metadata(&link).is_err());
    std::os::unix::fs::symlink("1", &link).expect("symlink");
    e.s.prepare("stale", Some(&base))
        .expect("stale link does not block the key");
    assert!(e.s.has_committed(&base));
}
