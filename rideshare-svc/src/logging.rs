//! Where log lines go and how they look: human-readable text (the default) or one JSON object
//! per line (`--log-format json`), filtered by `RIDESHARE_LOG`.
//!
//! Every line written while a request is served carries its request id: the text format shows
//! the `request{request_id=…}` (or the worker's `db{request_id=…}`) span before the message, the
//! JSON format lists the spans in `spans` and the innermost one in `span`.

use std::sync::OnceLock;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per event, with its spans, for log pipelines.
    Json,
}

/// The filter of `RIDESHARE_LOG`, or the default (`info`, ZooKeeper's client from `warn`).
pub fn filter_from_env() -> EnvFilter {
    EnvFilter::try_from_env("RIDESHARE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,zookeeper_client=warn"))
}

/// A subscriber writing `format` to `writer`, in colour (text only) when `ansi`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the process's subscriber: `format` to stdout, filtered by `RIDESHARE_LOG`; records
/// of the `log` crate (client libraries) are passed to it too. Text is coloured only on a
/// terminal, and not when `NO_COLOR` is set: a log file gets no escape codes, and colouring
/// every span's fields cost about 4 % of `rideshare up`'s CPU under load.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = FORMAT.set(format);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stdout().is_terminal() && !no_color;
    let _ = subscriber(format, filter_from_env(), std::io::stdout, ansi).try_init();
}

/// The format [`init`] installed (text if none was): workers started by this process log the
/// same way.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}
