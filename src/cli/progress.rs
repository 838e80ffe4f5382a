//! How a followed build is shown: a live line on a terminal (indicatif:
//! state, phase, current customizer, elapsed) and one plain line per
//! change when stderr is piped, so logs and CI output stay readable.
//!
//! The state and phase come from `GET /api/builds/{id}`; the current
//! customizer from the customization log, the last step header in it:
//! `==> [customize 2/5] Shell 'name'` (the local provider) or Packer's
//! `(telemetry) Starting provisioner shell` (Azure Image Builder).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// What the line says about a build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub state: String,
    /// The provider's phase while `running` (`Customizing`, …).
    pub phase: Option<String>,
    /// The step the log was last seen in.
    pub customizer: Option<String>,
    pub attempt: u64,
    pub max_attempts: u64,
}

impl Snapshot {
    /// From the `GET /api/builds/{id}` body, with the step last read from
    /// the log (the build view does not know steps).
    pub fn from_view(v: &Value, customizer: Option<String>) -> Snapshot {
        let b = &v["build"];
        Snapshot {
            state: v["state"].as_str().unwrap_or("").to_string(),
            phase: b["state"]["phase"].as_str().map(str::to_string),
            customizer,
            attempt: b["attempt"].as_u64().unwrap_or(0),
            max_attempts: b["maxAttempts"].as_u64().unwrap_or(0),
        }
    }

    /// The time the build has existed by the server's clock: the sum of its
    /// time in each state.
    pub fn age(v: &Value) -> Duration {
        let secs: f64 = v["secondsInState"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_f64).sum())
            .unwrap_or(0.0);
        Duration::from_secs_f64(secs.max(0.0))
    }

    fn describe(&self) -> String {
        let mut s = self.state.clone();
        if let Some(p) = &self.phase {
            s.push_str(&format!(" ({})", p.to_lowercase()));
        }
        if self.max_attempts > 1 && self.attempt > 1 {
            s.push_str(&format!(", attempt {}/{}", self.attempt, self.max_attempts));
        }
        if let (Some(c), "running") = (&self.customizer, self.state.as_str()) {
            s.push_str(&format!(", step {c}"));
        }
        s
    }
}

/// The last step header in `text`, if any (see the module comment).
pub fn current_step(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        if let Some(rest) = line.split("==> [").nth(1) {
            // `customize 2/5] Shell 'name'` → `2/5 Shell 'name'`
            let (head, what) = rest.split_once("] ")?;
            let count = head.split_whitespace().last()?;
            return Some(format!("{count} {}", what.trim()));
        }
        line.split("Starting provisioner ")
            .nth(1)
            .map(|kind| kind.trim().to_string())
            .filter(|k| !k.is_empty())
    })
}

/// The progress display of one build.
pub struct Progress {
    id: String,
    out: Out,
}

enum Out {
    /// A live line redrawn in place.
    Live(ProgressBar),
    /// One line on stderr per change, with the time since following began.
    Plain { last: String, since: Instant },
}

impl Progress {
    /// Live when stderr is a terminal; `age` is how long the build has existed.
    pub fn new(id: &str, age: Duration) -> Progress {
        let out = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner().with_elapsed(age);
            let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(id.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            Out::Live(bar)
        } else {
            Out::Plain {
                last: String::new(),
                since: Instant::now() - age,
            }
        };
        Progress {
            id: id.to_string(),
            out,
        }
    }

    pub fn update(&mut self, s: &Snapshot) {
        let text = s.describe();
        match &mut self.out {
            Out::Live(bar) => bar.set_message(text),
            Out::Plain { last, since } => {
                if *last != text {
                    eprintln!("{}: {text} ({} s)", self.id, since.elapsed().as_secs());
                    *last = text;
                }
            }
        }
    }

    /// Runs `f` (which prints) with the live line out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.out {
            Out::Live(bar) => bar.suspend(f),
            Out::Plain { .. } => f(),
        }
    }

    /// Clears the live line; the caller prints how the build ended.
    pub fn finish(&self) {
        match &self.out {
            Out::Live(bar) => bar.finish_and_clear(),
            Out::Plain { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_step_header_of_either_provider_is_the_current_step() {
        let local = "==> Customizing\n==> [customize 1/3] Shell 'base'\nok\n==> [customize 2/3] File 'motd'\ncopying\n";
        assert_eq!(current_step(local).as_deref(), Some("2/3 File 'motd'"));
        let aib = "[INFO] PACKER OUT ==> azure-arm: (telemetry) Starting provisioner shell\n[INFO] PACKER OUT     azure-arm: hello\n";
        assert_eq!(current_step(aib).as_deref(), Some("shell"));
        assert_eq!(current_step("no step yet\n"), None);
    }

    #[test]
    fn the_line_names_state_phase_retry_and_step_while_running() {
        let v = json!({
            "state": "running",
            "build": {"state": {"state": "running", "phase": "Customizing"}, "attempt": 2, "maxAttempts": 3},
            "secondsInState": {"submitting": 1.5, "running": 10.0}
        });
        let s = Snapshot::from_view(&v, Some("2/3 File 'motd'".into()));
        assert_eq!(
            s.describe(),
            "running (customizing), attempt 2/3, step 2/3 File 'motd'"
        );
        assert_eq!(Snapshot::age(&v), Duration::from_secs_f64(11.5));
        let done = json!({"state": "succeeded", "build": {"state": {"state": "succeeded"}, "attempt": 1, "maxAttempts": 3}});
        assert_eq!(
            Snapshot::from_view(&done, Some("x".into())).describe(),
            "succeeded"
        );
    }
}
