//! tracing set-up: RUST_LOG-style filter, text or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global tracing subscriber. `RUST_LOG`, when set and not empty, wins over the configured level.
pub fn init(config: &LogConfig) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| config.level.clone());
    let filter = EnvFilter::new(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.json {
        builder.json().init();
    } else {
        builder.init();
    }
}
