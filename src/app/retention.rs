//! Placeholder until the retention branch lands.
pub fn audit(_db: &crate::store::Db, _limit: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(vec![])
}
