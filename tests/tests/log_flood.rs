//! The CRI log under pressure (issue 3): a container flooding stdout and stderr at the same time
//! and exiting loses no line once its exit is reported, and long lines come back as `P`/`F`
//! pieces exactly as containerd cuts them (16 KiB records, unterminated last line tagged `P`).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use berth_tests::cri::{self, LogLine, EXITED};
use berth_tests::{leaks, require_root, TestEnv};

/// Numbered stdout lines: `seq 1 STDOUT_LINES` (many tiny records, ~11 MB).
const STDOUT_LINES: u64 = 1_500_000;
/// Numbered stderr lines, each padded with [`PAD`] (fewer, wider records, ~30 MB).
const STDERR_LINES: u64 = 300_000;
/// Padding after each stderr number: the line is `<n> <PAD>`.
const PAD: &str =
    "the-quick-brown-fox-jumps-over-the-lazy-dog-0123456789-abcdefghijklmnopqrstuvwxyz-ABCD";
/// containerd's default `max_container_log_line_size`.
const MAX_LINE: usize = 16 * 1024;

/// Checks a timestamp is Go's RFC3339Nano in UTC: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the fraction
/// 1..=9 digits without trailing zeros.
fn check_rfc3339_nano(ts: &str) -> anyhow::Result<()> {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let ok_head = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b.last() == Some(&b'Z');
    ensure!(ok_head, "timestamp {ts:?} is not RFC3339 UTC");
    let rest = &ts[19..ts.len() - 1];
    if !rest.is_empty() {
        let frac = rest
            .strip_prefix('.')
            .with_context(|| format!("timestamp {ts:?}: junk after seconds"))?;
        ensure!(
            (1..=9).contains(&frac.len())
                && frac.bytes().all(|c| c.is_ascii_digit())
                && !frac.ends_with('0'),
            "timestamp {ts:?}: fraction is not RFC3339Nano"
        );
    }
    Ok(())
}

/// Reads and parses the log (only its first `limit` bytes when given), checking every record's
/// timestamp strictly.
fn read_log(path: &std::path::Path, limit: Option<u64>) -> anyhow::Result<Vec<LogLine>> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(limit) = limit {
        bytes.truncate(usize::try_from(limit)?);
    }
    let text = String::from_utf8(bytes).context("log is not UTF-8")?;
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        "log does not end with a newline"
    );
    let lines = cri::parse_cri_log(&text)?;
    for l in &lines {
        check_rfc3339_nano(&l.time)?;
    }
    Ok(lines)
}

/// Checks that the `F` records of one stream are exactly `expected`, in order, with no `P`.
fn check_stream(
    lines: &[LogLine],
    stream: &str,
    mut expected: impl Iterator<Item = String>,
    count: u64,
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    for l in lines.iter().filter(|l| l.stream == stream) {
        ensure!(l.tag == "F", "{stream}: unexpected partial record {l:?}");
        let Some(want) = expected.next() else {
            bail!("{stream}: extra record after {count} lines: {l:?}");
        };
        if l.text != want {
            bail!(
                "{stream}: record {} is {:?}, expected {want:?} (lost, duplicated or reordered)",
                seen + 1,
                l.text
            );
        }
        seen += 1;
    }
    ensure!(
        seen == count,
        "{stream}: {seen} of {count} lines in the log; next missing: {:?}",
        expected.next()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fast_writer_that_exits_loses_no_line() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("flood").await?;

    // Both streams at once, then exit 0 right after the last write.
    let script = format!(
        "seq 1 {STDERR_LINES} | sed 's/$/ {PAD}/' >&2 & seq 1 {STDOUT_LINES}; wait; exit 0"
    );
    let flood = cri::shell("flood", env.busybox(), &script);
    let path = cri::log_file(&pod, &flood);
    let t = Instant::now();
    let id = cri::run_container(d, &pod_id, &pod, flood).await?;
    // Poll tightly so that a log still being written after the exit is reported gets noticed.
    let st = berth_tests::wait::until(
        "flood container to exit",
        Duration::from_secs(120),
        Duration::from_millis(5),
        || async { Ok(Some(cri::container_status(d, &id).await?).filter(|s| s.state == EXITED)) },
    )
    .await?;
    let size_at_exit = std::fs::metadata(&path)?.len();
    let ran = t.elapsed();
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );

    // No grace sleep: EXITED must mean the pipes were drained into the log.
    // Judge the log as it was when EXITED was seen: a drain still running would show as lost
    // lines here, and as growth below.
    let lines = read_log(&path, Some(size_at_exit))?;
    eprintln!(
        "flood: {} records, {} bytes of log, container ran {ran:?}",
        lines.len(),
        std::fs::metadata(&path)
            .map(|m| m.len())
            .unwrap_or_default()
    );
    check_stream(
        &lines,
        "stdout",
        (1..=STDOUT_LINES).map(|n| n.to_string()),
        STDOUT_LINES,
    )?;
    check_stream(
        &lines,
        "stderr",
        (1..=STDERR_LINES).map(|n| format!("{n} {PAD}")),
        STDERR_LINES,
    )?;
    ensure!(
        lines.len() as u64 == STDOUT_LINES + STDERR_LINES,
        "records other than stdout/stderr lines: {}",
        lines.len()
    );
    // Streams really ran concurrently: their records interleave in the file.
    let first_err = lines.iter().position(|l| l.stream == "stderr");
    let last_out = lines.iter().rposition(|l| l.stream == "stdout");
    assert!(
        matches!((first_err, last_out), (Some(e), Some(o)) if e < o),
        "stdout and stderr did not interleave: first stderr at {first_err:?}, last stdout at {last_out:?}"
    );

    // Nothing trickles in after the exit was reported.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let size_later = std::fs::metadata(&path)?.len();
    assert_eq!(
        size_later, size_at_exit,
        "log grew after ContainerStatus said EXITED"
    );

    cri::remove_container(d, &id).await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// `seq -s '' FIRST 20000 | head -c LEN`: a digit string that is easy to rebuild here.
fn digits(first: u32, len: usize) -> String {
    let mut s = String::new();
    for n in first..=20_000 {
        if s.len() >= len {
            break;
        }
        s.push_str(&n.to_string());
    }
    s.truncate(len);
    s
}

/// The records of one stream as (tag, text).
fn records<'a>(lines: &'a [LogLine], stream: &str) -> Vec<(&'a str, &'a str)> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| (l.tag.as_str(), l.text.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_lines_split_into_partial_records() -> anyhow::Result<()> {
    require_root!();
    let env = TestEnv::start_pulled().await?;
    let d = &env.d;
    let (pod_id, pod) = env.pod("longlines").await?;

    let (a, b, c) = (
        digits(1, 40 * 1024),
        digits(2, MAX_LINE),
        digits(3, MAX_LINE + 1),
    );
    let e = digits(4, 2 * MAX_LINE);
    let script = [
        "seq -s '' 1 20000 | head -c 40960; echo",
        "seq -s '' 2 20000 | head -c 16384; echo",
        "seq -s '' 4 20000 | head -c 32768 >&2; echo >&2",
        "echo short",
        "seq -s '' 3 20000 | head -c 16385",
    ]
    .join("; ");
    let cfg = cri::shell("longlines", env.busybox(), &script);
    let path = cri::log_file(&pod, &cfg);
    let id = cri::run_container(d, &pod_id, &pod, cfg).await?;
    let st = cri::wait_exited(d, &id).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");

    let lines = read_log(&path, None)?;
    let out = records(&lines, "stdout");
    let k = MAX_LINE;
    let want = vec![
        // 40 KiB: two full-size partials, then the 8 KiB rest closes the line.
        ("P", &a[..k]),
        ("P", &a[k..2 * k]),
        ("F", &a[2 * k..]),
        // Exactly 16 KiB fits one record.
        ("F", b.as_str()),
        ("F", "short"),
        // 16 KiB + 1 without a newline at EOF: cut at 16 KiB, and the unterminated rest is `P`
        // like containerd's redirectLogs does for a last line without newline.
        ("P", &c[..k]),
        ("P", &c[k..]),
    ];
    assert_eq!(out.len(), want.len(), "stdout records: {:?}", summary(&out));
    for (i, (got, want)) in out.iter().zip(&want).enumerate() {
        assert!(
            got == want,
            "stdout record {i}: got {} {} bytes, want {} {} bytes",
            got.0,
            got.1.len(),
            want.0,
            want.1.len()
        );
    }
    // Concatenating the pieces gives back every original line.
    assert_eq!(out[..3].iter().map(|r| r.1).collect::<String>(), a);
    assert_eq!(out[5..].iter().map(|r| r.1).collect::<String>(), c);
    // Exactly 2 × 16 KiB: one P, then an F holding the second half.
    let err = records(&lines, "stderr");
    assert_eq!(
        err,
        [("P", &e[..k]), ("F", &e[k..])],
        "stderr records: {:?}",
        summary(&err)
    );

    cri::remove_container(d, &id).await?;
    leaks::assert_no_leaks(d).await;
    Ok(())
}

/// (tag, length) of each record, for readable failures on 16 KiB texts.
fn summary(recs: &[(&str, &str)]) -> Vec<(String, usize)> {
    recs.iter().map(|(t, s)| (t.to_string(), s.len())).collect()
}
