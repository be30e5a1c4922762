//! A tiny logger: one timestamped line per event on stderr, which `berth-shim start` points at
//! `<bundle>/shim.log`. No tracing subscriber: every resident byte counts in a per-container process.

use std::io::Write;

/// Writes one log line (`<RFC3339 UTC> <level> <message>`) to stderr in a single write.
pub fn write(level: &str, args: std::fmt::Arguments<'_>) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let line = format!("{now} {level} {args}\n");
    // Logging must never take the shim down: a failed write to the log is dropped.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs an informational line.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write("INFO", format_args!($($arg)*)) };
}

/// Logs an error line.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write("ERROR", format_args!($($arg)*)) };
}
