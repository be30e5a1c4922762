//! One real berthd per test: its own socket, root, state, CNI network and certs.d in the test's
//! slot dir (`/tmp/bt-N`), stderr logged to `/tmp/bt-N/berthd.log`.
//!
//! Drop tears everything down even when the test failed half-way: pods removed through CRI, berthd
//! and this daemon's shims killed, mounts under the slot dir detached, the bridge and the test's
//! cgroups removed, the slot dir deleted. The daemon log is printed unless the test passed
//! [`crate::leaks::assert_no_leaks`] (or called [`Berthd::pass`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::host::{kill_processes_mentioning, remove_cgroup_tree, unmount_under};
use crate::slot::Slot;

/// Options for [`Berthd::start`].
#[derive(Debug, Clone)]
pub struct BerthdOptions {
    /// berthd's log filter (`[log] level`).
    pub log_level: String,
    /// Extra TOML appended verbatim to the generated config (top-level tables only).
    pub extra_config: String,
    /// Name of the root dir inside the slot dir (default `root`). A long name makes every
    /// snapshot path long, e.g. to push overlay options past one page.
    pub root_dir_name: String,
    /// Serve berthd's Prometheus endpoint (on a free loopback port, see [`Berthd::metrics_address`]).
    /// When false the generated config sets `[metrics] enabled = false`.
    pub metrics: bool,
}

impl Default for BerthdOptions {
    fn default() -> Self {
        Self {
            log_level: "info,cri_server=debug,snapshotter=debug,shim=debug".into(),
            extra_config: String::new(),
            root_dir_name: "root".into(),
            metrics: true,
        }
    }
}

/// A running (or killed, restartable) berthd owned by one test.
pub struct Berthd {
    slot: Slot,
    root: PathBuf,
    bin_dir: PathBuf,
    child: Mutex<Option<Child>>,
    channel: Mutex<Option<Channel>>,
    passed: AtomicBool,
    metrics_address: Option<std::net::SocketAddr>,
}

/// The directory holding berthd and berth-shim: `$BERTH_BIN_DIR`, else the cargo profile dir of the
/// running test binary (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .context("test binary has no parent dir")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

impl Berthd {
    /// Claims a slot, writes the config, starts berthd and waits until it answers Version.
    pub async fn start(opts: BerthdOptions) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        // From here on, Drop removes the slot dir whatever fails.
        let slot = Slot::claim()?;
        let root = slot.dir().join(&opts.root_dir_name);
        let d = Self {
            slot,
            root,
            bin_dir,
            child: Mutex::new(None),
            channel: Mutex::new(None),
            passed: AtomicBool::new(false),
            // Every berthd gets its own port: the default (127.0.0.1:9464) would collide between
            // parallel tests.
            metrics_address: if opts.metrics {
                Some(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    crate::slot::free_port()?,
                )))
            } else {
                None
            },
        };
        for sub in ["cni", "certs.d", "logs"] {
            std::fs::create_dir_all(d.dir().join(sub))
                .with_context(|| format!("creating {sub}"))?;
        }
        for bin in ["berthd", "berth-shim"] {
            let p = d.bin_dir.join(bin);
            if !p.exists() {
                bail!(
                    "{} missing: build the binaries first (`cargo build -p cri-server -p shim`) \
                     or set BERTH_BIN_DIR",
                    p.display()
                );
            }
        }
        std::fs::write(d.config_path(), d.config_toml(&opts)).context("writing berthd config")?;
        d.spawn().await?;
        Ok(d)
    }

    fn config_toml(&self, opts: &BerthdOptions) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        format!(
            "socket = {socket}\nroot = {root}\nstate = {state}\n\n[log]\nlevel = {level:?}\n\n\
             [cni]\nconf_dir = {cni}\nbin_dirs = [\"/usr/lib/cni\", \"/opt/cni/bin\"]\n\n\
             [cni.default_network]\nname = {net:?}\nbridge = {br:?}\nsubnet = {subnet:?}\n\n\
             [registry]\nconfig_path = {certs}\n\n[runtime]\nshim_path = {shim}\n\
             sandbox_stop_timeout_secs = 5\n\n{metrics}\n{extra}",
            socket = q(&self.socket()),
            root = q(&self.root()),
            state = q(&self.state()),
            level = opts.log_level,
            cni = q(&self.dir().join("cni")),
            net = self.slot.network(),
            br = self.slot.bridge(),
            subnet = self.slot.subnet(),
            certs = q(&self.certs_dir()),
            shim = q(&self.bin_dir.join("berth-shim")),
            metrics = match self.metrics_address {
                Some(a) => format!("[metrics]\naddress = \"{a}\"\n"),
                None => "[metrics]\nenabled = false\n".into(),
            },
            extra = opts.extra_config,
        )
    }

    async fn spawn(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening berthd log")?;
        let child = Command::new(self.bin_dir.join("berthd"))
            .arg("--config")
            .arg(self.config_path())
            // An inherited (even empty) RUST_LOG would override the configured level.
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log fd")?)
            .stderr(log)
            .spawn()
            .context("spawning berthd")?;
        let pid = child.id();
        *self.lock_child() = Some(child);
        let socket = self.socket();
        let started = crate::wait::until(
            "berthd to answer Version on its socket",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let socket = socket.clone();
                async move {
                    if let Some(status) = self.try_wait_child() {
                        // Fatal: stop polling at once.
                        return Ok(Some(Err(anyhow::anyhow!(
                            "berthd (pid {pid}) exited during start-up: {status}"
                        ))));
                    }
                    if !socket.exists() {
                        return Ok(None);
                    }
                    let channel = connect(&socket).await?;
                    let mut rt = RuntimeServiceClient::new(channel.clone());
                    rt.version(k8s_cri::v1::VersionRequest::default()).await?;
                    Ok(Some(Ok(channel)))
                }
            },
        )
        .await
        .and_then(|r| r);
        match started {
            Ok(channel) => {
                *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel);
                Ok(())
            }
            Err(e) => Err(e.context(format!("berthd log:\n{}", self.log_tail(80)))),
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_wait_child(&self) -> Option<std::process::ExitStatus> {
        self.lock_child()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// berthd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// SIGKILLs berthd (simulates a crash). Containers and shims must keep running.
    pub fn kill(&self) {
        if let Some(mut c) = self.lock_child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Kills berthd if it runs, then starts it again on the same dirs and config.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    fn channel(&self) -> anyhow::Result<Channel> {
        self.channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .context("berthd is not running")
    }

    /// A RuntimeService client on this daemon's socket.
    pub fn rt(&self) -> RuntimeServiceClient<Channel> {
        match self.channel() {
            Ok(c) => RuntimeServiceClient::new(c),
            // A lazy channel to the same socket: calls fail with Unavailable instead of panicking.
            Err(_) => RuntimeServiceClient::new(lazy_channel(&self.socket())),
        }
    }

    /// An ImageService client on this daemon's socket.
    pub fn img(&self) -> ImageServiceClient<Channel> {
        match self.channel() {
            Ok(c) => ImageServiceClient::new(c),
            Err(_) => ImageServiceClient::new(lazy_channel(&self.socket())),
        }
    }

    /// Where berthd serves `/metrics` (`None` when started with `metrics: false`).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address
    }

    /// GETs `http://<metrics address>/metrics` and returns the body (error unless 200).
    pub async fn scrape_metrics(&self) -> anyhow::Result<String> {
        let addr = self
            .metrics_address
            .context("berthd was started with metrics disabled")?;
        let resp = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building HTTP client")?
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .with_context(|| format!("GET http://{addr}/metrics"))?;
        let status = resp.status();
        let body = resp.text().await.context("reading /metrics body")?;
        if !status.is_success() {
            bail!("GET /metrics: {status}: {body}");
        }
        Ok(body)
    }

    /// The test slot (number, bridge, subnet, cgroup parent).
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// `/tmp/bt-N`.
    pub fn dir(&self) -> &Path {
        self.slot.dir()
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("berth.sock")
    }

    /// berthd's persistent root.
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// berthd's volatile state dir.
    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The certs.d directory (`<host>/hosts.toml`) berthd reads registry config from.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir().join("certs.d")
    }

    /// Parent of the pods' log directories.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    /// The generated config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("berthd.toml")
    }

    /// berthd's stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("berthd.log")
    }

    /// The last `lines` lines of berthd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Writes `certs.d/<host>/hosts.toml` with `content`.
    pub fn write_hosts_toml(&self, host: &str, content: &str) -> anyhow::Result<()> {
        let dir = self.certs_dir().join(host);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("hosts.toml"), content).context("writing hosts.toml")
    }

    /// Declares `http://<registry>` a plain-http registry for berthd (containerd hosts.toml format).
    pub fn trust_plain_http(&self, registry_host: &str) -> anyhow::Result<()> {
        self.write_hosts_toml(
            registry_host,
            &format!(
                "server = \"http://{registry_host}\"\n\n[host.\"http://{registry_host}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
    }

    /// Marks the test as passed: the log is not printed on drop.
    pub fn pass(&self) {
        self.passed.store(true, Ordering::SeqCst);
    }

    /// Stops and removes every pod through CRI (what the kubelet would do), bounded in time.
    pub async fn remove_all_pods(&self) -> anyhow::Result<()> {
        let mut rt = self.rt();
        let pods = rt
            .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
            .await
            .context("ListPodSandbox")?
            .into_inner()
            .items;
        for p in pods {
            let id = p.id;
            crate::wait::within("StopPodSandbox", Duration::from_secs(60), async {
                rt.stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .with_context(|| format!("StopPodSandbox {id}"))?;
                Ok(())
            })
            .await?;
            crate::wait::within("RemovePodSandbox", Duration::from_secs(60), async {
                rt.remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .with_context(|| format!("RemovePodSandbox {id}"))?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    fn teardown(&mut self) {
        let running = self.try_wait_child().is_none() && self.pid().is_some();
        if running {
            // A fresh thread and runtime: Drop may run inside (or outside) the test's runtime.
            let this: &Berthd = self;
            std::thread::scope(|s| {
                s.spawn(|| {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async {
                        let r = tokio::time::timeout(Duration::from_secs(90), async {
                            // Reconnect: the test's channel belongs to the test's runtime.
                            let channel = connect(&this.socket()).await?;
                            *this.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel);
                            this.remove_all_pods().await
                        })
                        .await;
                        if let Ok(Err(e)) = &r {
                            eprintln!("berth-tests teardown: removing pods failed: {e:#}");
                        } else if r.is_err() {
                            eprintln!("berth-tests teardown: removing pods timed out");
                        }
                    });
                });
            });
        }
        self.kill();
        let marker = format!("{}/", self.dir().display());
        kill_processes_mentioning(&marker, None);
        crate::leaks::cgroup_dirs(&self.slot.cgroup_parent())
            .into_iter()
            .for_each(|d| remove_cgroup_tree(&d));
        unmount_under(self.dir());
        let _ = Command::new("ip")
            .args(["link", "del", &self.slot.bridge()])
            .stderr(Stdio::null())
            .status();
        // Make everything removable (e.g. read-only dirs from layers), then delete the slot.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(self.dir())
            .status();
        if let Err(e) = std::fs::remove_dir_all(self.dir()) {
            eprintln!(
                "berth-tests teardown: removing {}: {e}",
                self.dir().display()
            );
        }
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if !self.passed.load(Ordering::SeqCst) || std::thread::panicking() {
            eprintln!(
                "==== berthd log ({}; last 300 lines) ====\n{}\n==== end of berthd log ====",
                self.log_path().display(),
                self.log_tail(300)
            );
            print_container_logs(&self.logs_dir());
        }
        self.teardown();
    }
}

/// Connects a tonic channel to a unix socket.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    connect_with(
        unix_endpoint().connect_timeout(Duration::from_secs(5)),
        socket,
    )
    .await
    .context("connecting to berthd socket")
}

/// The endpoint to configure (timeouts, windows) before [`connect_with`]; its URI is not used.
pub fn unix_endpoint() -> Endpoint {
    Endpoint::from_static("http://[::]:50051")
}

/// Connects `endpoint`'s settings to the unix socket `socket` (a CRI endpoint).
pub async fn connect_with(
    endpoint: Endpoint,
    socket: &Path,
) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

fn lazy_channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    unix_endpoint().connect_with_connector_lazy(tower::service_fn(
        move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        },
    ))
}

/// Prints every container log file under `dir` (pod log dirs), for failure reports.
fn print_container_logs(dir: &Path) {
    let Ok(pods) = std::fs::read_dir(dir) else {
        return;
    };
    for pod in pods.flatten() {
        let Ok(files) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for f in files.flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let start = text.len().saturating_sub(4096);
            let tail = text.get(start..).unwrap_or(&text);
            eprintln!("==== container log {} ====\n{tail}", f.path().display());
        }
    }
}
