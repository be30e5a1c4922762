//! Seccomp for containers, for real: berth writes `linux.seccomp` into config.json and berth-shim
//! (youki's libcontainer with libseccomp) loads the filter before the container's process runs.

use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, TestEnv};
use k8s_cri::v1 as k;
use k8s_cri::v1::security_profile::ProfileType;
use tonic::Code;

/// Prints the container's seccomp mode line ("Seccomp: 2" when a filter is loaded).
const SHOW_MODE: &str = "grep '^Seccomp:' /proc/self/status | tr -s '\\t ' ' '";

/// A profile that allows everything except creating directories.
const DENY_MKDIR: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    ]
}"#;

fn with_security(
    mut cfg: k::ContainerConfig,
    sec: k::LinuxContainerSecurityContext,
) -> k::ContainerConfig {
    cfg.linux = Some(k::LinuxContainerConfig {
        security_context: Some(sec),
        ..Default::default()
    });
    cfg
}

fn profile(profile_type: ProfileType, localhost_ref: &str) -> Option<k::SecurityProfile> {
    Some(k::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost_ref.into(),
    })
}

fn seccomp(profile_type: ProfileType, localhost_ref: &str) -> k::LinuxContainerSecurityContext {
    k::LinuxContainerSecurityContext {
        seccomp: profile(profile_type, localhost_ref),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_default_unconfined_and_localhost_profiles() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("seccomp").await?;

    // RuntimeDefault: a filter is loaded and ordinary work still runs under it.
    let cfg = with_security(
        cri::shell(
            "default",
            env.busybox(),
            &format!("{SHOW_MODE}; mkdir /tmp/ok && echo mkdir-ok; ls / >/dev/null && echo ls-ok"),
        ),
        seccomp(ProfileType::RuntimeDefault, ""),
    );
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    assert_eq!(out, ["Seccomp: 2", "mkdir-ok", "ls-ok"], "RuntimeDefault");

    // With no_new_privs and a non-root user the filter is loaded after capabilities are dropped.
    let mut nnp = seccomp(ProfileType::RuntimeDefault, "");
    nnp.no_new_privs = true;
    nnp.run_as_user = Some(k::Int64Value { value: 1000 });
    let cfg = with_security(
        cri::shell("nnp", env.busybox(), &format!("{SHOW_MODE}; id -u")),
        nnp,
    );
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    assert_eq!(
        out,
        ["Seccomp: 2", "1000"],
        "RuntimeDefault with no_new_privs"
    );

    // Creating a user namespace needs no capability, only the filter stops it; CAP_SYS_ADMIN opens
    // unshare and mount again.
    let userns =
        "if unshare -U true 2>/dev/null; then echo userns-ok; else echo userns-refused; fi";
    let cfg = with_security(
        cri::shell("userns", env.busybox(), userns),
        seccomp(ProfileType::RuntimeDefault, ""),
    );
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(
        out,
        ["userns-refused"],
        "RuntimeDefault without CAP_SYS_ADMIN"
    );
    let mut admin = seccomp(ProfileType::RuntimeDefault, "");
    admin.capabilities = Some(k::Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    let script =
        format!("{userns}; mkdir -p /tmp/m; if mount -t tmpfs t /tmp/m; then echo mounted; fi");
    let cfg = with_security(cri::shell("admin", env.busybox(), &script), admin);
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(
        out,
        ["userns-ok", "mounted"],
        "RuntimeDefault with CAP_SYS_ADMIN"
    );

    // Unconfined, explicitly and by leaving everything unset.
    let cfg = with_security(
        cri::shell(
            "unconfined",
            env.busybox(),
            &format!("{SHOW_MODE}; {userns}"),
        ),
        seccomp(ProfileType::Unconfined, ""),
    );
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(out, ["Seccomp: 0", "userns-ok"], "Unconfined");
    let cfg = cri::shell("unset", env.busybox(), SHOW_MODE);
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(out, ["Seccomp: 0"], "nothing set means unconfined");

    // Privileged containers are unconfined whatever they ask for.
    let mut privileged = seccomp(ProfileType::RuntimeDefault, "");
    privileged.privileged = true;
    let cfg = with_security(
        cri::shell("privileged", env.busybox(), SHOW_MODE),
        privileged,
    );
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(out, ["Seccomp: 0"], "privileged");

    // Localhost: the node's profile denies mkdir; echo still works.
    let file = d.dir().join("deny-mkdir.json");
    std::fs::write(&file, DENY_MKDIR)?;
    let script = format!(
        "{SHOW_MODE}; echo hello; if mkdir /tmp/x 2>/dev/null; then echo made; else echo denied; fi"
    );
    let cfg = with_security(
        cri::shell("localhost", env.busybox(), &script),
        seccomp(ProfileType::Localhost, &file.display().to_string()),
    );
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    assert_eq!(out, ["Seccomp: 2", "hello", "denied"], "Localhost profile");

    // The same profile through the deprecated path field.
    #[allow(deprecated)]
    let by_path = k::LinuxContainerSecurityContext {
        seccomp_profile_path: format!("localhost/{}", file.display()),
        ..Default::default()
    };
    let cfg = with_security(cri::shell("bypath", env.busybox(), &script), by_path);
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, cfg).await?;
    assert_eq!(out, ["Seccomp: 2", "hello", "denied"], "localhost/<path>");

    // A missing or malformed profile file is the caller's mistake: InvalidArgument, naming it.
    let garbage = d.dir().join("garbage.json");
    std::fs::write(&garbage, "{ not json")?;
    for (name, path) in [
        ("missing", d.dir().join("no-such-profile.json")),
        ("garbage", garbage),
    ] {
        let cfg = with_security(
            cri::shell(name, env.busybox(), "true"),
            seccomp(ProfileType::Localhost, &path.display().to_string()),
        );
        let r = d
            .rt()
            .create_container(k::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod.clone()),
            })
            .await;
        assert_eq!(code(&r), Code::InvalidArgument, "{name}: {r:?}");
        if let Err(status) = &r {
            assert!(
                status.message().contains(&path.display().to_string()),
                "{name}: {}",
                status.message()
            );
        }
    }

    leaks::assert_no_leaks(d).await;
    Ok(())
}
