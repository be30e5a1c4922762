//! A real Prometheus scrapes berthd: Debian's `/usr/bin/prometheus` (installed by
//! `scripts/setup-node --test`) runs on a free loopback port with a 1 s scrape of berthd's
//! `/metrics`; its query API must show the target up and `berth_` series that follow a pod and a
//! container (running count up while it runs, back down after it stops).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use berth_tests::{cri, leaks, require_root, TestEnv};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server owned by the test: killed (and waited for) on drop, whatever happened.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; waits until it is ready.
    async fn start(target: std::net::SocketAddr) -> anyhow::Result<Self> {
        if !Path::new(PROMETHEUS).exists() {
            bail!(
                "{PROMETHEUS} is missing: install Debian's `prometheus` package \
                 (scripts/setup-node --test does) to run this test"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-prometheus-")
            .tempdir()
            .context("creating Prometheus' temp dir")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: berthd\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .context("writing prometheus.yml")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], berth_tests::slot::free_port()?));
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).context("creating Prometheus' log")?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("dup log fd")?)
            .stderr(out)
            .spawn()
            .context("starting prometheus")?;
        let mut p = Self {
            child,
            addr,
            log,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building HTTP client")?,
            _dir: dir,
        };
        let ready = berth_tests::wait::until(
            "prometheus to be ready",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let exited = p.child.try_wait().ok().flatten();
                let http = p.http.clone();
                let addr = p.addr;
                async move {
                    if let Some(st) = exited {
                        return Ok(Some(Err(anyhow::anyhow!("prometheus exited: {st}"))));
                    }
                    let r = http.get(format!("http://{addr}/-/ready")).send().await?;
                    Ok(r.status().is_success().then_some(Ok(())))
                }
            },
        )
        .await
        .and_then(|r| r);
        if let Err(e) = ready {
            return Err(e.context(format!("prometheus log:\n{}", p.log_text())));
        }
        Ok(p)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an instant query; returns each series' labels (as JSON text) and value.
    async fn query(&self, promql: &str) -> anyhow::Result<Vec<(String, f64)>> {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            percent_encode(promql)
        );
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await.context("reading query response")?;
        if !status.is_success() {
            bail!("query {promql}: {status}: {body}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("query {promql}: {body}"))?;
        if v["status"] != "success" {
            bail!("query {promql}: {body}");
        }
        let mut out = Vec::new();
        for r in v["data"]["result"].as_array().context("no result array")? {
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .with_context(|| format!("query {promql}: bad sample {r}"))?;
            out.push((r["metric"].to_string(), value));
        }
        Ok(out)
    }

    /// Waits until `promql` returns one series whose value satisfies `pred`; returns it.
    async fn wait_value(&self, promql: &str, pred: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
        let pred = &pred;
        let r = berth_tests::wait::until(
            &format!("prometheus to show {promql} with the expected value"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || async move {
                let got = self.query(promql).await?;
                match got.as_slice() {
                    [(_, v)] if pred(*v) => Ok(Some(*v)),
                    other => bail!("got {other:?}"),
                }
            },
        )
        .await;
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(e.context(format!(
                "targets: {}\nprometheus log:\n{}",
                self.targets().await,
                self.log_text()
            ))),
        }
    }

    /// The scrape targets' state, for failure reports.
    async fn targets(&self) -> String {
        match self
            .http
            .get(format!("http://{}/api/v1/targets", self.addr))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("(targets unavailable: {e})"),
        }
    }
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn queries_are_percent_encoded() {
    assert_eq!(
        percent_encode("berth_containers{state=\"running\"}"),
        "berth_containers%7Bstate%3D%22running%22%7D"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_berthd() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let target = d.metrics_address().context("metrics address")?;
    // Declared after `env`: dropped (killed) before the daemon is torn down.
    let prom = Prometheus::start(target).await?;

    // The target is up: Prometheus accepted berthd's exposition (content type and format).
    prom.wait_value("up{job=\"berthd\"}", |v| v == 1.0).await?;
    prom.wait_value("berth_containers{job=\"berthd\",state=\"running\"}", |v| {
        v == 0.0
    })
    .await?;

    let (pod_id, pod) = env.pod("promscrape").await?;
    let id = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("sleeper", env.busybox(), "sleep 100000"),
    )
    .await?;
    prom.wait_value("berth_containers{job=\"berthd\",state=\"running\"}", |v| {
        v >= 1.0
    })
    .await?;
    prom.wait_value("berth_pods{job=\"berthd\",state=\"ready\"}", |v| v >= 1.0)
        .await?;
    prom.wait_value(
        "sum(berth_grpc_requests_total{job=\"berthd\",method=\"RunPodSandbox\"})",
        |v| v >= 1.0,
    )
    .await?;
    prom.wait_value(
        "sum(berth_grpc_requests_total{job=\"berthd\",method=\"StartContainer\"})",
        |v| v >= 1.0,
    )
    .await?;
    // Every berth_ series Prometheus stored carries the berth_ prefix and there are several.
    let names = prom
        .query("count by (__name__) ({__name__=~\"berth_.+\"})")
        .await?;
    assert!(names.len() >= 5, "few berth_ series scraped: {names:?}");

    cri::stop_container(d, &id, 0).await?;
    prom.wait_value("berth_containers{job=\"berthd\",state=\"running\"}", |v| {
        v == 0.0
    })
    .await?;
    prom.wait_value("berth_containers{job=\"berthd\",state=\"exited\"}", |v| {
        v >= 1.0
    })
    .await?;

    drop(prom);
    leaks::assert_no_leaks(d).await;
    Ok(())
}
