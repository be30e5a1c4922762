//! Streaming end to end, the way kubectl/crictl drive it: the CRI Exec, Attach and PortForward
//! RPCs hand out single-use URLs; the test clients ([`berth_tests::stream_client`]) speak the
//! kubelet's remote-command and port-forward protocols to them over SPDY/3.1 and WebSocket (v5,
//! v4, base64), against real busybox containers.

use std::time::Duration;

use anyhow::Context;
use berth_tests::cri::{self, code};
use berth_tests::stream_client::{
    self as sc, http_response_body, http_status, RemoteCommand, SpdyPortForward, Streams,
    WsPortForward,
};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// How long a whole session may take.
const SESSION: Duration = Duration::from_secs(30);

/// How the test reaches the streaming server.
#[derive(Debug, Clone, Copy)]
enum Via {
    Spdy,
    Ws(&'static str),
}

async fn exec_url(env: &TestEnv, id: &str, cmd: &[&str], s: Streams) -> anyhow::Result<String> {
    let r = env
        .d
        .rt()
        .exec(k::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            tty: s.tty,
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
        })
        .await
        .with_context(|| format!("Exec {cmd:?} in {id}"))?
        .into_inner();
    Ok(r.url)
}

async fn attach_url(env: &TestEnv, id: &str, s: Streams) -> anyhow::Result<String> {
    let r = env
        .d
        .rt()
        .attach(k::AttachRequest {
            container_id: id.into(),
            stdin: s.stdin,
            tty: s.tty,
            stdout: s.stdout,
            stderr: s.stderr,
        })
        .await
        .with_context(|| format!("Attach {id}"))?
        .into_inner();
    Ok(r.url)
}

async fn port_forward_url(env: &TestEnv, pod_id: &str, port: u16) -> anyhow::Result<String> {
    let r = env
        .d
        .rt()
        .port_forward(k::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: vec![i32::from(port)],
        })
        .await
        .with_context(|| format!("PortForward {pod_id}"))?
        .into_inner();
    Ok(r.url)
}

async fn connect(url: &str, via: Via, s: Streams) -> anyhow::Result<RemoteCommand> {
    match via {
        Via::Spdy => RemoteCommand::spdy(url, s).await,
        Via::Ws(p) => RemoteCommand::websocket(url, p).await,
    }
}

/// Lines of terminal output, without `\r` and trailing blanks.
fn lines(out: &str) -> Vec<String> {
    out.split('\n')
        .map(|l| l.trim_end_matches('\r').trim_end().to_string())
        .collect()
}

/// Runs a sleeping container in a new pod; returns (pod id, container id).
async fn sleeper(env: &TestEnv, pod: &str) -> anyhow::Result<(String, String)> {
    let (pod_id, cfg) = env.pod(pod).await?;
    let id = cri::run_container(
        &env.d,
        &pod_id,
        &cfg,
        cri::shell("sleeper", env.busybox(), "sleep 100000"),
    )
    .await?;
    Ok((pod_id, id))
}

/// The exec's files are gone once the session ended (FIFOs, exec dir entries).
async fn no_exec_leftovers(env: &TestEnv, id: &str) -> anyhow::Result<()> {
    let exec_dir = env.d.state().join("containers").join(id).join("exec");
    berth_tests::wait::until(
        "exec leftovers to be removed",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let exec_dir = exec_dir.clone();
            async move {
                let left: Vec<_> = std::fs::read_dir(&exec_dir)
                    .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                if left.is_empty() {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("left in {}: {left:?}", exec_dir.display())
                }
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_with_tty_over_spdy_and_websocket() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let (_pod_id, id) = sleeper(&env, "exectty").await?;
    let s = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    for via in [
        Via::Spdy,
        Via::Ws(sc::WS_V5),
        Via::Ws(sc::WS_V4),
        Via::Ws(sc::WS_V4_BASE64),
    ] {
        let url = exec_url(&env, &id, &["sh"], s).await?;
        let session = connect(&url, via, s)
            .await
            .with_context(|| format!("{via:?}"))?;
        if let Via::Spdy = via {
            assert_eq!(session.protocol(), "v4.channel.k8s.io");
        }
        session.resize(100, 40)?;
        // The prompt: the shell is up (and reads its terminal).
        session
            .wait_stdout("the shell's prompt", SESSION, |o| o.contains('#'))
            .await
            .with_context(|| format!("{via:?}"))?;
        // stty is not linked in the image: run it through busybox.
        session.send_stdin(b"echo hi; busybox stty size; exit 3\n")?;
        let out = session
            .finish(SESSION)
            .await
            .with_context(|| format!("{via:?}"))?;
        let text = out.stdout_text();
        let got = lines(&text);
        assert!(got.contains(&"hi".to_string()), "{via:?}: {text:?}");
        assert!(got.contains(&"40 100".to_string()), "{via:?}: {text:?}");
        assert!(out.stderr.is_empty(), "{via:?}: stderr with a tty");
        assert_eq!(out.exit_code()?, 3, "{via:?}: {:?}", out.error);
    }
    no_exec_leftovers(&env, &id).await?;

    // A TTY has no separate stderr: asking for both is refused up front.
    let r = env
        .d
        .rt()
        .exec(k::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await;
    assert_eq!(code(&r), Code::InvalidArgument, "{r:?}");

    leaks::assert_no_leaks(&env.d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_without_tty_separates_streams_and_half_closes_stdin() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let (_pod_id, id) = sleeper(&env, "execpipe").await?;
    let all = Streams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    // Half-closing stdin (SPDY FIN, v5 close signal) ends `cat`; the streams stay apart.
    for via in [Via::Spdy, Via::Ws(sc::WS_V5)] {
        let url = exec_url(
            &env,
            &id,
            &["sh", "-c", "cat; echo cat-done >&2; exit 5"],
            all,
        )
        .await?;
        let session = connect(&url, via, all).await?;
        session.send_stdin(b"line one\n")?;
        session
            .wait_stdout("stdin echoed by cat", SESSION, |o| o == "line one\n")
            .await
            .with_context(|| format!("{via:?}"))?;
        session.send_stdin(b"line two\n")?;
        session.close_stdin()?;
        let out = session
            .finish(SESSION)
            .await
            .with_context(|| format!("{via:?}"))?;
        assert_eq!(out.stdout_text(), "line one\nline two\n", "{via:?}");
        assert_eq!(out.stderr_text(), "cat-done\n", "{via:?}");
        assert_eq!(out.exit_code()?, 5, "{via:?}: {:?}", out.error);
    }

    // Bulk stdin: 4 MiB through `wc -c`, sent in 64 KiB writes.
    for via in [Via::Spdy, Via::Ws(sc::WS_V5)] {
        let url = exec_url(&env, &id, &["wc", "-c"], all).await?;
        let session = connect(&url, via, all).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            session.send_stdin(&chunk)?;
        }
        session.close_stdin()?;
        let out = session
            .finish(Duration::from_secs(60))
            .await
            .with_context(|| format!("{via:?}"))?;
        assert_eq!(out.stdout_text().trim(), "4194304", "{via:?}");
        assert_eq!(out.exit_code()?, 0, "{via:?}: {:?}", out.error);
    }

    // A client that goes away mid-command: the exec is killed and cleaned up.
    for via in [Via::Spdy, Via::Ws(sc::WS_V5)] {
        let url = exec_url(
            &env,
            &id,
            &["sh", "-c", "echo started; exec sleep 4242"],
            all,
        )
        .await?;
        let session = connect(&url, via, all).await?;
        session
            .wait_stdout("the command to start", SESSION, |o| o == "started\n")
            .await
            .with_context(|| format!("{via:?}"))?;
        session.detach().await?;
        berth_tests::wait::until(
            "the abandoned exec to be killed",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || async {
                let r = env
                    .d
                    .rt()
                    .exec_sync(k::ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["ps".into(), "-o".into(), "args".into()],
                        timeout: 10,
                    })
                    .await?
                    .into_inner();
                let ps = String::from_utf8_lossy(&r.stdout).into_owned();
                Ok((!ps.contains("sleep 4242")).then_some(()))
            },
        )
        .await
        .with_context(|| format!("{via:?}"))?;
        no_exec_leftovers(&env, &id).await?;
    }

    // Output only (no stdin), success status, over every WebSocket flavour and SPDY.
    let out_err = Streams {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for via in [
        Via::Spdy,
        Via::Ws(sc::WS_V5),
        Via::Ws(sc::WS_V4),
        Via::Ws(sc::WS_V4_BASE64),
        Via::Ws(sc::WS_V1),
        Via::Ws(sc::WS_V1_BASE64),
    ] {
        let url = exec_url(
            &env,
            &id,
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; head -c 100000 /dev/zero",
            ],
            out_err,
        )
        .await?;
        let out = connect(&url, via, out_err)
            .await?
            .finish(SESSION)
            .await
            .with_context(|| format!("{via:?}"))?;
        let mut want = b"out\n".to_vec();
        want.extend(std::iter::repeat_n(0u8, 100_000));
        assert!(
            out.stdout == want,
            "{via:?}: {} bytes of stdout",
            out.stdout.len()
        );
        assert_eq!(out.stderr_text(), "err\n", "{via:?}");
        assert_eq!(out.exit_code()?, 0, "{via:?}: {:?}", out.error);
    }

    // A failing command over a pre-v4 protocol reports its failure as text.
    let url = exec_url(&env, &id, &["sh", "-c", "exit 9"], out_err).await?;
    let out = connect(&url, Via::Ws(sc::WS_V1), out_err)
        .await?
        .finish(SESSION)
        .await?;
    assert!(
        !out.error.is_empty(),
        "channel.k8s.io: no error text for exit 9"
    );

    // Single use: a URL that served a session answers 404 afterwards (SPDY and WebSocket).
    let url = exec_url(&env, &id, &["true"], out_err).await?;
    let out = RemoteCommand::spdy(&url, out_err)
        .await?
        .finish(SESSION)
        .await?;
    assert_eq!(out.exit_code()?, 0);
    let again = RemoteCommand::spdy(&url, out_err).await;
    assert_eq!(again.as_ref().err().and_then(http_status), Some(404));
    let again = RemoteCommand::websocket(&url, sc::WS_V5).await;
    assert_eq!(again.as_ref().err().and_then(http_status), Some(404));
    // And a token that never existed.
    let bogus = match url.rfind('/') {
        Some(i) => format!("{}/not-a-token", &url[..i]),
        None => anyhow::bail!("odd exec URL {url}"),
    };
    let r = RemoteCommand::spdy(&bogus, out_err).await;
    assert_eq!(r.as_ref().err().and_then(http_status), Some(404));

    no_exec_leftovers(&env, &id).await?;
    leaks::assert_no_leaks(&env.d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_to_a_tty_shell_and_to_a_stdin_once_cat() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("attach").await?;

    // A shell on a terminal, its stdin open.
    let mut shell = cri::container_config("shell", env.busybox(), &["sh"]);
    shell.tty = true;
    shell.stdin = true;
    let shell_id = cri::run_container(d, &pod_id, &pod, shell).await?;
    let tty = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    // First client: resize, run a command, detach (the container keeps running).
    let url = attach_url(&env, &shell_id, tty).await?;
    let session = RemoteCommand::spdy(&url, tty).await?;
    session.resize(90, 30)?;
    // Let the resize land before the command reads the terminal size.
    tokio::time::sleep(Duration::from_millis(500)).await;
    session.send_stdin(b"busybox stty size; echo at-$((6*7))\n")?;
    let out = session
        .wait_stdout("the shell's answer", SESSION, |o| {
            let l = lines(o);
            l.contains(&"at-42".to_string()) && l.contains(&"30 90".to_string())
        })
        .await?;
    assert!(!out.contains("stty: "), "{out:?}");
    session.detach().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cri::container_status(d, &shell_id).await?.state,
        cri::RUNNING,
        "detaching stopped the shell"
    );
    // Two clients at once (WebSocket v5 and v4): both see the output; the shell exits, its
    // output ending ends both attaches.
    let url = attach_url(&env, &shell_id, tty).await?;
    let first = RemoteCommand::websocket(&url, sc::WS_V5).await?;
    let url = attach_url(&env, &shell_id, tty).await?;
    let second = RemoteCommand::websocket(&url, sc::WS_V4).await?;
    // Both connections are registered with the shim before the shell answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.send_stdin(b"echo bye-$((1+1)); exit 7\n")?;
    for (n, session) in [first, second].into_iter().enumerate() {
        let out = session
            .finish(SESSION)
            .await
            .with_context(|| format!("client {n}"))?;
        assert!(
            lines(&out.stdout_text()).contains(&"bye-2".to_string()),
            "client {n}: {:?}",
            out.stdout_text()
        );
        assert_eq!(
            out.exit_code()?,
            0,
            "client {n}: attach status: {:?}",
            out.error
        );
    }
    let st = cri::wait_exited(d, &shell_id).await?;
    assert_eq!(st.exit_code, 7, "{st:?}");

    // `cat` without a terminal, stdin_once: the container ends when the attach closes stdin.
    let pipes = Streams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for (name, via) in [("cat-spdy", Via::Spdy), ("cat-ws", Via::Ws(sc::WS_V5))] {
        let mut cat = cri::container_config(name, env.busybox(), &["cat"]);
        cat.stdin = true;
        cat.stdin_once = true;
        let cat_id = cri::run_container(d, &pod_id, &pod, cat.clone()).await?;
        let url = attach_url(&env, &cat_id, pipes).await?;
        let session = connect(&url, via, pipes).await?;
        session.send_stdin(b"once\n")?;
        session
            .wait_stdout("cat's echo", SESSION, |o| o == "once\n")
            .await
            .with_context(|| format!("{via:?}"))?;
        session.close_stdin()?;
        let out = session
            .finish(SESSION)
            .await
            .with_context(|| format!("{via:?}"))?;
        assert_eq!(out.stdout_text(), "once\n", "{via:?}");
        assert_eq!(out.stderr_text(), "", "{via:?}");
        assert_eq!(out.exit_code()?, 0, "{via:?}: {:?}", out.error);
        let st = cri::wait_exited(d, &cat_id).await?;
        assert_eq!(st.exit_code, 0, "{via:?}: {st:?}");
        // What went through the attach is in the container's log too.
        let log = std::fs::read_to_string(cri::log_file(&pod, &cat))?;
        let records = cri::parse_cri_log(&log)?;
        assert!(
            records
                .iter()
                .any(|r| r.stream == "stdout" && r.text == "once"),
            "{via:?}: {log}"
        );
    }

    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// The page and the big file the pod's httpd serves.
const INDEX: &str = "port-forward index\n";

fn big_file() -> Vec<u8> {
    (1..=200_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

async fn http_get_spdy(pf: &mut SpdyPortForward, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut s = pf.open(8080).await?;
    s.data
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    berth_tests::wait::within("the HTTP response over SPDY", SESSION, async {
        while http_response_body(&buf).is_none() {
            let n = s
                .data
                .read(&mut chunk)
                .await
                .context("reading data stream")?;
            if n == 0 {
                anyhow::bail!(
                    "data stream ended before the response did: {:?}",
                    String::from_utf8_lossy(&buf[..buf.len().min(300)])
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await?;
    // Done sending (like a client closing its socket after the response), then the pair ends
    // without an error.
    s.data
        .shutdown()
        .await
        .context("half-closing the data stream")?;
    let err = s.error_text(SESSION).await?;
    assert_eq!(err, "", "error stream for {path}");
    Ok(http_response_body(&buf).unwrap_or_default().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_and_websocket() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("portfwd").await?;
    let script = format!(
        "mkdir -p /tmp/www && printf '{}' > /tmp/www/index.html && \
         seq 1 200000 > /tmp/www/big.txt && exec httpd -f -p 8080 -h /tmp/www",
        INDEX.replace('\n', "\\n")
    );
    let id = cri::run_container(
        d,
        &pod_id,
        &pod,
        cri::shell("httpd", env.busybox(), &script),
    )
    .await?;
    // Wait until httpd answers inside the pod.
    berth_tests::wait::until(
        "httpd to serve in the pod",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let r = d
                .rt()
                .exec_sync(k::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    timeout: 5,
                })
                .await?
                .into_inner();
            Ok((r.exit_code == 0).then_some(()))
        },
    )
    .await?;
    let big = big_file();

    // SPDY: two forwarded connections on one upgraded connection, then a closed port.
    let url = port_forward_url(&env, &pod_id, 8080).await?;
    let mut pf = SpdyPortForward::connect(&url).await?;
    assert_eq!(
        http_get_spdy(&mut pf, "/index.html").await?,
        INDEX.as_bytes()
    );
    let body = http_get_spdy(&mut pf, "/big.txt").await?;
    assert!(
        body == big,
        "big.txt over SPDY: {} bytes, want {}",
        body.len(),
        big.len()
    );
    let mut closed = pf.open(8081).await?;
    let err = closed.error_text(SESSION).await?;
    assert!(!err.is_empty(), "no error for a port nobody listens on");
    pf.close().await;
    // Single use.
    let again = SpdyPortForward::connect(&url).await;
    assert_eq!(again.as_ref().err().and_then(http_status), Some(404));

    // WebSocket, both protocol names.
    for protocol in [sc::PORT_FORWARD_PROTOCOL, sc::WS_V4] {
        let url = port_forward_url(&env, &pod_id, 8080).await?;
        let pf = WsPortForward::connect(&url, &[8080], protocol).await?;
        pf.send(8080, b"GET /big.txt HTTP/1.0\r\nHost: pod\r\n\r\n")?;
        let resp = pf
            .wait_data(8080, "the HTTP response over WebSocket", SESSION, |b| {
                http_response_body(b).is_some()
            })
            .await
            .with_context(|| protocol.to_string())?;
        let body = http_response_body(&resp).unwrap_or_default();
        assert!(
            body == big,
            "{protocol}: {} bytes, want {}",
            body.len(),
            big.len()
        );
        assert_eq!(pf.failure(), None, "{protocol}");
        drop(pf);
        let again = WsPortForward::connect(&url, &[8080], protocol).await;
        assert_eq!(
            again.as_ref().err().and_then(http_status),
            Some(404),
            "{protocol}"
        );
    }

    // A WebSocket port-forward to a closed port reports the error on the port's error channel.
    let url = port_forward_url(&env, &pod_id, 8081).await?;
    let pf = WsPortForward::connect(&url, &[8081], sc::PORT_FORWARD_PROTOCOL).await?;
    let err = pf.wait_error(8081, SESSION).await?;
    assert!(err.contains("8081"), "{err}");
    drop(pf);

    leaks::assert_no_leaks(d).await;
    Ok(())
}
