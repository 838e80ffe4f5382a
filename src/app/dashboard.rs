//! `GET /api/dashboard`: one server-rendered page for the people on call:
//! pipelines (paused or armed, next scheduled build, warnings), recent
//! builds and the gallery. No scripts; it refreshes itself.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::App;
use crate::domain::build::BuildState;
use crate::domain::schedule::Schedule;
use crate::store::port::BuildFilter;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "–".into())
}

fn state_detail(s: &BuildState) -> String {
    match s {
        BuildState::Failed { category, message } => format!("{category}: {message}"),
        BuildState::Canceled { reason } | BuildState::Canceling { reason, .. } => reason.clone(),
        BuildState::Running { phase } => format!("{phase:?}"),
        BuildState::Publishing { replicating: true } => "waiting for replication".into(),
        BuildState::Succeeded { .. }
        | BuildState::Queued
        | BuildState::Submitting { .. }
        | BuildState::Validating
        | BuildState::Publishing { replicating: false } => String::new(),
    }
}

pub async fn render(app: &App) -> anyhow::Result<String> {
    let now = app.clock.now();
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">");
    h.push_str("<title>kiln</title><style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}.failed{color:#b00}.succeeded{color:#070}.paused{color:#b00;font-weight:bold}</style></head><body>");
    let _ = write!(h, "<h1>kiln</h1><p>{}</p>", escape(&when(Some(now))));

    h.push_str("<h2>Pipelines</h2><table><tr><th>pipeline</th><th>source</th><th>automatic triggers</th><th>next scheduled</th><th>warnings</th></tr>");
    for p in app.pipelines.iter() {
        let rt = app.store.runtime(&p.name).await?;
        let next = p
            .kiln
            .triggers
            .schedule
            .as_ref()
            .and_then(|s| Schedule::from_spec(s).ok())
            .and_then(|s| s.next(now, 1).into_iter().next())
            .map(|o| format!("{} (cycle {})", when(Some(o.fires_at)), o.cycle))
            .unwrap_or_else(|| "–".into());
        let triggers = match rt.breaker_open_since {
            Some(since) => format!(
                "<span class=\"paused\">paused since {}</span> ({} failures)",
                escape(&when(Some(since))),
                rt.consecutive_failures
            ),
            None => "armed".into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{triggers}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.name),
            escape(&p.template.properties.source.line()),
            escape(&next),
            escape(&rt.memory.warnings.join("; "))
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Recent builds</h2><table><tr><th>build</th><th>pipeline</th><th>state</th><th>version</th><th>attempt</th><th>trigger</th><th>created</th><th>detail</th></tr>");
    let builds = app
        .store
        .list(&BuildFilter {
            limit: Some(50),
            ..BuildFilter::default()
        })
        .await?;
    for b in &builds {
        let _ = write!(
            h,
            "<tr><td><a href=\"/api/builds/{id}\">{id}</a> <a href=\"/api/builds/{id}/log\">log</a></td><td>{}</td><td class=\"{state}\">{state}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&b.pipeline),
            b.version,
            b.attempt,
            b.max_attempts,
            escape(&b.reason),
            escape(&when(Some(b.created_at))),
            escape(&state_detail(&b.state)),
            id = escape(&b.id),
            state = b.state.name(),
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Gallery</h2><table><tr><th>image definition</th><th>version</th><th>published</th><th>latest?</th><th>end of life</th><th>regions</th></tr>");
    let mut seen = std::collections::BTreeSet::new();
    for p in app.pipelines.iter() {
        for t in p.gallery_targets() {
            let def = t.definition_id();
            if !seen.insert(def.to_ascii_lowercase()) {
                continue;
            }
            let mut versions = match app.gallery.list_versions(&def).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td colspan=\"5\">cannot list: {}</td></tr>",
                        escape(&def),
                        escape(&e.to_string())
                    );
                    continue;
                }
            };
            versions.sort_by_key(|v| std::cmp::Reverse(v.version));
            for v in versions {
                let regions: Vec<String> = v
                    .replication
                    .iter()
                    .map(|r| format!("{} ×{} {}", r.region, r.replica_count, r.state))
                    .collect();
                let _ =
                    write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&t.image),
                    v.version,
                    escape(&when(v.published)),
                    if v.exclude_from_latest { "excluded" } else { "yes" },
                    escape(&when(v.end_of_life)),
                    escape(&regions.join(", "))
                );
            }
        }
    }
    h.push_str("</table></body></html>");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_in_user_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }
}
