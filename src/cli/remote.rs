//! The commands that ask a running factory through its HTTP API: request,
//! list, show and cancel builds; dead letters; retention. Every listing
//! takes `--json` (the API's own JSON, pretty-printed).

use std::time::Duration;

use serde_json::{json, Value};

use super::args::ApiOpt;
use super::exit::Exit;
use super::watch;

/// Prints `v` as pretty JSON.
fn print_json(v: &Value) -> anyhow::Result<Exit> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(Exit::Ok)
}

pub async fn build(
    api: &ApiOpt,
    pipeline: &str,
    wait: bool,
    key: Option<String>,
    reason: Option<String>,
    timeout: u64,
) -> anyhow::Result<Exit> {
    let client = api.client()?;
    let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let body = json!({
        "pipeline": pipeline,
        "reason": reason.unwrap_or_else(|| "requested from the CLI".into()),
        "requestedBy": user,
        "idempotencyKey": key,
    });
    let (status, v) = client.post("/api/builds", &body).await?;
    let Some(id) = v["build"].as_str().map(str::to_string) else {
        anyhow::bail!(
            "request queued (key {}) but not admitted yet (HTTP {status}); see `kiln builds`",
            v["requestKey"]
        );
    };
    println!("{id}");
    if !wait {
        return Ok(Exit::Ok);
    }
    watch::build(&client, &id, Duration::from_secs(timeout)).await
}

pub async fn cancel(api: &ApiOpt, id: &str) -> anyhow::Result<Exit> {
    let (_, body) = api
        .client()?
        .post(&format!("/api/builds/{id}/cancel"), &json!({}))
        .await?;
    println!("{id}: {}", body["state"].as_str().unwrap_or("canceling"));
    Ok(Exit::Ok)
}

pub async fn dead_letters(api: &ApiOpt, json: bool) -> anyhow::Result<Exit> {
    let v = api.client()?.get("/api/deadletters").await?;
    if json {
        return print_json(&v);
    }
    for d in v.as_array().into_iter().flatten() {
        println!(
            "{}  {}  {}  {}",
            d["deadAt"].as_str().unwrap_or(""),
            d["queue"].as_str().unwrap_or(""),
            d["messageId"].as_str().unwrap_or(""),
            d["reason"].as_str().unwrap_or("")
        );
    }
    Ok(Exit::Ok)
}

pub async fn retention_plan(api: &ApiOpt, json: bool) -> anyhow::Result<Exit> {
    let v = api.client()?.get("/api/retention/plan").await?;
    print_plan(&v, json)?;
    Ok(Exit::Ok)
}

pub async fn retention_apply(api: &ApiOpt) -> anyhow::Result<Exit> {
    let (_, v) = api
        .client()?
        .post("/api/retention/apply", &json!({}))
        .await?;
    print_json(&v)
}

pub async fn retention_audit(api: &ApiOpt, json: bool) -> anyhow::Result<Exit> {
    let v = api.client()?.get("/api/retention/audit").await?;
    if json {
        return print_json(&v);
    }
    for a in v.as_array().into_iter().flatten() {
        println!(
            "{}  {:<9} {:<8} {}/versions/{}  {}",
            a["at"].as_str().unwrap_or(""),
            a["action"].as_str().unwrap_or(""),
            a["status"].as_str().unwrap_or(""),
            a["definition"].as_str().unwrap_or(""),
            a["version"].as_str().unwrap_or(""),
            a["reason"].as_str().unwrap_or("")
        );
    }
    Ok(Exit::Ok)
}

pub async fn builds(api: &ApiOpt, json: bool, pipeline: Option<String>) -> anyhow::Result<Exit> {
    let path = match pipeline {
        Some(p) => format!("/api/builds?pipeline={p}"),
        None => "/api/builds".into(),
    };
    let v = api.client()?.get(&path).await?;
    if json {
        return print_json(&v);
    }
    println!(
        "{:<24} {:<24} {:<12} {:<10} {:>7}  REASON",
        "ID", "PIPELINE", "STATE", "VERSION", "ATTEMPT"
    );
    for b in v.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<24} {:<12} {:<10} {:>7}  {}",
            b["id"].as_str().unwrap_or(""),
            b["pipeline"].as_str().unwrap_or(""),
            b["state"]["state"].as_str().unwrap_or(""),
            b["version"].as_str().unwrap_or(""),
            b["attempt"].as_u64().unwrap_or(0),
            b["reason"].as_str().unwrap_or("")
        );
    }
    Ok(Exit::Ok)
}

pub async fn show(api: &ApiOpt, id: &str, json: bool) -> anyhow::Result<Exit> {
    let v = api.client()?.get(&format!("/api/builds/{id}")).await?;
    if json {
        return print_json(&v);
    }
    let b = &v["build"];
    println!("build     {}", b["id"].as_str().unwrap_or(""));
    println!("pipeline  {}", b["pipeline"].as_str().unwrap_or(""));
    println!("state     {}", v["state"].as_str().unwrap_or(""));
    println!("version   {}", v["version"].as_str().unwrap_or(""));
    println!("attempt   {}/{}", b["attempt"], b["maxAttempts"]);
    println!(
        "trigger   {}  ({})",
        b["trigger"]["kind"].as_str().unwrap_or(""),
        b["reason"].as_str().unwrap_or("")
    );
    if let Some(m) = b["state"]["message"].as_str() {
        println!(
            "failure   {}: {m}",
            b["state"]["category"].as_str().unwrap_or("")
        );
    }
    println!("timeline:");
    for h in v["timeline"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:>11} → {:<11} {}",
            h["at"].as_str().unwrap_or(""),
            h["from"].as_str().unwrap_or("-"),
            h["to"].as_str().unwrap_or(""),
            h["cause"].as_str().unwrap_or("")
        );
    }
    Ok(Exit::Ok)
}

fn print_plan(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    for plan in v.as_array().into_iter().flatten() {
        println!("{}", plan["definitionId"].as_str().unwrap_or(""));
        if let Some(s) = plan.get("skipped").filter(|s| !s.is_null()) {
            println!("  skipped: {s}");
        }
        for item in plan["items"].as_array().into_iter().flatten() {
            println!(
                "  {:<12} {:<10} {}",
                item["version"].as_str().unwrap_or(""),
                item["action"]["kind"].as_str().unwrap_or("?"),
                item["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
