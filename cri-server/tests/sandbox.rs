//! Root integration tests of the sandbox manager with real namespaces, cgroups and CNI plugins
//! (containernetworking-plugins in /usr/lib/cni). Each test uses its own bridge and subnet
//! (10.213.<n>.0/24) and checks that nothing is left behind.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cri_server::config::{CniConfig, Config, DefaultNetworkConfig};
use cri_server::error::Error;
use cri_server::runtime::sandbox::SandboxManager;
use k8s_cri::v1::*;

struct Env {
    _tmp: tempfile::TempDir,
    config: Config,
    bridge: String,
    n: u8,
}

impl Env {
    fn new(n: u8) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let bridge = format!("bthtest{n}");
        del_link(&bridge);
        let config = Config {
            root: tmp.path().join("root"),
            state: tmp.path().join("state"),
            cni: CniConfig {
                conf_dir: tmp.path().join("net.d"),
                bin_dirs: vec![tmp.path().join("bin"), PathBuf::from("/usr/lib/cni")],
                default_network: DefaultNetworkConfig {
                    name: format!("berth-test-{n}"),
                    bridge: bridge.clone(),
                    subnet: format!("10.213.{n}.0/24"),
                },
            },
            ..Config::default()
        };
        Some(Self {
            _tmp: tmp,
            config,
            bridge,
            n,
        })
    }

    fn ipam_dir(&self) -> PathBuf {
        self.config
            .root
            .join("cni/networks")
            .join(&self.config.cni.default_network.name)
    }
}

impl Drop for Env {
    /// Best effort after a failed assertion: no mounts, cgroups or bridge outlive the test.
    fn drop(&mut self) {
        let mut mounts = mounts_under(self._tmp.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in cgroup_dirs(&format!("/berth-test-{}", self.n)) {
            let _ = Command::new("find")
                .arg(&dir)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .output();
        }
        del_link(&self.bridge);
    }
}

fn del_link(name: &str) {
    let _ = Command::new("ip").args(["link", "del", name]).output();
}

fn pod(name: &str, uid: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(mgr: &SandboxManager, config: PodSandboxConfig) -> Result<String, Error> {
    let req = RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    };
    mgr.run(req).await.map(|r| r.pod_sandbox_id)
}

async fn status(mgr: &SandboxManager, id: &str) -> PodSandboxStatus {
    let req = PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    };
    mgr.status(req).await.unwrap().status.unwrap()
}

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| Path::new(m).join(rel.trim_start_matches('/')))
        .collect()
}

fn ip_files(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn veths_on(bridge: &str) -> String {
    match sh("ip", &["-o", "link", "show", "master", bridge]) {
        (true, out) => out,
        (false, err) if err.contains("does not exist") => String::new(),
        (false, err) => panic!("ip link: {err}"),
    }
}

/// The pod cgroup in the memory hierarchy (v1) or the unified one (v2).
fn memory_cgroup(rel: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let base = if v1.is_dir() {
        v1
    } else {
        Path::new("/sys/fs/cgroup")
    };
    base.join(rel.trim_start_matches('/'))
}

/// Nothing of any pod is left: no mounts, no sandbox dirs, no records, no cgroups, no veths, no IPs.
fn assert_clean(env: &Env, cgroup_paths: &[String]) {
    assert_eq!(mounts_under(&env.config.state), Vec::<String>::new());
    let sandboxes = env.config.state.join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox dirs left: {left:?}");
    let records = env.config.root.join("store/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&records)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "records left: {left:?}");
    for rel in cgroup_paths {
        for dir in cgroup_dirs(rel) {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
    }
    assert_eq!(
        veths_on(&env.bridge).trim(),
        "",
        "veths left on {}",
        env.bridge
    );
    assert_eq!(
        ip_files(&env.ipam_dir()),
        Vec::<String>::new(),
        "IP reservations left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_network_ports_and_full_cleanup() {
    let Some(env) = Env::new(1) else { return };
    let mgr = SandboxManager::open(&env.config).await.unwrap();
    assert_eq!(mgr.network_status(), (true, String::new()));

    let mut a = pod("pod-a", "uid-a", "/berth-test-1");
    a.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18181,
        host_ip: String::new(),
    }];
    a.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["test.svc".into()],
        options: vec!["ndots:5".into()],
    });
    a.log_directory = env
        .config
        .root
        .join("logs/test_pod-a_uid-a")
        .display()
        .to_string();
    let id_a = run(&mgr, a.clone()).await.unwrap();
    let id_b = run(&mgr, pod("pod-b", "uid-b", "/berth-test-1"))
        .await
        .unwrap();

    // Same name/namespace/uid/attempt again is refused while the first exists.
    let err = run(&mgr, a.clone()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    assert!(err.to_string().contains(&id_a), "{err}");

    let info_a = mgr.info(&id_a).await.unwrap();
    let info_b = mgr.info(&id_b[..12]).await.unwrap();
    assert!(info_a.ready);
    let pin_a = info_a.netns_path.clone().unwrap();
    let pin_b = info_b.netns_path.clone().unwrap();
    let host_net = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(std::fs::metadata(&pin_a).unwrap().ino(), host_net);
    assert_ne!(
        std::fs::metadata(&pin_a).unwrap().ino(),
        std::fs::metadata(&pin_b).unwrap().ino()
    );
    assert!(info_a.shm_path.as_ref().unwrap().is_dir());
    assert!(info_a.log_directory.is_dir());
    assert_eq!(
        std::fs::read_to_string(&info_a.hostname_file).unwrap(),
        "pod-a\n"
    );
    let resolv = std::fs::read_to_string(info_a.resolv_conf_file.as_ref().unwrap()).unwrap();
    assert_eq!(
        resolv,
        "search test.svc\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert!(memory_cgroup(&info_a.cgroup_path).is_dir());

    let st_a = status(&mgr, &id_a).await;
    let st_b = status(&mgr, &id_b).await;
    assert_eq!(st_a.state, PodSandboxState::SandboxReady as i32);
    let ip_a = st_a.network.as_ref().unwrap().ip.clone();
    let ip_b = st_b.network.as_ref().unwrap().ip.clone();
    assert!(ip_a.starts_with("10.213.1."), "{ip_a}");
    assert!(ip_b.starts_with("10.213.1.") && ip_a != ip_b, "{ip_b}");
    let hosts = std::fs::read_to_string(&info_a.hosts_file).unwrap();
    assert!(hosts.contains(&format!("{ip_a}\tpod-a")), "{hosts}");

    let net_arg = format!("--net={}", pin_a.display());
    let (ok, addrs) = sh("nsenter", &[&net_arg, "ip", "-4", "addr", "show", "eth0"]);
    assert!(ok && addrs.contains(&format!("inet {ip_a}/24")), "{addrs}");
    let (ok, lo) = sh("nsenter", &[&net_arg, "ip", "link", "show", "lo"]);
    assert!(ok && lo.contains("UP"), "{lo}");
    let (ok, out) = sh(
        "nsenter",
        &[&net_arg, "/bin/busybox", "ping", "-c1", "-W2", &ip_b],
    );
    assert!(ok, "ping a → b: {out}");
    let (_, nat) = sh("iptables", &["-t", "nat", "-S"]);
    assert!(nat.contains("18181"), "no DNAT for 18181:\n{nat}");

    // List with filters.
    let list = |filter: PodSandboxFilter| {
        let mgr = &mgr;
        async move {
            mgr.list(ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .unwrap()
            .items
        }
    };
    assert_eq!(list(PodSandboxFilter::default()).await.len(), 2);
    let by_label = PodSandboxFilter {
        label_selector: [("app".into(), "pod-b".into())].into(),
        ..Default::default()
    };
    assert_eq!(
        list(by_label)
            .await
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![id_b.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            id: id_a[..10].into(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );

    // Stop: DNAT rules gone, NOTREADY, idempotent.
    mgr.stop(&id_a).await.unwrap();
    mgr.stop(&id_a).await.unwrap();
    let (_, nat) = sh("iptables", &["-t", "nat", "-S"]);
    assert!(
        !nat.contains("18181"),
        "DNAT for 18181 left after stop:\n{nat}"
    );
    assert_eq!(
        status(&mgr, &id_a).await.state,
        PodSandboxState::SandboxNotready as i32
    );
    let not_ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        list(not_ready)
            .await
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![id_a.clone()]
    );

    // Remove (b without an explicit stop), twice.
    let cgroups = vec![
        info_a.cgroup_path.clone(),
        info_b.cgroup_path.clone(),
        "/berth-test-1".to_string(),
    ];
    for id in [&id_a, &id_b] {
        mgr.remove(id).await.unwrap();
        mgr.remove(id).await.unwrap();
    }
    assert!(matches!(mgr.info(&id_a).await, Err(Error::NotFound(_))));
    assert!(!pin_a.exists());
    assert_clean(&env, &cgroups);
    // The name is free again.
    let again = run(&mgr, a).await.unwrap();
    mgr.remove(&again).await.unwrap();
    assert_clean(&env, &cgroups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_has_no_netns() {
    let Some(env) = Env::new(2) else { return };
    let mgr = SandboxManager::open(&env.config).await.unwrap();
    let mut config = pod("host-pod", "uid-h", "");
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Node as i32,
                ipc: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let id = run(&mgr, config).await.unwrap();
    let info = mgr.info(&id).await.unwrap();
    assert!(info.ready);
    assert_eq!(
        (
            info.netns_path.clone(),
            info.uts_ns_path.clone(),
            info.ipc_ns_path.clone()
        ),
        (None, None, None)
    );
    assert_eq!(info.shm_path, None);
    assert!(info.cgroup_path.starts_with("/berth/berth-"));
    let host_name = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        std::fs::read_to_string(&info.hostname_file).unwrap(),
        format!("{host_name}\n")
    );
    assert_eq!(
        std::fs::read_to_string(&info.hosts_file).unwrap(),
        std::fs::read_to_string("/etc/hosts").unwrap()
    );
    assert_eq!(status(&mgr, &id).await.network.unwrap().ip, "");
    assert!(
        !sh("ip", &["link", "show", &env.bridge]).0,
        "no CNI for hostNetwork"
    );
    mgr.stop(&id).await.unwrap();
    mgr.remove(&id).await.unwrap();
    assert_clean(&env, &[info.cgroup_path]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_pods_and_lost_namespaces_become_notready() {
    let Some(env) = Env::new(3) else { return };
    let (kept, lost, cgroups, netns_pin, netns_fd) = {
        let mgr = SandboxManager::open(&env.config).await.unwrap();
        let kept = run(&mgr, pod("kept", "uid-k", "/berth-test-3"))
            .await
            .unwrap();
        let lost = run(&mgr, pod("lost", "uid-l", "/berth-test-3"))
            .await
            .unwrap();
        let info = mgr.info(&lost).await.unwrap();
        // What a reboot does to /run: the namespace pins vanish. An open fd keeps the network namespace
        // alive so that it can be pinned again below and CNI DEL can clean up as it would after a real
        // reboot (where the iptables rules are gone as well).
        let netns_pin = info.netns_path.clone().unwrap();
        let netns_fd = std::fs::File::open(&netns_pin).unwrap();
        for pin in [&info.netns_path, &info.ipc_ns_path, &info.uts_ns_path]
            .into_iter()
            .flatten()
        {
            nix::mount::umount2(pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
        let cgroups = vec![
            mgr.info(&kept).await.unwrap().cgroup_path,
            info.cgroup_path,
            "/berth-test-3".into(),
        ];
        (kept, lost, cgroups, netns_pin, netns_fd)
    };
    let mgr = SandboxManager::open(&env.config).await.unwrap();
    assert_eq!(
        status(&mgr, &kept).await.state,
        PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        status(&mgr, &lost).await.state,
        PodSandboxState::SandboxNotready as i32
    );
    assert!(!mgr.info(&lost).await.unwrap().ready);
    assert!(matches!(
        run(&mgr, pod("kept", "uid-k", "/berth-test-3")).await,
        Err(Error::AlreadyExists(_))
    ));
    let fd_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&netns_fd)
    );
    nix::mount::mount(
        Some(fd_path.as_str()),
        &netns_pin,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    drop(netns_fd);
    for id in [&kept, &lost] {
        mgr.stop(id).await.unwrap();
        mgr.remove(id).await.unwrap();
    }
    assert_clean(&env, &cgroups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_leaves_nothing() {
    let Some(env) = Env::new(4) else { return };
    let bin = env.config.cni.bin_dirs[0].clone();
    std::fs::create_dir_all(&bin).unwrap();
    let failing = bin.join("berth-test-fail");
    std::fs::write(
        &failing,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{\"cniVersion\":\"1.0.0\",\"code\":99,\"msg\":\"refusing on purpose\"}'\n  exit 1\nfi\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(&env.config.cni.conf_dir).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-test-4",
        "plugins": [
            {"type": "bridge", "bridge": env.bridge, "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.4.0/24"}]], "dataDir": env.config.root.join("cni/networks")}},
            {"type": "berth-test-fail"}
        ]
    });
    std::fs::write(
        env.config.cni.conf_dir.join("10-test.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    let mgr = SandboxManager::open(&env.config).await.unwrap();
    assert_eq!(mgr.network_status(), (true, String::new()));
    let err = run(&mgr, pod("broken", "uid-x", "/berth-test-4"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("refusing on purpose (code 99)"),
        "{err}"
    );
    assert!(mgr
        .list(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert_clean(&env, &["/berth-test-4".to_string()]);
    // The name was released with the failed sandbox.
    let err = run(&mgr, pod("broken", "uid-x", "/berth-test-4"))
        .await
        .unwrap_err();
    assert!(!matches!(err, Error::AlreadyExists(_)), "{err}");
    assert_clean(&env, &["/berth-test-4".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pods_get_distinct_addresses() {
    let Some(env) = Env::new(5) else { return };
    let mgr = std::sync::Arc::new(SandboxManager::open(&env.config).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mgr = mgr.clone();
        tasks.push(tokio::spawn(async move {
            run(
                &mgr,
                pod(&format!("c{i}"), &format!("uid-c{i}"), "/berth-test-5"),
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap());
    }
    let mut ips = Vec::new();
    for id in &ids {
        ips.push(status(&mgr, id).await.network.unwrap().ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "{ips:?}");
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let mgr = mgr.clone();
        tasks.push(tokio::spawn(async move {
            mgr.stop(&id).await?;
            mgr.remove(&id).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_clean(&env, &["/berth-test-5".to_string()]);
}
