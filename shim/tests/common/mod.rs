//! Shared fixture of the shim's integration tests: a container's rootfs (busybox), overlay
//! dirs, bundle and log path, a running shim and its ttrpc client; cleans up on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::{
    ConnectRequest, CreateTaskRequest, DeleteRequest, Mount, ShutdownRequest, StartRequest,
    WaitRequest,
};
use containerd_shim_protos::ttrpc::{self, context, Code};
use containerd_shim_protos::TaskClient;
use serde_json::json;

pub const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");

/// The shim under test: `BERTH_SHIM_BIN` (e.g. a release build, to measure memory) or the
/// debug binary cargo built for this test.
pub fn shim_bin() -> String {
    std::env::var("BERTH_SHIM_BIN").unwrap_or_else(|_| SHIM.to_string())
}

pub fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// One container's world: rootfs source, overlay dirs, bundle, log path, the running shim.
pub struct Fixture {
    pub id: String,
    /// Cgroup parent of this fixture alone, so one test's cleanup never races another's create.
    pub cgroup_parent: String,
    pub dir: tempfile::TempDir,
    pub client: Option<TaskClient>,
    pub shim_pid: Option<i32>,
}

impl Fixture {
    /// Builds rootfs + bundle with a config.json running `args`.
    pub fn new(name: &str, args: &[&str], pid_ns: bool, user: Option<&str>) -> Result<Self> {
        let id = format!("{name}-{}", std::process::id());
        let cgroup_parent = format!("berth-shim-test-{id}");
        let dir = tempfile::Builder::new()
            .prefix("berth-shim-")
            .tempdir_in("/tmp")?;
        let src = dir.path().join("rootfs-src");
        std::fs::create_dir_all(src.join("bin"))?;
        std::fs::create_dir_all(src.join("etc"))?;
        std::fs::copy("/bin/busybox", src.join("bin/busybox"))?;
        for tool in [
            "sh", "echo", "sleep", "cat", "id", "yes", "head", "grep", "stty", "tty",
        ] {
            std::os::unix::fs::symlink("busybox", src.join("bin").join(tool))?;
        }
        std::fs::write(
            src.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )?;
        std::fs::write(
            src.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )?;
        for d in ["upper", "work", "bundle"] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default())?;
        spec["root"] = json!({"path": "rootfs", "readonly": false});
        spec["process"]["args"] = json!(args);
        spec["process"]["env"] = json!(["PATH=/bin"]);
        spec["process"]["cwd"] = json!("/");
        spec["hostname"] = json!("shimtest");
        let mut ns = vec![
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "mount"}),
        ];
        ns.push(json!({"type": "network"}));
        if pid_ns {
            ns.push(json!({"type": "pid"}));
        }
        spec["linux"]["namespaces"] = json!(ns);
        spec["linux"]["cgroupsPath"] = json!(format!("/{cgroup_parent}/{id}"));
        if let Some(u) = user {
            spec["annotations"] = json!({"io.berth.user": u});
        }
        std::fs::write(
            dir.path().join("bundle/config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )?;
        Ok(Fixture {
            id,
            cgroup_parent,
            dir,
            client: None,
            shim_pid: None,
        })
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs/ctr/0.log")
    }

    pub fn rootfs_mount(&self) -> Mount {
        let p = self.dir.path();
        let mut m = Mount::new();
        m.type_ = "overlay".into();
        m.source = "overlay".into();
        m.options = vec![
            format!("lowerdir={}", p.join("rootfs-src").display()),
            format!("upperdir={}", p.join("upper").display()),
            format!("workdir={}", p.join("work").display()),
        ];
        m
    }

    /// `berth-shim start`; connects the client.
    pub fn start_shim(&mut self) -> Result<&TaskClient> {
        let out = Command::new(shim_bin())
            .args(["start", "--id", &self.id, "--bundle"])
            .arg(self.bundle())
            .output()?;
        if !out.status.success() {
            bail!(
                "shim start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let socket = String::from_utf8(out.stdout)?.trim().to_string();
        assert_eq!(Path::new(&socket), self.bundle().join("shim.sock"));
        let client = TaskClient::new(ttrpc::Client::connect(&format!("unix://{socket}"))?);
        let mut req = ConnectRequest::new();
        req.id = self.id.clone();
        let resp = client.connect(ctx(), &req)?;
        self.shim_pid = Some(resp.shim_pid as i32);
        Ok(self.client.insert(client))
    }

    pub fn client(&self) -> Result<&TaskClient> {
        self.client.as_ref().context("shim not started")
    }

    pub fn create_request(&self) -> CreateTaskRequest {
        let mut req = CreateTaskRequest::new();
        req.id = self.id.clone();
        req.bundle = self.bundle().display().to_string();
        req.rootfs = vec![self.rootfs_mount()];
        req.stdout = self.log_path().display().to_string();
        req
    }

    pub fn create_and_start(&self) -> Result<u32> {
        let c = self.client()?;
        let pid = c.create(ctx(), &self.create_request())?.pid;
        assert!(pid > 0);
        let mut req = StartRequest::new();
        req.id = self.id.clone();
        assert_eq!(c.start(ctx(), &req)?.pid, pid);
        Ok(pid)
    }

    pub fn wait(&self) -> Result<u32> {
        let mut req = WaitRequest::new();
        req.id = self.id.clone();
        Ok(self.client()?.wait(ctx(), &req)?.exit_status)
    }

    pub fn delete(&self) -> Result<u32> {
        let mut req = DeleteRequest::new();
        req.id = self.id.clone();
        Ok(self.client()?.delete(ctx(), &req)?.exit_status)
    }

    pub fn shutdown(&self) -> Result<()> {
        let mut req = ShutdownRequest::new();
        req.id = self.id.clone();
        self.client()?.shutdown(ctx(), &req)?;
        Ok(())
    }

    pub fn log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.log_path())?)
    }

    pub fn rootfs_mounted(&self) -> Result<bool> {
        let target = self.bundle().join("rootfs").display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(info
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(target.as_str())))
    }

    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let d = e.path().join(&self.cgroup_parent).join(&self.id);
                if d.exists() {
                    dirs.push(d);
                }
            }
        }
        let root = Path::new("/sys/fs/cgroup")
            .join(&self.cgroup_parent)
            .join(&self.id);
        if root.exists() {
            dirs.push(root);
        }
        dirs
    }

    pub fn shim_alive(&self) -> bool {
        let Some(pid) = self.shim_pid else {
            return false;
        };
        match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(s) => !s
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z')),
            Err(_) => false,
        }
    }

    pub fn wait_shim_gone(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.shim_alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Fixture {
    /// Best-effort cleanup so a failed test leaks nothing.
    fn drop(&mut self) {
        if self.shim_alive() {
            let _ = self.delete();
            if let Some(c) = self.client.as_ref() {
                let mut req = ShutdownRequest::new();
                req.id = self.id.clone();
                req.now = true;
                let _ = c.shutdown(ctx(), &req);
            }
            if !self.wait_shim_gone() {
                if let Some(pid) = self.shim_pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        }
        for d in self.cgroup_dirs() {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            let _ = std::fs::remove_dir(&d);
        }
        let rootfs = self.bundle().join("rootfs");
        while nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.cgroup_parent));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
    }
}

pub fn status_code(e: &ttrpc::Error) -> Option<Code> {
    match e {
        ttrpc::Error::RpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

pub fn check_record(line: &str, stream: &str, tag: &str, text: &str) {
    let mut parts = line.splitn(4, ' ');
    let ts = parts.next().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
        "bad timestamp in {line:?}"
    );
    assert_eq!(parts.next(), Some(stream), "{line:?}");
    assert_eq!(parts.next(), Some(tag), "{line:?}");
    assert_eq!(parts.next(), Some(text), "{line:?}");
}
