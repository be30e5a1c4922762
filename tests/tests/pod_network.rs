//! Networking: containers of a pod share localhost and IPC, pods reach each other over the
//! default bridge, a hostPort is reachable on 127.0.0.1, and a hostNetwork pod sees the host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context;
use berth_tests::cri::{self, RUNNING};
use berth_tests::{leaks, require_root, slot, wait, TestEnv};
use k8s_cri::v1 as k;

const HTTPD: &[&str] = &["httpd", "-f", "-p", "8080", "-h", "/data"];

/// `wget` retried for up to ~10 s inside a container.
fn wget_loop(url: &str) -> String {
    format!(
        "for i in $(seq 1 50); do if timeout 3 wget -q -O- {url}; then exit 0; fi; sleep 0.2; done; \
         echo unreachable; exit 1"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_in_a_pod_share_localhost_and_ipc() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("shared").await?;

    let server = cri::shell(
        "server",
        env.busybox(),
        "readlink /proc/self/ns/ipc; echo from-server > /dev/shm/marker; exec httpd -f -p 8080 -h /data",
    );
    let spath = cri::log_file(&pod, &server);
    let sid = cri::run_container(d, &pod_id, &pod, server).await?;
    let lines = wait::until(
        "server's ipc ns in its log",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let spath = spath.clone();
            async move {
                Ok(cri::stdout_lines(&spath)
                    .await
                    .ok()
                    .filter(|l| !l.is_empty()))
            }
        },
    )
    .await?;
    let server_ipc = lines[0].clone();
    assert!(server_ipc.starts_with("ipc:["), "{server_ipc}");

    let client_script = "ok=no; for i in $(seq 1 50); do \
         if timeout 3 wget -q -O- http://127.0.0.1:8080/keep.txt; then ok=yes; break; fi; \
         sleep 0.2; done; readlink /proc/self/ns/ipc; cat /dev/shm/marker; test $ok = yes";
    let client = cri::shell("client", env.busybox(), client_script);
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, client).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    assert_eq!(
        out,
        ["kept", server_ipc.as_str(), "from-server"],
        "localhost + IPC + /dev/shm"
    );
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc")?
        .display()
        .to_string();
    assert_ne!(server_ipc, host_ipc, "pod must have its own IPC namespace");
    assert_eq!(cri::container_status(d, &sid).await?.state, RUNNING);
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_reach_each_other() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (a_id, a) = env.pod("pod-a").await?;
    cri::run_container(
        d,
        &a_id,
        &a,
        cri::container_config("httpd", env.busybox(), HTTPD),
    )
    .await?;
    let ip = cri::pod_ip(d, &a_id).await?;
    assert!(
        ip.starts_with(&format!("10.213.{}.", d.slot().n())),
        "pod IP {ip} in the test subnet"
    );

    let (b_id, b) = env.pod("pod-b").await?;
    let b_ip = cri::pod_ip(d, &b_id).await?;
    assert_ne!(ip, b_ip);
    let client = cri::shell(
        "client",
        env.busybox(),
        &wget_loop(&format!("http://{ip}:8080/index.html")),
    );
    let (st, out) = cri::run_to_exit(d, &b_id, &b, client).await?;
    assert_eq!(
        st.exit_code, 0,
        "pod B could not reach pod A at {ip}: {out:?}"
    );
    assert_eq!(out, ["hello from berth"]);
    // While pods run, every kind of resource the leak check looks for is there (so the check after
    // removal is not vacuous).
    let running = leaks::footprint(d);
    eprintln!(
        "footprint of two running pods:\n  {}",
        running.all().join("\n  ")
    );
    assert!(
        running.missing().is_empty(),
        "not found while pods run: {:?}",
        running.missing()
    );
    leaks::assert_no_leaks(d).await;
    Ok(())
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_port_is_reachable_on_loopback() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let host_port = slot::free_port()?;
    let mut pod = cri::pod_config(d, "ports")?;
    pod.port_mappings = vec![k::PortMapping {
        protocol: k::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(host_port),
        host_ip: String::new(),
    }];
    let pod_id = cri::run_pod(d, &pod).await?;
    cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::container_config("httpd", env.busybox(), HTTPD),
    )
    .await?;
    let addr = format!("127.0.0.1:{host_port}");
    let body = wait::until(
        &format!("http://{addr}/index.html through the port mapping"),
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let addr = addr.clone();
            async move {
                let body =
                    tokio::task::spawn_blocking(move || http_get(&addr, "/index.html")).await??;
                Ok(body.contains("hello from berth").then_some(body))
            }
        },
    )
    .await?;
    assert!(body.starts_with("HTTP/1."), "{body}");
    // After the pod is gone the port is closed again.
    d.remove_all_pods().await?;
    assert!(
        http_get(&addr, "/index.html").is_err(),
        "hostPort still forwarded after RemovePodSandbox"
    );
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pod_sees_host_interfaces_and_hostname() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let host_if = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n != "lo" && !n.starts_with("veth") && !n.starts_with("bt"))
        .context("the host has no interface besides lo")?;
    let hostname = nix::unistd::gethostname()?.to_string_lossy().into_owned();
    let pod = cri::host_network(cri::pod_config(d, "hostnet")?);
    let pod_id = cri::run_pod(d, &pod).await?;
    let ctr = cri::shell(
        "look",
        env.busybox(),
        "hostname; ip -o link | cut -d: -f2 | tr -d ' '",
    );
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, ctr).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    assert_eq!(
        out.first(),
        Some(&hostname),
        "hostNetwork pod shares the host's hostname"
    );
    assert!(
        out.iter().any(|l| l == &host_if),
        "host interface {host_if} not seen: {out:?}"
    );
    leaks::assert_no_leaks(d).await;
    Ok(())
}
