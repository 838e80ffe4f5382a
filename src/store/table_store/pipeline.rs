//! A pipeline's state row on Table Storage: breaker and watcher memory,
//! each change a conditional write over the row as read.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::builds::{breaker_after, touch_state};
use super::{int, is_conflict, long_text, opt_text, parse_ts, set_long_text, TableStore, RACES};
use crate::store::port::{BreakerChange, Outcome, PipelineMemory, PipelineRuntime, PipelineStore};
use crate::store::table::{BatchOp, Entity};

#[async_trait]
impl PipelineStore for TableStore {
    async fn runtime(&self, pipeline: &str) -> anyhow::Result<PipelineRuntime> {
        let Some(s) = self.state_row(pipeline).await? else {
            return Ok(PipelineRuntime::default());
        };
        Ok(PipelineRuntime {
            consecutive_failures: int(&s, "Failures")? as u32,
            breaker_open_since: opt_text(&s, "BreakerOpenSince")?.map(|t| parse_ts(&t)),
            memory: serde_json::from_str(&long_text(&s, "Memory")?).unwrap_or_default(),
        })
    }

    async fn modify_memory(
        &self,
        pipeline: &str,
        f: &mut (dyn for<'m> FnMut(&'m mut PipelineMemory) + Send),
    ) -> anyhow::Result<()> {
        for _ in 0..RACES {
            let state = self.state_row(pipeline).await?;
            let mut mem: PipelineMemory = match &state {
                Some(s) => serde_json::from_str(&long_text(s, "Memory")?).unwrap_or_default(),
                None => PipelineMemory::default(),
            };
            f(&mut mem);
            let mut props = Entity::new("", "");
            set_long_text(&mut props, "Memory", &serde_json::to_string(&mem)?);
            let op = touch_state(pipeline, &state, Utc::now(), props);
            let written = match op {
                BatchOp::Merge { entity, if_match } => {
                    self.client.merge(&self.table, &entity, if_match).await
                }
                BatchOp::Insert(entity) => self.client.insert(&self.table, &entity).await,
                BatchOp::Replace { .. } | BatchOp::Upsert(_) | BatchOp::Delete { .. } => {
                    unreachable!("touch_state merges or inserts")
                }
            };
            match written {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("pipeline {pipeline}: its memory kept changing under the update; try again")
    }

    async fn record_outcome(
        &self,
        pipeline: &str,
        o: Outcome,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<BreakerChange>> {
        for _ in 0..RACES {
            let state = self.state_row(pipeline).await?;
            let (props, change) = breaker_after(&state, o, now)?;
            let written = match touch_state(pipeline, &state, now, props) {
                BatchOp::Merge { entity, if_match } => {
                    self.client.merge(&self.table, &entity, if_match).await
                }
                BatchOp::Insert(entity) => self.client.insert(&self.table, &entity).await,
                BatchOp::Replace { .. } | BatchOp::Upsert(_) | BatchOp::Delete { .. } => {
                    unreachable!("touch_state merges or inserts")
                }
            };
            match written {
                Ok(_) => return Ok(change),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("pipeline {pipeline}: the breaker count kept changing; try again")
    }
}
