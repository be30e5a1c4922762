//! Self-test of the fixtures: the registry starts, pushed images come back with correct digests,
//! the layers carry what the other tests rely on, and a bare berthd starts and leaks nothing.

use std::io::Read;

use anyhow::Context;
use berth_tests::image::{self, Compression, LayerBuilder, MEDIA_OCI_INDEX};
use berth_tests::registry::sha256_digest;
use berth_tests::{cri, leaks, require_root, Berthd, BerthdOptions, ImageSpec, Registry};
use serde_json::Value;

fn tar_entries(tar: &[u8]) -> anyhow::Result<Vec<(String, tar::EntryType)>> {
    let mut a = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in a.entries().context("entries")? {
        let e = e.context("entry")?;
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        out.push((path, e.header().entry_type()));
    }
    Ok(out)
}

fn decompress(media_type: &str, blob: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    if media_type.ends_with("+gzip") {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut out)
            .context("gunzip")?;
    } else if media_type.ends_with("+zstd") {
        out = zstd::decode_all(blob).context("unzstd")?;
    } else {
        out = blob.to_vec();
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_round_trips_index_manifest_and_blobs() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let spec = ImageSpec::busybox()?;
    let pushed = spec.push_with_index(&reg, "selftest/busybox", "v1").await?;

    let (ct, index) = reg.get_manifest("selftest/busybox", "v1").await?;
    assert_eq!(ct, MEDIA_OCI_INDEX);
    assert_eq!(Some(sha256_digest(&index)), pushed.index_digest);
    let index: Value = serde_json::from_slice(&index)?;
    let entries = index["manifests"].as_array().context("manifests")?;
    assert_eq!(entries.len(), 2);
    let host = entries
        .iter()
        .find(|m| m["platform"]["architecture"] == image::host_arch())
        .context("host platform entry")?;
    assert_eq!(host["digest"], pushed.manifest_digest.as_str());

    let (_, manifest) = reg
        .get_manifest("selftest/busybox", &pushed.manifest_digest)
        .await?;
    assert_eq!(sha256_digest(&manifest), pushed.manifest_digest);
    let manifest: Value = serde_json::from_slice(&manifest)?;
    let config = reg
        .get_blob("selftest/busybox", &pushed.config_digest)
        .await?;
    assert_eq!(sha256_digest(&config), pushed.config_digest);
    let config: Value = serde_json::from_slice(&config)?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("diff_ids")?;

    let layers = manifest["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 3);
    let mut all = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let digest = l["digest"].as_str().context("digest")?;
        let media = l["mediaType"].as_str().context("mediaType")?;
        let blob = reg.get_blob("selftest/busybox", digest).await?;
        assert_eq!(sha256_digest(&blob), digest);
        assert_eq!(l["size"].as_u64(), Some(blob.len() as u64));
        let tar = decompress(media, &blob)?;
        assert_eq!(diff_ids[i].as_str(), Some(sha256_digest(&tar).as_str()));
        all.push((media.to_owned(), tar_entries(&tar)?));
    }
    assert!(all[1].0.ends_with("+zstd"), "layer 2 is zstd");
    let has = |i: usize, p: &str| all[i].1.iter().any(|(path, _)| path == p);
    assert!(has(0, "bin/busybox") && has(0, "bin/sh") && has(0, "etc/passwd"));
    assert!(has(1, "data/old.txt") && has(1, "opaque/a.txt"));
    assert!(has(2, "data/.wh.old.txt") && has(2, "opaque/.wh..wh..opq") && has(2, "opaque/b.txt"));

    // The bogus platform's manifest is different and fetchable too.
    let other = entries
        .iter()
        .find(|m| m["digest"] != host["digest"])
        .context("other entry")?;
    let (_, other_manifest) = reg
        .get_manifest(
            "selftest/busybox",
            other["digest"].as_str().context("digest")?,
        )
        .await?;
    assert_eq!(
        Some(sha256_digest(&other_manifest).as_str()),
        other["digest"].as_str()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_registry_refuses_anonymous_and_accepts_credentials() -> anyhow::Result<()> {
    let reg = Registry::start_with_auth("tester", "s3cret").await?;
    assert_eq!(reg.anonymous_status("/v2/").await?, 401);
    let pushed = ImageSpec::busybox()?
        .with_user("app")
        .push(&reg, "private/bb", "1")
        .await?;
    let (_, manifest) = reg.get_manifest("private/bb", "1").await?;
    assert_eq!(sha256_digest(&manifest), pushed.manifest_digest);
    let config: Value =
        serde_json::from_slice(&reg.get_blob("private/bb", &pushed.config_digest).await?)?;
    assert_eq!(config["config"]["User"], "app");
    Ok(())
}

#[test]
fn hostile_names_are_written_verbatim() -> anyhow::Result<()> {
    let l = LayerBuilder::new()
        .file("../escape", 0o644, b"x")?
        .file("/abs", 0o644, b"x")?
        .symlink("evil", "/tmp/somewhere")?
        .file("evil/pwned", 0o644, b"x")?
        .hardlink("hl", "/etc/shadow")?
        .finish(Compression::None)?;
    let names: Vec<String> = tar_entries(&l.blob)?.into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["../escape", "/abs", "evil", "evil/pwned", "hl"]);
    Ok(())
}

#[test]
fn cri_log_parser_accepts_cri_format_and_rejects_others() -> anyhow::Result<()> {
    let lines = cri::parse_cri_log(
        "2026-01-01T00:00:00.123456789Z stdout F hello world\n\
         2026-01-01T00:00:00.2+01:00 stderr P part\n",
    )?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].text, "hello world");
    assert_eq!(lines[1].stream, "stderr");
    assert!(cri::parse_cri_log("hello\n").is_err());
    assert!(cri::parse_cri_log("2026-01-01T00:00:00Z stdin F x\n").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_daemon_starts_answers_version_and_leaks_nothing() -> anyhow::Result<()> {
    require_root!();
    let d = Berthd::start(BerthdOptions::default()).await?;
    let v = d
        .rt()
        .version(k8s_cri::v1::VersionRequest::default())
        .await?
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    d.restart().await?;
    let v = d
        .rt()
        .version(k8s_cri::v1::VersionRequest::default())
        .await?
        .into_inner();
    assert_eq!(v.runtime_name, "berth");

    // The leak checker sees planted leaks of every kind it knows how to clean up here.
    let fake_state = d.state().join("sandboxes").join("fake");
    std::fs::create_dir_all(&fake_state)?;
    let fake_key = d.root().join("snapshots").join("keys").join("fake");
    std::os::unix::fs::symlink("1", &fake_key)?;
    let fake_mount = d.root().join("leak-mnt");
    std::fs::create_dir_all(&fake_mount)?;
    nix::mount::mount(
        Some("tmpfs"),
        &fake_mount,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    let cg_parent =
        std::path::PathBuf::from(format!("/sys/fs/cgroup/pids{}", d.slot().cgroup_parent()));
    let fake_cg = cg_parent.join("berth-fake");
    let cg_made = std::path::Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists()
        && std::fs::create_dir_all(&fake_cg).is_ok();
    // A shell blocked reading stdin: no child process to leave behind when it is killed.
    let mut sleeper = std::process::Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "read x",
            &format!("{}/fake-shim", d.dir().display()),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    // Until the child has exec'd, its cmdline is still the test binary's: poll briefly.
    let mut f = leaks::footprint(&d);
    for _ in 0..50 {
        if !f.processes.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        f = leaks::footprint(&d);
    }
    let (mounts, state, snapshots, procs, cgroups) = (
        f.mounts.len(),
        f.state_dirs.len(),
        f.snapshots.len(),
        f.processes.len(),
        f.cgroups.len(),
    );
    nix::mount::umount(&fake_mount)?;
    std::fs::remove_dir(&fake_state)?;
    std::fs::remove_file(&fake_key)?;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    if cg_made {
        std::fs::remove_dir(&fake_cg)?;
        let _ = std::fs::remove_dir(&cg_parent);
    }
    assert_eq!(
        (mounts, state, snapshots, procs),
        (1, 1, 1, 1),
        "planted leaks not all found: {f:?}"
    );
    assert!(!cg_made || cgroups == 1, "planted cgroup not found: {f:?}");

    leaks::assert_no_leaks(&d).await;
    let dir = d.dir().to_path_buf();
    drop(d);
    assert!(!dir.exists(), "slot dir {} removed on drop", dir.display());
    Ok(())
}
