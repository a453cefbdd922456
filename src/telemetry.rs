//! Tracing subscriber set-up: human-readable lines by default, JSON lines with
//! `--log-format json`. Filtering follows `RUST_LOG` (default `info`). Owns no
//! business logic and never formats secrets: secret types do not implement
//! `Display`, and `Debug` on them is redacted by `secrecy`.

use tracing_subscriber::EnvFilter;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with span fields (for CloudWatch and collectors).
    Json,
}

/// Installs the global subscriber. Calling it twice is harmless (the second call
/// is ignored), so tests and the binary can both call it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
