//! The commands that work on files alone, with no factory running:
//! `validate`, `render`, `schedule next`, `package`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::exit::Exit;
use super::{local_cmds, package};

fn pipelines_dir() -> PathBuf {
    PathBuf::from(std::env::var("KILN_PIPELINES_DIR").unwrap_or_else(|_| "pipelines".into()))
}

fn load_pipeline(name_or_file: &str) -> anyhow::Result<crate::domain::pipeline::Pipeline> {
    let path = if name_or_file.ends_with(".json") {
        PathBuf::from(name_or_file)
    } else {
        pipelines_dir().join(format!("{name_or_file}.json"))
    };
    crate::app::pipelines::load_file(&path, None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Prints every error and warning of each file as `file: json.path: …`;
/// fails (exit 1) only on errors.
pub fn validate(files: &[PathBuf]) -> anyhow::Result<Exit> {
    use crate::app::lint;
    use crate::domain::finding::Finding;

    let checker = local_cmds::checker();
    let shellcheck = lint::Shellcheck::default();
    let shellcheck = if shellcheck.available() {
        Some(shellcheck)
    } else {
        eprintln!("{}", lint::skipped_warning());
        None
    };
    let mut bad = 0;
    for f in files {
        let check = crate::app::pipelines::check_file(f, checker.as_deref());
        let mut findings: Vec<Finding> = check.errors.iter().cloned().map(Finding::from).collect();
        if let (Some(sc), Some(t)) = (&shellcheck, check.template()) {
            findings.extend(sc.lint(t));
        }
        for finding in &findings {
            eprintln!("{}: {finding}", f.display());
        }
        let errors = findings.iter().filter(|x| x.is_error()).count();
        match &check.pipeline {
            Some(p) if errors == 0 => println!("{}: ok ({})", f.display(), p.name),
            Some(_) | None => bad += 1,
        }
    }
    Ok(Exit::ok_if(bad == 0))
}

pub fn render(pipeline: &str, version: &str) -> anyhow::Result<Exit> {
    let p = load_pipeline(pipeline)?;
    let version = version
        .parse()
        .map_err(|e| anyhow::anyhow!("--version: {e}"))?;
    let now = chrono::Utc::now();
    let b = crate::domain::build::Build {
        id: "preview".into(),
        pipeline: p.name.clone(),
        trigger: crate::domain::build::Trigger::Manual,
        reason: "render".into(),
        requested_by: "cli".into(),
        idempotency_key: "render".into(),
        version,
        source_version: None,
        template_hash: crate::app::render::template_hash(&p.template_json),
        attempt: 1,
        max_attempts: p.kiln.build.max_attempts,
        timeout_minutes: p.build_timeout_minutes(),
        state: crate::domain::build::BuildState::Queued,
        created_at: now,
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::app::render::render(&p, &b))?
    );
    Ok(Exit::Ok)
}

pub fn schedule_next(pipeline: &str, count: usize, json: bool) -> anyhow::Result<Exit> {
    let p = load_pipeline(pipeline)?;
    let spec = p
        .kiln
        .triggers
        .schedule
        .as_ref()
        .with_context(|| format!("pipeline {} has no kiln.triggers.schedule", p.name))?;
    let s = crate::domain::schedule::Schedule::from_spec(spec).map_err(anyhow::Error::msg)?;
    let next = s.next(chrono::Utc::now(), count);
    if json {
        println!("{}", serde_json::to_string_pretty(&next)?);
    } else {
        for o in next {
            let note = if o.deferred {
                "  (deferred by blackout)"
            } else {
                ""
            };
            println!("{}  cycle {}{note}", o.fires_at.to_rfc3339(), o.cycle);
        }
    }
    Ok(Exit::Ok)
}

/// Writes the deployment zip and says what is in it.
pub fn package_zip(root: &Path, binary: &Path, out: &Path) -> anyhow::Result<Exit> {
    let entries = package::entries(root, binary)?;
    package::write_zip(&entries, out)?;
    let functions = entries
        .iter()
        .filter(|e| e.path.ends_with("/function.json"))
        .count();
    let pipelines = entries
        .iter()
        .filter(|e| e.path.starts_with("pipelines/"))
        .count();
    println!(
        "{}: {functions} functions, {pipelines} pipelines, {} entries",
        out.display(),
        entries.len()
    );
    Ok(Exit::Ok)
}
