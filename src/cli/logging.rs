//! Where `kiln`'s log lines go and in what shape.
//!
//! Under the Functions host (it sets `FUNCTIONS_CUSTOMHANDLER_PORT`) each
//! line is one JSON object, so Application Insights can filter by field;
//! on a terminal, lines are for people. `KILN_LOG_FORMAT=json|text`
//! overrides the choice; `KILN_LOG` filters (`info` by default, the
//! `tracing` env-filter syntax). Lines go to stderr: stdout is the CLI's
//! output.
//!
//! Both shapes carry the fields of every span a line is in: the driver's
//! `build` span (`build_id`, `pipeline`) and the Azure client's `azure_call`
//! span, so each line about a build names it.

use tracing_subscriber::EnvFilter;

/// The shape of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `KILN_LOG_FORMAT` if set, else JSON under the Functions host and text elsewhere.
    pub fn choose(setting: Option<&str>, under_functions_host: bool) -> Result<LogFormat, String> {
        match setting.map(str::trim) {
            Some("json") => Ok(LogFormat::Json),
            Some("text") => Ok(LogFormat::Text),
            Some("") | None if under_functions_host => Ok(LogFormat::Json),
            Some("") | None => Ok(LogFormat::Text),
            Some(other) => Err(format!(
                "KILN_LOG_FORMAT: expected `json` or `text`, got `{other}`"
            )),
        }
    }
}

/// Installs the global subscriber for this process.
pub fn init() -> Result<(), String> {
    let setting = std::env::var("KILN_LOG_FORMAT").ok();
    let functions_host = std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some();
    let format = LogFormat::choose(setting.as_deref(), functions_host)?;
    let filter = match std::env::var("KILN_LOG") {
        Ok(s) => EnvFilter::try_new(&s)
            .map_err(|e| format!("KILN_LOG: `{s}` is not a log filter: {e}"))?,
        Err(_) => EnvFilter::new("info"),
    }
    // reqwest's debug lines quote whole URLs (a redirect's, with its SAS
    // token): kiln's own lines name URIs redacted, reqwest's are capped.
    .add_directive("reqwest=info".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            // Fields at the top level and every enclosing span listed, so a
            // line inside `azure_call` still carries the build it is about.
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_under_the_functions_host_text_elsewhere_and_the_setting_wins() {
        assert_eq!(LogFormat::choose(None, true), Ok(LogFormat::Json));
        assert_eq!(LogFormat::choose(None, false), Ok(LogFormat::Text));
        assert_eq!(LogFormat::choose(Some(""), true), Ok(LogFormat::Json));
        assert_eq!(LogFormat::choose(Some("text"), true), Ok(LogFormat::Text));
        assert_eq!(LogFormat::choose(Some("json"), false), Ok(LogFormat::Json));
        let e = LogFormat::choose(Some("yaml"), false).unwrap_err();
        assert!(e.contains("KILN_LOG_FORMAT") && e.contains("yaml"), "{e}");
    }
}
