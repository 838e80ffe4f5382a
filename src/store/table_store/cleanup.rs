//! The template cleanup queue and the kept customization logs on Table
//! Storage: a job row per template in its pipeline's partition, and a log
//! as chunk rows (one generation per copy) behind a head row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{int, is_conflict, opt_text, ppk, text, ts, TableStore, RACES};
use crate::store::port::{CleanupJob, CleanupStore, Retire};
use crate::store::table::{Entity, Filter, IfMatch, TableError};

/// Bytes of log per binary property (the service's limit is 64 KiB).
const LOG_PROPERTY: usize = 60 * 1024;
/// Binary properties per chunk row, keeping a row well under 1 MiB.
const LOG_PROPERTIES_PER_ROW: usize = 12;

pub(super) fn cleanup_entity(r: &Retire, now: DateTime<Utc>) -> Entity {
    let mut e = Entity::new(ppk(&r.pipeline), format!("c:{}", r.template));
    e.set("Kind", "cleanup")
        .set("Template", r.template.as_str())
        .set("BuildId", r.build_id.as_str())
        .set("Pipeline", r.pipeline.as_str())
        .set("Keep", r.keep)
        .set("Attempts", 0i64)
        .set("NextAt", ts(now))
        .set("LastError", "")
        .set("CreatedAt", ts(now));
    e
}

fn job(e: &Entity) -> anyhow::Result<CleanupJob> {
    Ok(CleanupJob {
        template: text(e, "Template")?,
        build_id: text(e, "BuildId")?,
        pipeline: text(e, "Pipeline")?,
        keep: e.get_bool("Keep")?.unwrap_or(false),
        attempts: int(e, "Attempts")? as u32,
        last_error: opt_text(e, "LastError")?,
    })
}

fn log_partition(template: &str) -> String {
    format!("log:{template}")
}

impl TableStore {
    /// Deletes the chunk rows of one copy of a log (failures are logged:
    /// an orphaned chunk costs space, not correctness).
    async fn delete_chunks(&self, pk: &str, generation: &str, rows: i64) {
        for i in 0..rows {
            let rk = format!("g{generation}:{i:05}");
            match self.client.delete(&self.table, pk, &rk, IfMatch::Any).await {
                Ok(()) | Err(TableError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(partition = pk, error = %e, "a log chunk was not deleted"),
            }
        }
    }

    async fn cleanup_query(&self, filter: Filter) -> anyhow::Result<Vec<(String, CleanupJob)>> {
        let rows = self
            .client
            .query(
                &self.table,
                &Filter::eq("Kind", "cleanup").and(filter),
                None,
                None,
            )
            .await?;
        rows.iter()
            .map(|e| Ok((text(e, "NextAt")?, job(e)?)))
            .collect()
    }
}

#[async_trait]
impl CleanupStore for TableStore {
    async fn cleanup_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> anyhow::Result<Vec<CleanupJob>> {
        let mut jobs = self.cleanup_query(Filter::le("NextAt", ts(now))).await?;
        jobs.sort_by(|a, b| (&a.0, &a.1.template).cmp(&(&b.0, &b.1.template)));
        Ok(jobs.into_iter().take(limit).map(|(_, j)| j).collect())
    }

    async fn cleanup_of(&self, build_id: &str) -> anyhow::Result<Vec<CleanupJob>> {
        let mut jobs: Vec<CleanupJob> = self
            .cleanup_query(Filter::eq("BuildId", build_id))
            .await?
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        jobs.sort_by(|a, b| a.template.cmp(&b.template));
        Ok(jobs)
    }

    async fn cleanup_later(
        &self,
        job: &CleanupJob,
        next_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let (pk, rk) = (ppk(&job.pipeline), format!("c:{}", job.template));
        for _ in 0..RACES {
            let Some(row) = self.client.get(&self.table, &pk, &rk).await? else {
                return Ok(());
            };
            let mut e = Entity::new(pk.clone(), rk.clone());
            e.set("NextAt", ts(next_at));
            if let Some(error) = error {
                // Only failures count (and keep their reason).
                e.set("Attempts", int(&row, "Attempts")? + 1)
                    .set("LastError", error);
            }
            let etag = row.etag.clone().map(IfMatch::Etag).unwrap_or(IfMatch::Any);
            match self.client.merge(&self.table, &e, etag).await {
                Ok(_) => return Ok(()),
                Err(TableError::NotFound { .. }) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!(
            "cleanup of {}: the row kept changing; try again",
            job.template
        )
    }

    async fn cleanup_done(&self, job: &CleanupJob) -> anyhow::Result<()> {
        let rk = format!("c:{}", job.template);
        match self
            .client
            .delete(&self.table, &ppk(&job.pipeline), &rk, IfMatch::Any)
            .await
        {
            Ok(()) | Err(TableError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The log goes in chunk rows of a new generation; the head row then
    /// points at it (one conditional write, so a reader sees the old copy
    /// or the new, never a mix), and the old generation is deleted.
    async fn put_log(
        &self,
        template: &str,
        build_id: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let pk = log_partition(template);
        let head = self.client.get(&self.table, &pk, "head").await?;
        let old = match &head {
            Some(h) => Some((text(h, "Generation")?, int(h, "Rows")?)),
            None => None,
        };
        // A generation of its own per copy: two instances keeping the same
        // log at once write apart, and the head names one complete copy.
        let generation = uuid::Uuid::new_v4().simple().to_string();
        let per_row = LOG_PROPERTY * LOG_PROPERTIES_PER_ROW;
        let mut rows = 0i64;
        for (n, chunk) in body.chunks(per_row).enumerate() {
            let mut e = Entity::new(pk.clone(), format!("g{generation}:{n:05}"));
            for (i, part) in chunk.chunks(LOG_PROPERTY).enumerate() {
                e.set(&format!("Data{i:02}"), part.to_vec());
            }
            e.set("Parts", chunk.chunks(LOG_PROPERTY).count() as i64);
            self.client.upsert(&self.table, &e).await?;
            rows += 1;
        }
        let mut new_head = Entity::new(pk.clone(), "head");
        new_head
            .set("Generation", generation.as_str())
            .set("Rows", rows)
            .set("Length", body.len() as i64)
            .set("BuildId", build_id)
            .set("FetchedAt", ts(now));
        let switched = match head.as_ref().and_then(|h| h.etag.clone()) {
            Some(etag) => {
                self.client
                    .replace(&self.table, &new_head, IfMatch::Etag(etag))
                    .await
            }
            None => self.client.insert(&self.table, &new_head).await,
        };
        if let Err(e) = switched {
            // Another copy won: drop ours, keep theirs.
            self.delete_chunks(&pk, &generation, rows).await;
            anyhow::bail!("log of {template}: another copy was kept at the same time ({e}); the later copy is retried");
        }
        if let Some((g, n)) = old {
            self.delete_chunks(&pk, &g, n).await;
        }
        Ok(())
    }

    async fn log(&self, template: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let pk = log_partition(template);
        let Some(head) = self.client.get(&self.table, &pk, "head").await? else {
            return Ok(None);
        };
        let (generation, rows, length) = (
            text(&head, "Generation")?,
            int(&head, "Rows")?,
            int(&head, "Length")? as usize,
        );
        let mut out = Vec::with_capacity(length);
        for n in 0..rows {
            let rk = format!("g{generation}:{n:05}");
            let row = self
                .client
                .get(&self.table, &pk, &rk)
                .await?
                .ok_or_else(|| anyhow::anyhow!("log of {template}: chunk {rk} is missing"))?;
            for i in 0..int(&row, "Parts")? {
                let part = row.get_binary(&format!("Data{i:02}"))?.ok_or_else(|| {
                    anyhow::anyhow!("log of {template}: chunk {rk} part {i} is missing")
                })?;
                out.extend_from_slice(&part);
            }
        }
        anyhow::ensure!(
            out.len() == length,
            "log of {template}: {} bytes read, {length} kept",
            out.len()
        );
        Ok(Some(out))
    }
}
