//! ReopenContainerLog: after the kubelet renames a running container's log file, berth writes new
//! lines to a new file at the same path and the renamed file stops growing; an exited container is
//! FailedPrecondition (and no file is created), an unknown one NotFound.

use std::time::Duration;

use anyhow::Context;
use berth_tests::cri::{self, code};
use berth_tests::{leaks, require_root, wait, Berthd, TestEnv};
use k8s_cri::v1 as k;
use tonic::Code;

async fn reopen(d: &Berthd, id: &str) -> Result<(), tonic::Status> {
    d.rt()
        .reopen_container_log(k::ReopenContainerLogRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_after_rename_and_refusals() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("rotate").await?;

    let ticker = cri::shell(
        "ticker",
        env.busybox(),
        "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done",
    );
    let log = cri::log_file(&pod, &ticker);
    let id = cri::run_container(d, &pod_id, &pod, ticker).await?;
    cri::wait_log_line(&log, "stdout", "line 3").await?;

    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated)?;
    reopen(d, &id).await.context("ReopenContainerLog")?;
    assert!(
        log.exists(),
        "ReopenContainerLog returned before the new file existed"
    );

    // New lines land in the new file (complete CRI records, numbering continues).
    let lines = wait::until(
        "two lines in the reopened log",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log)?;
                let lines = cri::parse_cri_log(&text)?;
                Ok((lines.len() >= 2).then_some(lines))
            }
        },
    )
    .await?;
    assert!(lines
        .iter()
        .all(|l| l.stream == "stdout" && l.text.starts_with("line ")));
    let old_text = std::fs::read_to_string(&rotated)?;
    let old_lines = cri::parse_cri_log(&old_text)?;
    let last_old: u64 = old_lines
        .last()
        .and_then(|l| l.text.strip_prefix("line "))
        .and_then(|n| n.parse().ok())
        .context("last line of the rotated file")?;
    let first_new: u64 = lines[0]
        .text
        .strip_prefix("line ")
        .and_then(|n| n.parse().ok())
        .context("first line of the new file")?;
    assert_eq!(first_new, last_old + 1, "no line lost or duplicated");

    // The renamed file stopped growing; the new one keeps growing.
    let (old_size, new_size) = (size(&rotated), size(&log));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(size(&rotated), old_size, "the renamed file still grows");
    assert!(size(&log) > new_size, "the new file does not grow");

    // Reopening twice in a row (nothing renamed) is fine.
    reopen(d, &id).await.context("second ReopenContainerLog")?;

    // An exited container: FailedPrecondition, and no file appears.
    let oneshot = cri::container_config("oneshot", env.busybox(), &["true"]);
    let oneshot_log = cri::log_file(&pod, &oneshot);
    let (st, _) = cri::run_to_exit(d, &pod_id, &pod, oneshot).await?;
    assert_eq!(st.exit_code, 0);
    let oneshot_id = st.id.clone();
    std::fs::remove_file(&oneshot_log)?;
    let r = reopen(d, &oneshot_id).await;
    assert_eq!(code(&r), Code::FailedPrecondition, "{r:?}");
    assert!(
        r.as_ref()
            .err()
            .is_some_and(|s| s.message().contains("not running")),
        "{r:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !oneshot_log.exists(),
        "a log file was created for an exited container"
    );

    // Unknown id.
    let r = reopen(d, "0123456789abcdef").await;
    assert_eq!(code(&r), Code::NotFound, "{r:?}");

    leaks::assert_no_leaks(d).await;
    Ok(())
}
