//! berthd's Prometheus endpoint: the exposition is valid (promtool, or a strict parser when promtool
//! is not installed), and pulls, pods, containers, shims and RPCs (including errors by code) move
//! the right series, back down after removal. A taken metrics port stops berthd at start-up.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, Berthd, BerthdOptions, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

/// One scrape: `name{sorted labels}` → value.
struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    /// The value of `name` with exactly `labels` (any order), if exported.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(v) => v,
            None => panic!("{} not in the scrape:\n{}", key(name, labels), self.text),
        }
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Strict-enough parser of the text format 0.0.4: every sample belongs to a family declared by
/// `# HELP` and `# TYPE` before it, names and labels are well-formed, values are floats, no sample
/// appears twice.
fn parse(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !valid_name(name) || !helps.insert(name.to_string()) {
                bail!("bad or repeated HELP: {line}");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty)
                || types.insert(name.to_string(), ty.to_string()).is_some()
            {
                bail!("bad or repeated TYPE: {line}");
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            bail!("unexpected line: {line:?}");
        }
        let (series, value) = line.rsplit_once(' ').context("sample without value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(|| format!("value in {line:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').context("unclosed labels")?;
                let mut labels = Vec::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').context("label without =")?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .with_context(|| format!("unquoted label value in {line:?}"))?;
                    if !valid_name(k) {
                        bail!("bad label name in {line:?}");
                    }
                    labels.push((k.to_string(), v.to_string()));
                }
                (name, labels)
            }
        };
        if !valid_name(name) || !name.starts_with("berth_") {
            bail!("bad metric name in {line:?}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helps.contains(family) {
            bail!("sample of undeclared family: {line}");
        }
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if samples.insert(key(name, &labels), value).is_some() {
            bail!("repeated sample: {line}");
        }
    }
    Ok(samples)
}

/// Runs `promtool check metrics` on the text when promtool is installed (scripts/setup-node --test).
fn promtool_check(text: &str) -> anyhow::Result<()> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("promtool not installed; relying on the built-in parser");
            return Ok(());
        }
        Err(e) => return Err(e).context("running promtool"),
    };
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())
        .context("feeding promtool")?;
    let out = child.wait_with_output().context("waiting for promtool")?;
    if !out.status.success() {
        bail!(
            "promtool check metrics failed: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn scrape(d: &Berthd) -> anyhow::Result<Scrape> {
    let text = d.scrape_metrics().await?;
    promtool_check(&text)?;
    let samples = parse(&text).with_context(|| format!("parsing the exposition:\n{text}"))?;
    Ok(Scrape { samples, text })
}

#[test]
fn parser_rejects_malformed_expositions() {
    let ok = "# HELP berth_x X.\n# TYPE berth_x gauge\nberth_x{state=\"a\"} 1\n";
    assert_eq!(parse(ok).unwrap().get("berth_x{state=\"a\"}"), Some(&1.0));
    for bad in [
        "berth_x 1\n",
        "# HELP berth_x X.\n# TYPE berth_x gauge\nberth_x{state=a} 1\n",
        "# HELP berth_x X.\n# TYPE berth_x gauge\nberth_x one\n",
        "# HELP berth_x X.\n# TYPE berth_x gauge\nberth_x 1\nberth_x 2\n",
        "# HELP berth_x X.\n# TYPE berth_x wobbly\nberth_x 1\n",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_pulls_pods_containers_and_rpcs() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;

    let m = scrape(d).await?;
    assert!(m.value("berth_image_pulls_total", &[]) >= 1.0);
    assert_eq!(m.value("berth_image_pull_failures_total", &[]), 0.0);
    assert!(m.value("berth_image_pull_bytes_total", &[]) > 0.0);
    assert!(m.value("berth_image_pull_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(m.value("berth_image_pulls_in_progress", &[]), 0.0);
    assert!(m.value("berth_snapshots_disk_usage_bytes", &[]) > 0.0);
    assert!(m.value("berth_content_store_disk_usage_bytes", &[]) > 0.0);
    assert!(m.value("berth_grpc_requests_total", &[("method", "PullImage")]) >= 1.0);
    assert_eq!(m.value("berth_pods", &[("state", "ready")]), 0.0);
    assert_eq!(m.value("berth_containers", &[("state", "running")]), 0.0);
    assert_eq!(m.value("berth_shims_running", &[]), 0.0);
    assert_eq!(m.value("berth_events_dropped_total", &[]), 0.0);
    assert_eq!(m.value("berth_container_oom_kills_total", &[]), 0.0);
    assert_eq!(
        m.value(
            "berth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A pull that fails (no such repository) is counted as a failure.
    let failed = d
        .img()
        .pull_image(k::PullImageRequest {
            image: Some(k::ImageSpec {
                image: format!("{}/bt/missing:1", env.reg.host()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_ne!(code(&failed), Code::Ok);

    let (pod_id, pod) = env.pod("metrics").await?;
    let ctr = cri::shell("sleeper", env.busybox(), "sleep 300");
    let ctr_id = cri::run_container(d, &pod_id, &pod, ctr).await?;
    let missing = d
        .rt()
        .container_status(k::ContainerStatusRequest {
            container_id: "0123456789abcdef-no-such-container".into(),
            verbose: false,
        })
        .await;
    assert_eq!(code(&missing), Code::NotFound);

    let m = scrape(d).await?;
    assert_eq!(m.value("berth_pods", &[("state", "ready")]), 1.0);
    assert_eq!(m.value("berth_containers", &[("state", "running")]), 1.0);
    assert_eq!(m.value("berth_shims_running", &[]), 1.0);
    assert!(m.value("berth_image_pull_failures_total", &[]) >= 1.0);
    assert!(m.value("berth_image_pulls_total", &[]) >= 2.0);
    assert!(m.value("berth_grpc_requests_total", &[("method", "RunPodSandbox")]) >= 1.0);
    assert!(
        m.value(
            "berth_grpc_request_duration_seconds_count",
            &[("method", "RunPodSandbox")]
        ) >= 1.0
    );
    assert!(
        m.value(
            "berth_grpc_errors_total",
            &[("method", "ContainerStatus"), ("code", "NotFound")]
        ) >= 1.0
    );
    assert_eq!(
        m.get(
            "berth_grpc_errors_total",
            &[("method", "RunPodSandbox"), ("code", "NotFound")]
        ),
        None
    );

    cri::stop_container(d, &ctr_id, 0).await?;
    let m = scrape(d).await?;
    assert_eq!(m.value("berth_containers", &[("state", "running")]), 0.0);
    assert_eq!(m.value("berth_containers", &[("state", "exited")]), 1.0);

    cri::remove_container(d, &ctr_id).await?;
    d.remove_all_pods().await?;
    let m = scrape(d).await?;
    for state in ["ready", "notready"] {
        assert_eq!(m.value("berth_pods", &[("state", state)]), 0.0, "{state}");
    }
    for state in ["created", "running", "exited", "unknown"] {
        assert_eq!(
            m.value("berth_containers", &[("state", state)]),
            0.0,
            "{state}"
        );
    }
    // The shim exits just after RemoveContainer returns (Shutdown is asynchronous).
    berth_tests::wait::until(
        "berth_shims_running to drop to 0",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let m = scrape(d).await?;
            Ok((m.value("berth_shims_running", &[]) == 0.0).then_some(()))
        },
    )
    .await?;

    // Only GET /metrics is served.
    let addr = d.metrics_address().context("metrics address")?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let other = client.get(format!("http://{addr}/other")).send().await?;
    assert_eq!(other.status().as_u16(), 404);

    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn taken_metrics_port_stops_berthd_at_start_up() -> anyhow::Result<()> {
    require_root!();
    let d = Berthd::start(BerthdOptions::default()).await?;
    let addr = d.metrics_address().context("metrics address")?;
    d.kill();
    // Someone else holds the port now.
    let _taken = std::net::TcpListener::bind(addr).context("taking the metrics port")?;
    let err = d
        .restart()
        .await
        .expect_err("berthd must not start without its metrics port");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("binding the metrics endpoint") && msg.contains(&addr.to_string()),
        "{msg}"
    );
    d.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_metrics_open_no_port() -> anyhow::Result<()> {
    require_root!();
    let d = Berthd::start(BerthdOptions {
        metrics: false,
        ..Default::default()
    })
    .await?;
    assert!(d.metrics_address().is_none());
    let pid = d.pid().context("berthd pid")?;
    // The one TCP listener left is the streaming server (exec, attach, port-forward).
    assert_eq!(
        listening_tcp_sockets(pid)?,
        1,
        "berthd with metrics disabled listens on more than its streaming port"
    );
    leaks::assert_no_leaks(&d).await;
    Ok(())
}

/// TCP sockets in LISTEN state that process `pid` holds.
fn listening_tcp_sockets(pid: u32) -> anyhow::Result<usize> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("listing fds")? {
        let target = std::fs::read_link(entry?.path()).unwrap_or_default();
        if let Some(inode) = target
            .to_string_lossy()
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st 0A = LISTEN; column 9 is the inode.
            if cols.get(3) == Some(&"0A") && cols.get(9).is_some_and(|i| inodes.contains(*i)) {
                n += 1;
            }
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_kill_is_counted() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("oom").await?;
    // dd touches its whole 64 MiB buffer: far over the 16 MiB limit (the machine has no swap, and
    // the limit is set for memory+swap as well).
    let mut ctr = cri::shell(
        "hog",
        env.busybox(),
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    ctr.linux = Some(k::LinuxContainerConfig {
        resources: Some(k::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            memory_swap_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri::run_container(d, &pod_id, &pod, ctr).await?;
    let st = cri::wait_exited(d, &id).await?;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    let m = scrape(d).await?;
    assert_eq!(m.value("berth_container_oom_kills_total", &[]), 1.0);
    cri::remove_container(d, &id).await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}
