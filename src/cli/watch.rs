//! Following a build until it ends: `kiln build --wait` and `kiln logs
//! --follow`. Both poll the API every half second, show progress through
//! [`super::progress`], and end with the build's [`Exit`] code.

use std::time::Duration;

use tokio::time::Instant;

use super::client::ApiClient;
use super::exit::Exit;
use super::progress::{current_step, Progress, Snapshot};

const POLL: Duration = Duration::from_millis(500);

/// The exit code for a build in state `state`, once it has ended.
pub fn ended(state: &str) -> Option<Exit> {
    match state {
        "succeeded" => Some(Exit::Ok),
        "failed" => Some(Exit::BuildFailed),
        "canceled" => Some(Exit::Canceled),
        _ => None,
    }
}

/// Where a build's log has been read up to, and the step it was last in.
#[derive(Default)]
struct LogCursor {
    offset: u64,
    /// The unfinished last line of the previous read (a step header may be cut).
    tail: String,
    step: Option<String>,
}

impl LogCursor {
    /// Reads what was added to the log; returns it (empty when there is
    /// none yet) and the build state the server sent along.
    async fn read(
        &mut self,
        client: &ApiClient,
        id: &str,
        attempt: Option<u32>,
    ) -> anyhow::Result<(String, Option<String>)> {
        let mut path = format!("/api/builds/{id}/log?offset={}", self.offset);
        if let Some(a) = attempt {
            path.push_str(&format!("&attempt={a}"));
        }
        let (text, headers) = client.get_text(&path).await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        self.offset = header("x-kiln-log-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.offset + text.len() as u64);
        let seen = format!("{}{text}", self.tail);
        if let Some(step) = current_step(&seen) {
            self.step = Some(step);
        }
        self.tail = match seen.rfind('\n') {
            Some(i) => seen[i + 1..].to_string(),
            None => seen,
        };
        Ok((text, header("x-kiln-build-state")))
    }
}

/// `kiln build --wait`: follows `id` until it ends or `timeout` passes.
pub async fn build(client: &ApiClient, id: &str, timeout: Duration) -> anyhow::Result<Exit> {
    let deadline = Instant::now() + timeout;
    let first = client.get(&format!("/api/builds/{id}")).await?;
    let mut progress = Progress::new(id, Snapshot::age(&first));
    let mut log = LogCursor::default();
    let mut view = first;
    loop {
        let state = view["state"].as_str().unwrap_or("").to_string();
        // Only a running build has a log worth reading for its step; before
        // the run starts the provider has none (an error here is not one).
        if state == "running" {
            let _ = log.read(client, id, None).await;
        }
        progress.update(&Snapshot::from_view(&view, log.step.clone()));
        if let Some(exit) = ended(&state) {
            progress.finish();
            report_end(id, &view);
            return Ok(exit);
        }
        if Instant::now() >= deadline {
            progress.finish();
            eprintln!(
                "{id}: still {state} after {} s; it goes on (`kiln show {id}`)",
                timeout.as_secs()
            );
            return Ok(Exit::Timeout);
        }
        tokio::time::sleep(POLL).await;
        view = client.get(&format!("/api/builds/{id}")).await?;
    }
}

/// The closing line: the version published, or why it failed or was canceled.
fn report_end(id: &str, v: &serde_json::Value) {
    let state = v["state"].as_str().unwrap_or("");
    let detail = &v["build"]["state"];
    match state {
        "succeeded" => eprintln!(
            "{id}: succeeded: published version {}",
            v["version"].as_str().unwrap_or("?")
        ),
        _ => eprintln!(
            "{id}: {state}: {} {}",
            detail["category"].as_str().unwrap_or(""),
            detail["message"]
                .as_str()
                .or(detail["reason"].as_str())
                .unwrap_or("")
        ),
    }
}

/// `kiln logs`: prints the log of an attempt; with `follow`, keeps printing
/// until the build ends and exits with how it ended.
pub async fn logs(
    client: &ApiClient,
    id: &str,
    attempt: Option<u32>,
    follow: bool,
) -> anyhow::Result<Exit> {
    let mut log = LogCursor::default();
    if !follow {
        let (text, _) = log.read(client, id, attempt).await?;
        print!("{text}");
        return Ok(Exit::Ok);
    }
    let first = client.get(&format!("/api/builds/{id}")).await?;
    let mut progress = Progress::new(id, Snapshot::age(&first));
    let mut view = first;
    loop {
        let state = view["state"].as_str().unwrap_or("").to_string();
        match log.read(client, id, attempt).await {
            Ok((text, _)) if !text.is_empty() => progress.suspend(|| print!("{text}")),
            Ok(_) => {}
            // No log before the run starts: wait for it while the build lives.
            Err(e) if ended(&state).is_some() => {
                progress.finish();
                return Err(e);
            }
            Err(_) => {}
        }
        progress.update(&Snapshot::from_view(&view, log.step.clone()));
        if let Some(exit) = ended(&state) {
            progress.finish();
            report_end(id, &view);
            return Ok(exit);
        }
        tokio::time::sleep(POLL).await;
        view = client.get(&format!("/api/builds/{id}")).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_final_state_has_its_own_code_and_others_have_none() {
        assert_eq!(ended("succeeded"), Some(Exit::Ok));
        assert_eq!(ended("failed"), Some(Exit::BuildFailed));
        assert_eq!(ended("canceled"), Some(Exit::Canceled));
        for s in [
            "queued",
            "submitting",
            "running",
            "validating",
            "publishing",
            "canceling",
        ] {
            assert_eq!(ended(s), None, "{s}");
        }
    }
}
