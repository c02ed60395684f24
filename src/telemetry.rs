//! Logging setup: `tracing` with plain or JSON lines, filtered by `RUST_LOG` (default given by
//! the command: `info` for `run`, `warn` for the demo's quieter narrative).
//!
//! Colour only when stderr is a terminal: in a pod, a file or a pipe, plain lines carry no
//! escape codes (`kubectl logs` would show them raw), and JSON lines never do.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
/// `default_filter` applies when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling main paths twice) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Plain => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
