//! Placeholder until the retention branch lands.
pub async fn plan(_app: &super::App) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("retention not yet merged")
}
pub async fn run(_app: &super::App, _dry: bool) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("retention not yet merged")
}
