//! Hostile-input and fidelity tests for layer extraction. They run as root (ownership, device nodes, trusted
//! xattrs) against real directories.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::*;
use crate::testutil::{blob, Layer};

/// A scratch area: `<t>/outside/sentinel` (must never change) and the layer dir `<t>/layer`.
struct Scratch {
    _t: tempfile::TempDir,
    top: PathBuf,
    outside: PathBuf,
    layer: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let t = tempfile::tempdir().expect("tempdir");
        let top = t.path().to_path_buf();
        let outside = top.join("outside");
        let layer = top.join("layer");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("sentinel"), b"original").expect("write");
        fs::create_dir(&layer).expect("mkdir");
        Self {
            _t: t,
            top,
            outside,
            layer,
        }
    }

    fn extract(&self, tar: &[u8]) -> Result<()> {
        extract(&mut tar::Archive::new(tar), &self.layer)
    }

    /// Asserts nothing outside the layer dir changed.
    fn assert_outside_untouched(&self) {
        let names = |d: &Path| -> BTreeSet<String> {
            fs::read_dir(d)
                .expect("ls")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(&self.top),
            BTreeSet::from(["layer".into(), "outside".into()])
        );
        assert_eq!(names(&self.outside), BTreeSet::from(["sentinel".into()]));
        let sentinel = self.outside.join("sentinel");
        assert_eq!(fs::read(&sentinel).expect("read"), b"original");
        let meta = fs::symlink_metadata(&sentinel).expect("stat");
        assert!(meta.is_file());
        assert_eq!(meta.nlink(), 1, "sentinel gained a hardlink");
        let passwd = fs::read("/etc/passwd").unwrap_or_default();
        assert!(
            !passwd.windows(5).any(|w| w == b"pwned"),
            "/etc/passwd was written"
        );
        assert!(!Path::new("/etc/new").exists());
    }

    fn assert_refused(&self, tar: &[u8], what: &str) {
        let err = self.extract(tar).expect_err(what);
        assert!(err.is_invalid_input(), "{what}: {err}");
        self.assert_outside_untouched();
    }
}

#[test]
fn dotdot_and_absolute_paths_are_refused() {
    for path in [
        "../outside/sentinel",
        "a/../../outside/evil",
        "/outside/evil",
        "./../evil",
        "a/..",
    ] {
        let s = Scratch::new();
        let tar = Layer::new().file(path, b"pwned").finish();
        s.assert_refused(&tar, path);
    }
}

#[test]
fn writes_through_symlinks_are_refused() {
    let s = Scratch::new();
    let outside = s.outside.to_string_lossy().into_owned();
    for (link, target, write) in [
        ("evil", outside.as_str(), "evil/sentinel"),
        ("evil", outside.as_str(), "evil/new"),
        ("evil", "../outside", "evil/new"),
        ("evil", "/etc", "evil/passwd"),
        ("d/evil", "../..", "d/evil/outside/new"),
    ] {
        let s = Scratch::new();
        let tar = Layer::new()
            .symlink(link, target)
            .file(write, b"pwned")
            .finish();
        s.assert_refused(&tar, write);
        // A directory entry through the symlink is refused the same way.
        let s = Scratch::new();
        let tar = Layer::new()
            .symlink(link, target)
            .dir(&format!("{write}d"))
            .finish();
        s.assert_refused(&tar, write);
    }
}

#[test]
fn hardlinks_outside_the_layer_are_refused() {
    let s = Scratch::new();
    let sentinel = s.outside.join("sentinel").to_string_lossy().into_owned();
    for target in [
        sentinel.as_str(),
        "../outside/sentinel",
        "/etc/passwd",
        "a/../../outside/sentinel",
    ] {
        let s = Scratch::new();
        let tar = Layer::new().file("a", b"x").hardlink("h", target).finish();
        s.assert_refused(&tar, target);
    }
    // A target that does not exist in this layer is refused too.
    let s = Scratch::new();
    s.assert_refused(&Layer::new().hardlink("h", "missing").finish(), "missing");
}

#[test]
fn symlink_then_hardlink_combos_stay_inside() {
    let s = Scratch::new();
    let sentinel = s.outside.join("sentinel").to_string_lossy().into_owned();
    let outside = s.outside.to_string_lossy().into_owned();
    // A hardlink to a symlink links the symlink itself; overwriting either never writes through.
    let tar = Layer::new()
        .symlink("s", &sentinel)
        .hardlink("h", "s")
        .file("h", b"pwned")
        .file("s", b"pwned too")
        .finish();
    s.extract(&tar).expect("extract");
    s.assert_outside_untouched();
    assert_eq!(fs::read(s.layer.join("h")).expect("read"), b"pwned");
    assert_eq!(fs::read(s.layer.join("s")).expect("read"), b"pwned too");

    // A hardlink through a symlinked directory is an escape.
    let s = Scratch::new();
    let tar = Layer::new()
        .symlink("d", &outside)
        .hardlink("h", "d/sentinel")
        .finish();
    s.assert_refused(&tar, "hardlink through symlink");

    // A hardlink to a symlink to a directory, then writing below it.
    let s = Scratch::new();
    let tar = Layer::new()
        .symlink("d", &outside)
        .hardlink("h", "d")
        .file("h/new", b"pwned")
        .finish();
    s.assert_refused(&tar, "write below hardlinked symlink");
}

#[test]
fn device_nodes_are_created_inside_only() {
    let s = Scratch::new();
    let tar = Layer::new()
        .dev(EntryType::Char, "dev/null", 1, 3)
        .dev(EntryType::Fifo, "dev/fifo", 0, 0)
        .finish();
    s.extract(&tar).expect("extract");
    let m = fs::symlink_metadata(s.layer.join("dev/null")).expect("stat");
    assert!(m.file_type().is_char_device());
    assert_eq!(m.mode() & 0o777, 0o666);
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(fs::symlink_metadata(s.layer.join("dev/fifo"))
        .expect("stat")
        .file_type()
        .is_fifo());
    s.assert_outside_untouched();

    let s = Scratch::new();
    let outside = s.outside.to_string_lossy().into_owned();
    let tar = Layer::new()
        .symlink("dev", &outside)
        .dev(EntryType::Block, "dev/sda", 8, 0)
        .finish();
    s.assert_refused(&tar, "device through symlink");
}

#[test]
fn keeps_ownership_modes_times_xattrs_and_hardlinks() {
    let s = Scratch::new();
    let tar = Layer::new()
        .entry(EntryType::Directory, "etc", "", b"", 0o750, 10, 20)
        .pax_xattr("user.berth", b"yes")
        .entry(
            EntryType::Regular,
            "etc/conf",
            "",
            b"data",
            0o4755,
            1000,
            1001,
        )
        .hardlink("etc/conf2", "etc/conf")
        .entry(EntryType::Symlink, "link", "etc/conf", b"", 0o777, 7, 8)
        .file("implicit/parent/file", b"p")
        .finish();
    s.extract(&tar).expect("extract");
    let etc = fs::metadata(s.layer.join("etc")).expect("stat");
    assert_eq!((etc.uid(), etc.gid(), etc.mode() & 0o7777), (10, 20, 0o750));
    assert_eq!(etc.mtime(), 1_600_000_000);
    let conf = fs::metadata(s.layer.join("etc/conf")).expect("stat");
    assert_eq!(
        (conf.uid(), conf.gid(), conf.mode() & 0o7777),
        (1000, 1001, 0o4755)
    );
    assert_eq!(conf.mtime(), 1_600_000_000);
    assert_eq!(conf.nlink(), 2);
    assert_eq!(
        fs::metadata(s.layer.join("etc/conf2")).expect("stat").ino(),
        conf.ino()
    );
    let link = fs::symlink_metadata(s.layer.join("link")).expect("stat");
    assert!(link.file_type().is_symlink());
    assert_eq!((link.uid(), link.gid()), (7, 8));
    assert_eq!(
        fs::read_link(s.layer.join("link")).expect("readlink"),
        Path::new("etc/conf")
    );
    let p = fs::metadata(s.layer.join("implicit/parent")).expect("stat");
    assert_eq!(p.permissions().mode() & 0o7777, 0o755);
    let mut buf = [0u8; 16];
    let path = std::ffi::CString::new(s.layer.join("etc/conf").as_os_str().as_encoded_bytes())
        .expect("cstring");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.berth".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 3, "xattr missing");
    assert_eq!(&buf[..3], b"yes");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let s = Scratch::new();
    let tar = Layer::new()
        .file("etc/.wh.passwd", b"")
        .dir("var")
        .file("var/.wh..wh..opq", b"")
        .file("var/kept", b"k")
        .finish();
    s.extract(&tar).expect("extract");
    let w = fs::symlink_metadata(s.layer.join("etc/passwd")).expect("stat");
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert!(!s.layer.join("etc/.wh.passwd").exists());
    assert!(!s.layer.join("var/.wh..wh..opq").exists());
    let mut buf = [0u8; 4];
    let path = std::ffi::CString::new(s.layer.join("var").as_os_str().as_encoded_bytes())
        .expect("cstring");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1);
    assert_eq!(buf[0], b'y');
    // A whiteout through a symlink escapes and is refused.
    let s = Scratch::new();
    let outside = s.outside.to_string_lossy().into_owned();
    let tar = Layer::new()
        .symlink("d", &outside)
        .file("d/.wh.sentinel", b"")
        .finish();
    s.assert_refused(&tar, "whiteout through symlink");
    let s = Scratch::new();
    let tar = Layer::new()
        .symlink("d", &outside)
        .file("d/.wh..wh..opq", b"")
        .finish();
    s.assert_refused(&tar, "opaque through symlink");
}

#[test]
fn replacing_entries_follows_tar_semantics() {
    let s = Scratch::new();
    let tar = Layer::new()
        .file("a/b", b"1")
        .file("a", b"file replaces dir")
        .dir("c")
        .file("c/x", b"x")
        .dir("c")
        .finish();
    s.extract(&tar).expect("extract");
    assert_eq!(
        fs::read(s.layer.join("a")).expect("read"),
        b"file replaces dir"
    );
    assert_eq!(fs::read(s.layer.join("c/x")).expect("read"), b"x");
    s.assert_outside_untouched();
}

#[test]
fn compressed_blobs_verify_diff_id() {
    let tar = Layer::new().file("hello", b"world").finish();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let s = Scratch::new();
        let blobs = tempfile::tempdir().expect("tempdir");
        let (path, diff_id) = blob(blobs.path(), "layer", &tar, c);
        unpack_blob(&path, c, &diff_id, &s.layer).expect("unpack");
        assert_eq!(fs::read(s.layer.join("hello")).expect("read"), b"world");

        let s = Scratch::new();
        let wrong = crate::digest::of_bytes(b"other");
        let err = unpack_blob(&path, c, &wrong, &s.layer).expect_err("mismatch accepted");
        assert!(err.is_invalid_input());
        assert!(
            err.to_string().contains(&diff_id) && err.to_string().contains(&wrong),
            "{err}"
        );
    }
    // Garbage is not a valid gzip stream.
    let s = Scratch::new();
    let blobs = tempfile::tempdir().expect("tempdir");
    let (path, diff_id) = blob(blobs.path(), "layer", b"not gzip at all", Compression::None);
    assert!(unpack_blob(&path, Compression::Gzip, &diff_id, &s.layer).is_err());
}

#[test]
fn malformed_names_are_refused() {
    for path in [".wh.", "d/.wh..", "d/.wh...", "."] {
        let s = Scratch::new();
        let tar = Layer::new().file(path, b"x").finish();
        s.assert_refused(&tar, path);
    }
    let s = Scratch::new();
    let tar = Layer::new().dir("d").hardlink("h", "d").finish();
    s.assert_refused(&tar, "hardlink to a directory");
    let s = Scratch::new();
    s.assert_refused(
        &Layer::new().hardlink("h", ".").finish(),
        "hardlink to the root",
    );
}

#[test]
fn long_names_and_multi_member_gzip() {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    let tar = Layer::new()
        .file(&long, b"long")
        .file("short", b"s")
        .finish();
    // Two gzip members, as parallel compressors write them.
    let (first, second) = tar.split_at(512);
    let mut gz = Vec::new();
    for part in [first, second] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, part).expect("gzip");
        gz.extend(e.finish().expect("gzip"));
    }
    let blobs = tempfile::tempdir().expect("tempdir");
    let path = blobs.path().join("layer");
    fs::write(&path, gz).expect("write");
    let s = Scratch::new();
    let diff_id = crate::digest::of_bytes(&tar);
    unpack_blob(&path, Compression::Gzip, &diff_id, &s.layer).expect("unpack");
    assert_eq!(fs::read(s.layer.join(&long)).expect("read"), b"long");
    assert_eq!(fs::read(s.layer.join("short")).expect("read"), b"s");
}

/// Random layers built from hostile pieces: extraction may fail, but must never panic or touch anything
/// outside the layer. Bug-induced writes could only land inside the scratch area.
#[test]
fn random_hostile_layers_never_escape() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let comps = [
        "a",
        "b",
        "..",
        ".",
        "evil",
        "",
        ".wh.a",
        ".wh..wh..opq",
        "sentinel",
        "outside",
    ];
    for _ in 0..300 {
        let s = Scratch::new();
        let outside = s.outside.to_string_lossy().into_owned();
        let sentinel = s.outside.join("sentinel").to_string_lossy().into_owned();
        let targets = [
            outside.as_str(),
            sentinel.as_str(),
            "..",
            "../outside",
            "a/../..",
            "a",
            "evil",
        ];
        let path = |next: &mut dyn FnMut(usize) -> usize| {
            let n = 1 + next(3);
            let p: Vec<&str> = (0..n).map(|_| comps[next(comps.len())]).collect();
            let lead = if next(8) == 0 { "/" } else { "" };
            format!("{lead}{}", p.join("/"))
        };
        let mut layer = Layer::new();
        for _ in 0..(1 + next(8)) {
            let p = path(&mut next);
            layer = match next(6) {
                0 => layer.file(&p, b"pwned"),
                1 => layer.dir(&p),
                2 => layer.symlink(&p, targets[next(targets.len())]),
                3 => {
                    let t = if next(2) == 0 {
                        path(&mut next)
                    } else {
                        targets[next(targets.len())].into()
                    };
                    layer.hardlink(&p, &t)
                }
                4 => layer.dev(EntryType::Fifo, &p, 0, 0),
                _ => layer.dev(EntryType::Char, &p, 1, 3),
            };
        }
        let tar = layer.finish();
        let _ = s.extract(&tar);
        s.assert_outside_untouched();
    }
}

/// Recursively lists (relative path, type, mode, uid, gid, content or link target, mtime for non-dirs).
fn tree(root: &Path) -> Vec<(String, u32, u32, u32, Vec<u8>, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).expect("stat");
        let rel = p
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let ft = m.file_type();
        let content = if ft.is_file() {
            fs::read(&p).expect("read")
        } else if ft.is_symlink() {
            fs::read_link(&p)
                .expect("readlink")
                .into_os_string()
                .into_encoded_bytes()
        } else {
            Vec::new()
        };
        let mtime = if ft.is_dir() { 0 } else { m.mtime() };
        out.push((rel, m.mode(), m.uid(), m.gid(), content, mtime));
        if ft.is_dir() {
            for e in fs::read_dir(&p).expect("ls") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn gnu_tar_output_round_trips() {
    let src = tempfile::tempdir().expect("tempdir");
    let r = src.path();
    fs::create_dir_all(r.join("usr/bin")).expect("mkdir");
    fs::write(r.join("usr/bin/tool"), b"#!/bin/sh\n").expect("write");
    fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool2")).expect("link");
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/abs", r.join("dangling")).expect("symlink");
    let long = format!("{}/{}", "l".repeat(110), "n".repeat(120));
    fs::create_dir_all(r.join(&long).parent().expect("parent")).expect("mkdir");
    fs::write(r.join(&long), b"long").expect("write");
    std::os::unix::fs::chown(r.join("usr/bin/tool"), Some(1234), Some(5678)).expect("chown");
    nix::unistd::mkfifo(
        &r.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .expect("mkfifo");
    fs::set_permissions(r.join("usr"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = std::process::Command::new("tar")
        .args(["--format=pax", "--xattrs", "-C"])
        .arg(r)
        .args(["-cf", "-", "."])
        .output();
    let Ok(out) = out else {
        eprintln!("tar not installed; skipping");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Scratch::new();
    s.extract(&out.stdout).expect("extract");
    assert_eq!(tree(&s.layer), tree(r));
    let a = fs::metadata(s.layer.join("usr/bin/tool")).expect("stat");
    let b = fs::metadata(s.layer.join("usr/bin/tool2")).expect("stat");
    assert_eq!(a.ino(), b.ino());
}
