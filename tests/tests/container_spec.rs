//! The OCI spec berth builds: entrypoint/cmd/args/env/working dir merged from image and CRI,
//! bind mounts (read-only and read-write), and resources turned into cgroup limits under the
//! pod's cgroup parent.

use std::time::Duration;

use anyhow::Context;
use berth_tests::cri::{self, RUNNING};
use berth_tests::host::pids_mentioning;
use berth_tests::{leaks, require_root, ImageSpec, TestEnv};
use k8s_cri::v1 as k;

fn kv(key: &str, value: &str) -> k::KeyValue {
    k::KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn command_env_workdir_and_mounts() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut spec = ImageSpec::busybox()?;
    spec.entrypoint = vec!["/bin/echo".into(), "ep".into()];
    spec.cmd = vec!["from-cmd".into()];
    spec.env.push("IMG=image".into());
    spec.env.push("BOTH=image".into());
    spec.working_dir = Some("/data".into());
    let image = spec.push(&env.reg, "bt/spec", "1").await?;
    cri::pull(d, &image.reference, None).await?;
    let (pod_id, pod) = env.pod("spec").await?;

    let plain = cri::container_config("plain", &image.reference, &[]);
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, plain).await?;
    assert_eq!(out, ["ep from-cmd"], "image Entrypoint + Cmd");

    let mut args = cri::container_config("args", &image.reference, &[]);
    args.args = vec!["from-args".into()];
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, args).await?;
    assert_eq!(out, ["ep from-args"], "CRI args replace the image Cmd");

    let mut envs = cri::shell("envs", &image.reference, "pwd; echo $IMG $BOTH $CRI");
    envs.envs = vec![kv("BOTH", "cri"), kv("CRI", "yes")];
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, envs).await?;
    assert_eq!(
        out,
        ["/data", "image cri yes"],
        "image WorkingDir; CRI env wins over image env"
    );

    let mut wd = cri::container_config("wd", &image.reference, &["pwd"]);
    wd.working_dir = "/tmp".into();
    let (_, out) = cri::run_to_exit(d, &pod_id, &pod, wd).await?;
    assert_eq!(out, ["/tmp"], "CRI working_dir wins");

    let vol = d.dir().join("vol");
    std::fs::create_dir_all(&vol)?;
    std::fs::write(vol.join("hostfile"), "from-host\n")?;
    let mut mounts = cri::shell(
        "mounts",
        env.busybox(),
        "cat /vol/hostfile; echo written > /vol/out; \
         if echo x > /ro/x 2>/dev/null; then echo ro-writable; else echo ro-refused; fi; cat /ro/hostfile",
    );
    mounts.mounts = vec![
        k::Mount {
            container_path: "/vol".into(),
            host_path: vol.display().to_string(),
            readonly: false,
            ..Default::default()
        },
        k::Mount {
            container_path: "/ro".into(),
            host_path: vol.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, mounts).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(out, ["from-host", "ro-refused", "from-host"]);
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).context("rw mount write")?,
        "written\n"
    );
    assert!(
        !vol.join("x").exists(),
        "write through the read-only mount reached the host"
    );
    assert!(
        st.mounts
            .iter()
            .any(|m| m.container_path == "/ro" && m.readonly),
        "{:?}",
        st.mounts
    );
    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// The container's cgroup directory for `controller` (v1) or the unified one (v2), from
/// /proc/<pid>/cgroup.
fn cgroup_dir_of(pid: i32, controller: &str) -> anyhow::Result<(String, std::path::PathBuf)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if ctrls.split(',').any(|c| c == controller) {
            return Ok((
                path.into(),
                format!("/sys/fs/cgroup/{controller}{path}").into(),
            ));
        }
    }
    // Pure v2.
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup line for the container")?
        .to_string();
    Ok((path.clone(), format!("/sys/fs/cgroup{path}").into()))
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_lands_in_the_pod_cgroup() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("limits").await?;
    let sleep_arg = format!("{}", 3000 + d.slot().n());
    let mut ctr = cri::container_config("limited", env.busybox(), &["sleep", &sleep_arg]);
    ctr.linux = Some(k::LinuxContainerConfig {
        resources: Some(k::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri::run_container(d, &pod_id, &pod, ctr).await?;
    cri::wait_state(d, &id, RUNNING, Duration::from_secs(10)).await?;
    let pids = pids_mentioning(&format!("sleep {sleep_arg}"));
    let pid = *pids.first().context("container process not found")?;
    let (path, dir) = cgroup_dir_of(pid, "memory")?;
    assert!(
        path.starts_with(&format!("{}/", d.slot().cgroup_parent())),
        "container cgroup {path} is not under the pod's cgroup parent {}",
        d.slot().cgroup_parent()
    );
    let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
        .with_context(|| format!("reading the memory limit in {}", dir.display()))?;
    assert_eq!(
        limit.trim(),
        (64u64 << 20).to_string(),
        "memory limit in {}",
        dir.display()
    );
    leaks::assert_no_leaks(d).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_hostname_dns_and_hosts() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let mut pod = cri::pod_config(d, "dns")?;
    pod.hostname = "berth-host".into();
    pod.dns_config = Some(k::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod_id = cri::run_pod(d, &pod).await?;
    let ctr = cri::shell(
        "look",
        env.busybox(),
        "hostname; grep -v '^#' /etc/resolv.conf; grep -c berth-host /etc/hosts",
    );
    let (st, out) = cri::run_to_exit(d, &pod_id, &pod, ctr).await?;
    assert_eq!(st.exit_code, 0, "{st:?} {out:?}");
    assert_eq!(
        out.first().map(String::as_str),
        Some("berth-host"),
        "{out:?}"
    );
    let has = |needle: &str| {
        out.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == needle)
    };
    assert!(has("nameserver 10.96.0.10"), "resolv.conf: {out:?}");
    assert!(
        has("search ns.svc.cluster.local svc.cluster.local"),
        "resolv.conf: {out:?}"
    );
    assert!(has("options ndots:5"), "resolv.conf: {out:?}");
    assert_ne!(
        out.last().map(String::as_str),
        Some("0"),
        "/etc/hosts names the pod: {out:?}"
    );
    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// Unmounts a test's host bind mount even when an assertion fails first.
struct HostMount(std::path::PathBuf);

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_propagation_modes() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("propagation").await?;

    // A shared mount on the host, so that slave and shared propagation can be told apart inside.
    let vol = d.dir().join("shared-vol");
    std::fs::create_dir_all(&vol)?;
    nix::mount::mount(
        Some(&vol),
        &vol,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let _guard = HostMount(vol.clone());
    nix::mount::mount(
        None::<&str>,
        &vol,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )?;

    let cases = [
        (k::MountPropagation::PropagationPrivate, "private"),
        (k::MountPropagation::PropagationHostToContainer, "master:"),
        (k::MountPropagation::PropagationBidirectional, "shared:"),
    ];
    for (i, (propagation, expected)) in cases.into_iter().enumerate() {
        let mut c = cri::shell(
            &format!("prop-{i}"),
            env.busybox(),
            "grep ' /vol ' /proc/self/mountinfo",
        );
        c.mounts = vec![k::Mount {
            container_path: "/vol".into(),
            host_path: vol.display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        let (st, out) = cri::run_to_exit(d, &pod_id, &pod, c).await?;
        assert_eq!(st.exit_code, 0, "{propagation:?}: {st:?}");
        let line = out.join("\n");
        if expected == "private" {
            assert!(
                !line.contains("shared:") && !line.contains("master:"),
                "{propagation:?} mount propagates: {line}"
            );
        } else {
            assert!(
                line.contains(expected),
                "{propagation:?} mount lacks {expected}: {line}"
            );
        }
    }
    leaks::assert_no_leaks(d).await;
    Ok(())
}
