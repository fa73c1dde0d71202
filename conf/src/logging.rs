//! Logging of both daemons: one line per event on stderr, filtered by
//! `RUST_LOG` (default `info`).
//!
//! * `LISPWG_LOG_FORMAT=json` writes JSON lines (tracing-subscriber's JSON
//!   format: `timestamp`, `level`, `fields.message`, the event's fields,
//!   `target`) for log shippers; `text` (the default) writes
//!   `timestamp LEVEL target: message key=value ...`.
//! * Under systemd, stderr is a journald stream and `JOURNAL_STREAM` names
//!   it. Then each line starts with its syslog priority, `<3>` to `<7>`
//!   (sd-daemon(3)): journald strips the prefix and files the line at that
//!   priority (`journalctl -p warning` works), so the daemons need no
//!   journald client library and keep one output path that the tests read.
//!   Timestamps are left to journald, and there are never ANSI colours when
//!   stderr is not a terminal.

use std::io::IsTerminal;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The format named by `LISPWG_LOG_FORMAT` (`text` or `json`, any case);
    /// `Err` carries a value that names neither.
    pub fn from_env_value(value: Option<&str>) -> Result<LogFormat, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(LogFormat::Text),
            Some(v) if v.is_empty() || v == "text" => Ok(LogFormat::Text),
            Some(v) if v == "json" => Ok(LogFormat::Json),
            Some(v) => Err(v),
        }
    }
}

/// Where the lines go, which decides their decoration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sink {
    /// stderr is the journald stream systemd set up (`JOURNAL_STREAM`).
    pub journald: bool,
    /// stderr is a terminal: colours are welcome.
    pub terminal: bool,
}

impl Sink {
    /// What stderr is now.
    pub fn stderr() -> Sink {
        Sink {
            journald: stderr_is_journal(),
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` (`device:inode`) names, as
/// systemd.exec(5) says to check (a child whose stderr was redirected keeps
/// the variable but not the stream).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Sets up `tracing` for a daemon as the module documentation says.
/// Calling it again is harmless.
/// Dependencies whose info-level logs are per-packet noise.
const QUIET_CRATES: [&str; 3] = ["turn_client_proto", "stun_proto", "turn_types"];

pub fn init_logging() {
    let (mut filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().map(|v| (v, e)),
        ),
    };
    // The TURN client logs every poll at info; only its warnings matter to
    // an operator, unless RUST_LOG names it.
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for noisy in QUIET_CRATES {
        if !asked.contains(noisy) {
            if let Ok(d) = format!("{noisy}=warn").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let requested = std::env::var("LISPWG_LOG_FORMAT").ok();
    let (format, bad_format) = match LogFormat::from_env_value(requested.as_deref()) {
        Ok(f) => (f, None),
        Err(v) => (LogFormat::Text, Some(v)),
    };
    let subscriber = Registry::default()
        .with(layer(format, Sink::stderr(), std::io::stderr))
        .with(filter);
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    if let Some((value, error)) = bad_filter {
        // An unset RUST_LOG is normal; a malformed one deserves a word.
        if !value.is_empty() {
            tracing::warn!(rust_log = %value, %error, "ignoring RUST_LOG; logging at info");
        }
    }
    if let Some(value) = bad_format {
        tracing::warn!(lispwg_log_format = %value, "ignoring LISPWG_LOG_FORMAT (text or json); logging text");
    }
}

/// The formatting layer for `format` on `sink`, writing to `writer`.
pub fn layer<W>(format: LogFormat, sink: Sink, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(sink.terminal && !sink.journald);
    match (format, sink.journald) {
        (LogFormat::Text, false) => base.boxed(),
        (LogFormat::Text, true) => base
            .event_format(PriorityPrefix(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .boxed(),
        (LogFormat::Json, false) => base
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(tracing_subscriber::fmt::format().json())
            .boxed(),
        (LogFormat::Json, true) => base
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(PriorityPrefix(tracing_subscriber::fmt::format().json()))
            .boxed(),
    }
}

/// The syslog priority journald files a line at.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes each line with `<priority>` (sd-daemon(3)).
struct PriorityPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, sink: Sink) -> Vec<String> {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = Registry::default().with(layer(format, sink, move || out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(peer = "robot-a", count = 3u64, "something odd");
            tracing::info!(addr = %"192.0.2.1:4342".parse::<std::net::SocketAddr>().unwrap(), "listening");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    const PLAIN: Sink = Sink {
        journald: false,
        terminal: false,
    };
    const JOURNAL: Sink = Sink {
        journald: true,
        terminal: true,
    };

    #[test]
    fn text_lines_carry_fields_as_values_without_colours() {
        let lines = capture(LogFormat::Text, PLAIN);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains(" WARN "), "{lines:?}");
        assert!(
            lines[0].contains("something odd peer=\"robot-a\" count=3"),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with("listening addr=192.0.2.1:4342"),
            "{lines:?}"
        );
        assert!(
            !lines.concat().contains('\u{1b}'),
            "ANSI escapes: {lines:?}"
        );
    }

    #[test]
    fn journald_lines_start_with_their_priority_and_have_no_timestamp() {
        let lines = capture(LogFormat::Text, JOURNAL);
        assert!(
            lines[0].starts_with("<4> WARN ") || lines[0].starts_with("<4>WARN "),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("<6>"), "{lines:?}");
        assert!(
            !lines.concat().contains('\u{1b}'),
            "ANSI escapes under journald: {lines:?}"
        );
        let json = capture(LogFormat::Json, JOURNAL);
        assert!(json[0].starts_with("<4>{"), "{json:?}");
        let v: serde_json::Value = serde_json::from_str(&json[0][3..]).unwrap();
        assert_eq!(v["level"], "WARN");
    }

    #[test]
    fn json_lines_parse_with_fields_as_values() {
        let lines = capture(LogFormat::Json, PLAIN);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let warn: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(warn["level"], "WARN");
        assert_eq!(warn["fields"]["message"], "something odd");
        assert_eq!(warn["fields"]["peer"], "robot-a");
        assert_eq!(warn["fields"]["count"], 3);
        let info: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(info["fields"]["addr"], "192.0.2.1:4342");
    }

    #[test]
    fn the_format_variable_is_parsed_strictly() {
        assert_eq!(LogFormat::from_env_value(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_env_value(Some("JSON")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_env_value(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_env_value(Some("yaml")), Err("yaml".into()));
    }
}
