//! End-to-end tests of berth-shim as root: the real binary, real libcontainer containers on an
//! overlay rootfs built from /bin/busybox, driven over ttrpc with the sync `TaskClient`.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{check_record, ctx, status_code, Fixture};
use containerd_shim_protos::api::{
    KillRequest, PidsRequest, StateRequest, Status, UpdateTaskRequest, WaitRequest,
};
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::TaskClient;
use serde_json::json;

#[test]
fn exit_code_logs_delete_and_shutdown() -> Result<()> {
    let script = "echo out-line; echo err-line >&2; printf '%040000d\\n' 0; \
                  printf 'no newline'; exit 3";
    let mut f = Fixture::new("exit", &["sh", "-c", script], true, None)?;
    f.start_shim()?;
    // The `start` process has exited; the daemon lives on in its own session.
    assert!(f.shim_alive());
    let shim_pid = f.shim_pid.context("no shim pid")?;
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(shim_pid)))?.as_raw(),
        shim_pid
    );

    let pid = f.create_and_start()?;
    assert!(f.rootfs_mounted()?);
    assert!(!f.cgroup_dirs().is_empty(), "container cgroup not created");
    // Several concurrent waits all return.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let id = f.id.clone();
            let socket = f.bundle().join("shim.sock");
            std::thread::spawn(move || -> Result<u32> {
                let c = TaskClient::new(ttrpc::Client::connect(&format!(
                    "unix://{}",
                    socket.display()
                ))?);
                let mut req = WaitRequest::new();
                req.id = id;
                Ok(c.wait(ctx(), &req)?.exit_status)
            })
        })
        .collect();
    assert_eq!(f.wait()?, 3);
    for w in waiters {
        assert_eq!(
            w.join().map_err(|_| anyhow::anyhow!("waiter panicked"))??,
            3
        );
    }

    let log = f.log()?;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 6, "{log}");
    let find = |s: &str| {
        lines
            .iter()
            .find(|l| l.contains(s))
            .copied()
            .unwrap_or_default()
    };
    check_record(find("out-line"), "stdout", "F", "out-line");
    check_record(find("err-line"), "stderr", "F", "err-line");
    check_record(find("no newline"), "stdout", "P", "no newline");
    // A 40000-byte line: two 16 KiB partial records, then the rest as the full one.
    let long: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            l.splitn(4, ' ')
                .nth(3)
                .is_some_and(|t| t.starts_with("0000"))
        })
        .collect();
    assert_eq!(long.len(), 3, "{log}");
    check_record(long[0], "stdout", "P", &"0".repeat(16384));
    check_record(long[1], "stdout", "P", &"0".repeat(16384));
    check_record(long[2], "stdout", "F", &"0".repeat(40000 - 2 * 16384));

    let mut req = StateRequest::new();
    req.id = f.id.clone();
    let st = f.client()?.state(ctx(), &req)?;
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!((st.pid, st.exit_status), (pid, 3));
    assert!(st.exited_at.is_some());

    // Killing an exited container is fine.
    let mut kill = KillRequest::new();
    kill.id = f.id.clone();
    kill.signal = 9;
    f.client()?.kill(ctx(), &kill)?;

    assert_eq!(f.delete()?, 3);
    assert!(!f.rootfs_mounted()?, "rootfs still mounted after delete");
    assert!(
        f.cgroup_dirs().is_empty(),
        "cgroup left: {:?}",
        f.cgroup_dirs()
    );
    assert!(!f.bundle().join("runtime").join(&f.id).exists());
    assert_eq!(f.delete()?, 3, "delete is idempotent");

    f.shutdown()?;
    assert!(f.wait_shim_gone(), "shim still running after shutdown");
    assert!(!f.bundle().join("shim.sock").exists());
    Ok(())
}

#[test]
fn sigterm_gives_143_and_memory_is_small() -> Result<()> {
    // No pid namespace: as pid 1 of its own namespace `sleep` would ignore SIGTERM.
    let mut f = Fixture::new("term", &["sleep", "1000"], false, None)?;
    f.start_shim()?;
    let pid = f.create_and_start()?;

    let mut req = PidsRequest::new();
    req.id = f.id.clone();
    let pids = f.client()?.pids(ctx(), &req)?;
    assert!(
        pids.processes.iter().any(|p| p.pid == pid),
        "{:?}",
        pids.processes
    );

    let mut req = StateRequest::new();
    req.id = f.id.clone();
    assert_eq!(
        f.client()?.state(ctx(), &req)?.status.enum_value(),
        Ok(Status::RUNNING)
    );

    let shim_pid = f.shim_pid.context("no shim pid")?;
    let status = std::fs::read_to_string(format!("/proc/{shim_pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{shim_pid}/smaps_rollup"))?;
    let field = |text: &str, key: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default();
        line.split_whitespace().nth(1).unwrap_or("?").to_string()
    };
    eprintln!(
        "berth-shim serving one running container: VmRSS {} kB (RssAnon {} kB, RssFile {} kB), \
         Pss {} kB, threads {}",
        field(&status, "VmRSS:"),
        field(&status, "RssAnon:"),
        field(&status, "RssFile:"),
        field(&rollup, "Pss:"),
        field(&status, "Threads:")
    );
    // BERTH_SHIM_HOLD=1: keep the shim serving for a minute to inspect /proc/<pid>/smaps.
    if std::env::var_os("BERTH_SHIM_HOLD").is_some() {
        std::thread::sleep(Duration::from_secs(60));
    }

    // update: resources are OCI LinuxResources JSON in the Any, as containerd sends them.
    let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = serde_json::to_vec(&json!({"memory": {"limit": 64 * 1024 * 1024}}))?;
    let mut req = UpdateTaskRequest::new();
    req.id = f.id.clone();
    req.resources = Some(any).into();
    f.client()?.update(ctx(), &req)?;
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(&f.cgroup_parent)
        .join(&f.id);
    let limit = if v1.exists() {
        std::fs::read_to_string(v1.join("memory.limit_in_bytes"))?
    } else {
        let v2 = Path::new("/sys/fs/cgroup")
            .join(&f.cgroup_parent)
            .join(&f.id);
        std::fs::read_to_string(v2.join("memory.max"))?
    };
    assert_eq!(limit.trim(), (64 * 1024 * 1024).to_string());

    let mut kill = KillRequest::new();
    kill.id = f.id.clone();
    kill.signal = 15;
    f.client()?.kill(ctx(), &kill)?;
    assert_eq!(f.wait()?, 143);
    assert_eq!(f.delete()?, 143);
    f.shutdown()?;
    assert!(f.wait_shim_gone());
    Ok(())
}

#[test]
fn user_annotation_resolves_in_image() -> Result<()> {
    // Also checks the container does not inherit the shim's ignored SIGPIPE.
    let script = "id -u; id -G; grep SigIgn /proc/self/status; yes | head -n 1";
    let mut f = Fixture::new("user", &["sh", "-c", script], true, Some("app"))?;
    f.start_shim()?;
    f.create_and_start()?;
    assert_eq!(f.wait()?, 0);
    let log = f.log()?;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    check_record(lines[0], "stdout", "F", "1000");
    check_record(lines[1], "stdout", "F", "1000 2000");
    let sig_ign = lines[2].rsplit('\t').next().unwrap_or_default();
    let sig_ign = u64::from_str_radix(sig_ign, 16).with_context(|| lines[2].to_string())?;
    assert_eq!(
        sig_ign & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {}",
        lines[2]
    );
    check_record(lines[3], "stdout", "F", "y");
    f.delete()?;
    f.shutdown()?;
    assert!(f.wait_shim_gone());
    Ok(())
}

#[test]
fn unknown_user_is_rejected() -> Result<()> {
    let mut f = Fixture::new("nouser", &["id"], true, Some("nobody"))?;
    f.start_shim()?;
    let c = f.client()?;

    let e = c
        .create(ctx(), &f.create_request())
        .err()
        .context("create succeeded")?;
    assert_eq!(status_code(&e), Some(Code::INVALID_ARGUMENT));
    assert!(
        e.to_string()
            .contains("user nobody not found in /etc/passwd of the image"),
        "{e}"
    );
    assert!(
        !f.rootfs_mounted()?,
        "failed create left the rootfs mounted"
    );
    assert!(f.cgroup_dirs().is_empty());

    let mut req = StateRequest::new();
    req.id = f.id.clone();
    let e = c
        .state(ctx(), &req)
        .err()
        .context("state of nothing succeeded")?;
    assert_eq!(status_code(&e), Some(Code::NOT_FOUND));

    f.shutdown()?;
    assert!(f.wait_shim_gone());
    Ok(())
}

#[test]
fn delete_kills_running_and_created_containers() -> Result<()> {
    let mut f = Fixture::new("del", &["sleep", "1000"], true, None)?;
    f.start_shim()?;
    f.create_and_start()?;
    // Delete without kill first: SIGKILL, reaped, 128 + 9.
    assert_eq!(f.delete()?, 137);
    assert!(!f.rootfs_mounted()?);
    assert!(
        f.cgroup_dirs().is_empty(),
        "cgroup left: {:?}",
        f.cgroup_dirs()
    );
    f.shutdown()?;
    assert!(f.wait_shim_gone());

    // Created but never started.
    let mut g = Fixture::new("delc", &["sleep", "1000"], true, None)?;
    g.start_shim()?;
    let c = g.client()?;
    let pid = c.create(ctx(), &g.create_request())?.pid;
    let mut req = StateRequest::new();
    req.id = g.id.clone();
    let st = c.state(ctx(), &req)?;
    assert_eq!((st.status.enum_value(), st.pid), (Ok(Status::CREATED), pid));
    // A live container keeps the shim up on a plain shutdown.
    g.shutdown()?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(g.shim_alive());
    assert_eq!(g.delete()?, 137);
    assert!(!g.rootfs_mounted()?);
    assert!(
        g.cgroup_dirs().is_empty(),
        "cgroup left: {:?}",
        g.cgroup_dirs()
    );
    g.shutdown()?;
    assert!(g.wait_shim_gone());
    Ok(())
}

/// A shared bind mount of a fresh host dir onto itself; unmounted on drop, even on failure.
struct SharedHostDir {
    dir: tempfile::TempDir,
}

impl SharedHostDir {
    fn new() -> Result<Self> {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::Builder::new()
            .prefix("berth-shim-vol-")
            .tempdir_in("/tmp")?;
        mount(
            Some(dir.path()),
            dir.path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        let guard = SharedHostDir { dir };
        mount(
            None::<&str>,
            guard.path(),
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )?;
        Ok(guard)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its peer group on the host: `shared:N`.
    fn peer_group(&self) -> Result<String> {
        let target = self.path().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target.as_str()))
            .context("host dir is not a mount")?;
        line.split(' ')
            .find_map(|f| f.strip_prefix("shared:"))
            .map(str::to_string)
            .with_context(|| format!("host dir is not shared: {line}"))
    }
}

impl Drop for SharedHostDir {
    fn drop(&mut self) {
        while nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// Adds `mounts` to the fixture's config.json and sets `linux.rootfsPropagation`.
fn add_mounts(f: &Fixture, mounts: &[serde_json::Value], rootfs: Option<&str>) -> Result<()> {
    let path = f.bundle().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let list = spec["mounts"]
        .as_array_mut()
        .context("config.json has no mounts")?;
    list.extend(mounts.iter().cloned());
    if let Some(p) = rootfs {
        spec["linux"]["rootfsPropagation"] = json!(p);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// The propagation fields (`shared:N`, `master:N`) of a mountinfo line.
fn propagation_fields(line: &str) -> Vec<String> {
    line.split(' ')
        .take_while(|f| *f != "-")
        .filter(|f| f.starts_with("shared:") || f.starts_with("master:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn bind_mount_propagation_is_applied() -> Result<()> {
    let host = SharedHostDir::new()?;
    let group = host.peer_group()?;
    // (option, rootfsPropagation as berthd writes it, expected propagation fields of /vol).
    // The fourth case fails without berth's fix even when the rootfs default hides it: a slave
    // mount in a container whose rootfs is shared (another mount is bidirectional).
    let cases: [(&str, Option<&str>, Vec<String>); 4] = [
        ("rprivate", None, vec![]),
        ("rslave", Some("slave"), vec![format!("master:{group}")]),
        ("rshared", Some("shared"), vec![format!("shared:{group}")]),
        ("rslave", Some("shared"), vec![format!("master:{group}")]),
    ];
    for (i, (option, rootfs, expected)) in cases.into_iter().enumerate() {
        let mut f = Fixture::new(
            &format!("prop{i}"),
            &["grep", " /vol ", "/proc/self/mountinfo"],
            true,
            None,
        )?;
        let vol = json!({
            "destination": "/vol",
            "type": "bind",
            "source": host.path(),
            "options": ["rbind", option],
        });
        add_mounts(&f, &[vol], rootfs)?;
        f.start_shim()?;
        f.create_and_start()?;
        assert_eq!(f.wait()?, 0, "{option}: grep found no /vol: {}", f.log()?);
        let log = f.log()?;
        let line = log.lines().next().unwrap_or_default();
        assert_eq!(
            propagation_fields(line),
            expected,
            "{option} with rootfsPropagation {rootfs:?}: {line}"
        );
        f.delete()?;
        f.shutdown()?;
        assert!(f.wait_shim_gone());
    }
    Ok(())
}

#[test]
fn failed_propagation_fails_create_and_leaves_nothing() -> Result<()> {
    let host = SharedHostDir::new()?;
    std::fs::create_dir_all(host.path().join("b"))?;
    let mut f = Fixture::new("propfail", &["sleep", "1000"], true, None)?;
    // /a/b is mounted, then hidden by a tmpfs on /a: its propagation cannot be changed.
    let mounts = [
        json!({
            "destination": "/a/b",
            "type": "bind",
            "source": host.path().join("b"),
            "options": ["rbind", "rprivate"],
        }),
        json!({"destination": "/a", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
    ];
    add_mounts(&f, &mounts, None)?;
    f.start_shim()?;
    let c = f.client()?;
    let e = c
        .create(ctx(), &f.create_request())
        .err()
        .context("create succeeded")?;
    assert_eq!(status_code(&e), Some(Code::INTERNAL), "{e}");
    assert!(
        e.to_string()
            .contains("mount /a/b: set propagation rprivate: No such file or directory"),
        "{e}"
    );
    assert!(
        !f.rootfs_mounted()?,
        "failed create left the rootfs mounted"
    );
    assert!(
        f.cgroup_dirs().is_empty(),
        "cgroup left: {:?}",
        f.cgroup_dirs()
    );
    assert!(!f.bundle().join("runtime").join(&f.id).exists());
    f.shutdown()?;
    assert!(f.wait_shim_gone());
    Ok(())
}
