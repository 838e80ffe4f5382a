//! `kiln preflight` against the simulated ARM: every permission kiln and the
//! Image Builder identities need, and the `az` command for each one missing.

use serde_json::json;

use kiln::sim::server::{Sim, SimOptions};

use super::harness::{bounded, repo};

fn preflight(env: &[(String, String)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("preflight")
        .current_dir(repo())
        .envs(env.iter().cloned())
        .env("KILN_EVENTS_KEY", "k")
        .env("KILN_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn preflight_passes_when_everything_is_granted_and_names_the_fix_for_a_gap() {
    bounded(async {
        let sim = Sim::start(SimOptions::new(60)).await.unwrap();
        let env = sim.kiln_env();
        let (ok, text) = tokio::task::spawn_blocking({
            let env = env.clone();
            move || preflight(&env)
        })
        .await
        .unwrap();
        assert!(ok, "{text}");
        assert!(text.contains("0 missing"), "{text}");

        // The marketplace read kiln's floating `latest` sources need, taken away.
        let action =
            "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read";
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/arm/faults", sim.url()))
            .json(&json!({ "kind": "denyAction", "action": action }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let (ok, text) = tokio::task::spawn_blocking(move || preflight(&env))
            .await
            .unwrap();
        assert!(!ok, "a missing permission fails preflight: {text}");
        let line = text
            .lines()
            .find(|l| l.contains("MISSING") && l.contains(action))
            .unwrap_or_else(|| panic!("the gap is named: {text}"));
        assert!(text.contains("az role assignment create"), "{line}\n{text}");
    })
    .await;
}
