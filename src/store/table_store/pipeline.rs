//! A pipeline's state row on Table Storage: breaker and watcher memory,
//! each change a conditional write over the row as read.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::builds::{breaker_after, lost, touch_state};
use super::{int, long_text, opt_text, parse_ts, ppk, set_long_text, TableStore, RACES};
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
            match self.write_state(pipeline, op).await? {
                true => return Ok(()),
                false => continue,
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
            let op = touch_state(pipeline, &state, now, props);
            match self.write_state(pipeline, op).await? {
                true => return Ok(change),
                false => continue,
            }
        }
        anyhow::bail!("pipeline {pipeline}: the breaker count kept changing; try again")
    }
}

impl TableStore {
    /// Writes the state row as `touch_state` decided (a merge over the row
    /// as read, or the first insert); `false` when another writer changed
    /// it first. One operation, sent as a batch of one so that both forms
    /// fail the same way.
    async fn write_state(&self, pipeline: &str, op: BatchOp) -> anyhow::Result<bool> {
        match self.client.batch(&self.table, &ppk(pipeline), &[op]).await {
            Ok(_) => Ok(true),
            Err(e) if lost(&e).is_some() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
