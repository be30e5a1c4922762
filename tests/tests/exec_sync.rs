//! ExecSync: output and exit codes, the container's env/user/namespaces, timeouts that kill,
//! the 16 MiB output cap, and the errors for exited and unknown containers.

use std::time::{Duration, Instant};

use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

async fn exec(
    env: &TestEnv,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<k::ExecSyncResponse, tonic::Status> {
    env.d
        .rt()
        // Capped output (16 MiB per stream) exceeds tonic's default 4 MiB limit.
        .max_decoding_message_size(64 << 20)
        .exec_sync(k::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_end_to_end() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("execpod").await?;

    let mut cfg = cri::shell("sleeper", env.busybox(), "sleep 100000");
    cfg.envs = vec![k::KeyValue {
        key: "GREETING".into(),
        value: "hello-exec".into(),
    }];
    cfg.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            run_as_user: Some(k::Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri::run_container(d, &pod_id, &pod, cfg).await?;

    let r = exec(&env, &id, &["echo", "hi"], 0).await?;
    assert_eq!(
        (
            text(&r.stdout).as_str(),
            text(&r.stderr).as_str(),
            r.exit_code
        ),
        ("hi\n", "", 0)
    );

    let r = exec(
        &env,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        10,
    )
    .await?;
    assert_eq!(
        (
            text(&r.stdout).as_str(),
            text(&r.stderr).as_str(),
            r.exit_code
        ),
        ("out\n", "err\n", 3)
    );

    // The container's env, user, hostname (UTS) and namespaces (compared with its init, pid 1).
    let r = exec(
        &env,
        &id,
        &[
            "sh",
            "-c",
            "echo $GREETING; id -u; hostname; \
             for n in net mnt uts ipc pid; do \
               [ \"$(readlink /proc/self/ns/$n)\" = \"$(readlink /proc/1/ns/$n)\" ] && echo same-$n; \
             done",
        ],
        10,
    )
    .await?;
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    let lines: Vec<String> = text(&r.stdout).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "hello-exec",
            "1000",
            "execpod",
            "same-net",
            "same-mnt",
            "same-uts",
            "same-ipc",
            "same-pid"
        ],
        "stderr: {}",
        text(&r.stderr)
    );

    // A timeout fails in about its length and kills the process.
    let started = Instant::now();
    let r = exec(&env, &id, &["sleep", "10"], 1).await;
    let took = started.elapsed();
    assert_eq!(code(&r), Code::DeadlineExceeded, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let r = exec(&env, &id, &["ps", "-o", "args"], 10).await?;
    assert!(
        !text(&r.stdout).contains("sleep 10\n"),
        "timed-out exec still running:\n{}",
        text(&r.stdout)
    );

    // Output is capped at 16 MiB per stream; the process is not blocked by the rest.
    let r = exec(
        &env,
        &id,
        &[
            "sh",
            "-c",
            "head -c 20000000 /dev/zero; head -c 100 /dev/zero >&2",
        ],
        30,
    )
    .await?;
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.stdout.len(), 16 * 1024 * 1024);
    assert_eq!(r.stderr.len(), 100);

    // A command that does not exist fails (without hanging) and leaves nothing behind.
    let r = exec(&env, &id, &["/no/such/binary"], 10).await;
    assert!(r.is_err(), "{r:?}");

    // Execs run concurrently.
    let started = Instant::now();
    let (a, b) = tokio::join!(
        exec(&env, &id, &["sh", "-c", "sleep 1; echo a"], 10),
        exec(&env, &id, &["sh", "-c", "sleep 1; echo b"], 10)
    );
    assert_eq!(
        (text(&a?.stdout), text(&b?.stdout)),
        ("a\n".into(), "b\n".into())
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    // No exec files left in the bundle (FIFOs, process files, libcontainer's notify sockets).
    let bundle = d.state().join("containers").join(&id);
    let runtime = std::fs::read_dir(bundle.join("runtime"))?
        .chain(std::fs::read_dir(bundle.join("runtime").join(&id))?)
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-") || n.starts_with("tenant-"))
        .collect::<Vec<_>>();
    assert!(runtime.is_empty(), "left in the runtime dir: {runtime:?}");
    let exec_dir = d.state().join("containers").join(&id).join("exec");
    let left: Vec<_> = std::fs::read_dir(&exec_dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", exec_dir.display());

    // Errors: empty cmd, unknown id, exited container.
    assert_eq!(code(&exec(&env, &id, &[], 0).await), Code::InvalidArgument);
    assert_eq!(
        code(&exec(&env, "no-such-container", &["true"], 0).await),
        Code::NotFound
    );
    let (st, _) =
        cri::run_to_exit(d, &pod_id, &pod, cri::shell("done", env.busybox(), "true")).await?;
    let exited = st.id.clone();
    assert_eq!(
        code(&exec(&env, &exited, &["true"], 0).await),
        Code::FailedPrecondition
    );

    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// A profile that allows everything except creating directories.
const DENY_MKDIR: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    ]
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn exec_keeps_seccomp_and_capabilities() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("execsec").await?;
    let file = d.dir().join("deny-mkdir.json");
    std::fs::write(&file, DENY_MKDIR)?;
    let mut cfg = cri::shell("confined", env.busybox(), "sleep 100000");
    cfg.linux = Some(k::LinuxContainerConfig {
        security_context: Some(k::LinuxContainerSecurityContext {
            seccomp: Some(k::SecurityProfile {
                profile_type: k::security_profile::ProfileType::Localhost as i32,
                localhost_ref: file.display().to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri::run_container(d, &pod_id, &pod, cfg).await?;

    let script = "grep -E '^(Seccomp|CapBnd):' /proc/self/status | tr -s '\\t ' ' '; \
                  grep '^CapBnd:' /proc/1/status | tr -s '\\t ' ' '; \
                  if mkdir /tmp/x 2>/dev/null; then echo made; else echo denied; fi";
    let r = exec(&env, &id, &["sh", "-c", script], 10).await?;
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    let out = text(&r.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let (exec_bnd, init_bnd) = (lines[0], lines[2]);
    assert_eq!(exec_bnd, init_bnd, "exec has the init's bounding set");
    assert_eq!(lines[1], "Seccomp: 2", "{out}");
    assert_eq!(lines[3], "denied", "{out}");
    leaks::assert_no_leaks(d).await;
    Ok(())
}
