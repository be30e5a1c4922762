//! Bounded polling: every wait in the suite has a deadline and fails with a message, never hangs.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `f` every `every` until it returns `Ok(Some(v))`, or fails after `timeout` with the last
/// error or `what`.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!(": last error: {e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `fut` with a deadline, turning a timeout into an error naming `what`.
pub async fn within<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => bail!("timed out after {timeout:?}: {what}"),
    }
}
