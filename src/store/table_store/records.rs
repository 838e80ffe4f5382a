//! The cleanup queue, kept logs, the outbox, the audit, dead letters,
//! timers and leases on Table Storage.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    int, is_conflict, long_text, new_seq, newest_first, opt_text, parse_ts, ppk, set_long_text,
    text, ts, TableStore, AUDIT, DEAD, EVENTS, LEASES, RACES, TIMERS,
};
use crate::store::port::{
    policy_json, AuditEntry, AuditRecord, AuditStore, CleanupJob, CleanupStore, DeadLetter,
    DeadLetterStore, NewDeadLetter, OutboxItem, OutboxRow, OutboxStore, ReplayMark, Retire,
    TimerStore,
};
use crate::store::table::{Entity, Filter, IfMatch, TableError};

/// Bytes of log per binary property (the service's limit is 64 KiB).
const LOG_PROPERTY: usize = 60 * 1024;
/// Binary properties per chunk row, keeping a row well under 1 MiB.
const LOG_PROPERTIES_PER_ROW: usize = 12;

pub(super) fn outbox_entity(partition: &str, row: &OutboxRow) -> Entity {
    let mut e = Entity::new(partition, format!("o:{}", row.event_id));
    e.set("Kind", "outbox")
        .set("EventId", row.event_id.as_str())
        .set("At", ts(row.at))
        .set("NextAttempt", ts(row.at))
        .set("Attempts", 0i64)
        .set("Delivered", false)
        .set("LastError", "");
    set_long_text(&mut e, "Body", &row.body);
    e
}

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

#[async_trait]
impl OutboxStore for TableStore {
    async fn outbox_add(&self, row: &OutboxRow) -> anyhow::Result<()> {
        match self
            .client
            .insert(&self.table, &outbox_entity(EVENTS, row))
            .await
        {
            // A repeated id is the same event.
            Ok(_) | Err(TableError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        max_attempts: u32,
        limit: usize,
    ) -> anyhow::Result<Vec<OutboxItem>> {
        let filter = Filter::eq("Kind", "outbox")
            .and(Filter::eq("Delivered", false))
            .and(Filter::le("NextAttempt", ts(now)))
            .and(Filter::lt("Attempts", i64::from(max_attempts)));
        let mut rows = self.client.query(&self.table, &filter, None, None).await?;
        rows.sort_by(|a, b| {
            let key = |e: &Entity| e.get_str("At").ok().flatten().map(str::to_string);
            key(a).cmp(&key(b))
        });
        let mut claimed = Vec::new();
        for row in rows.into_iter().take(limit) {
            let Some(etag) = row.etag.clone() else {
                continue;
            };
            let mut e = Entity::new(row.partition_key.clone(), row.row_key.clone());
            e.set("NextAttempt", ts(now + lease));
            match self
                .client
                .merge(&self.table, &e, IfMatch::Etag(etag))
                .await
            {
                // The locator keeps the claim's ETag: the outcome is written
                // only over this claim, not over a later claimant's.
                Ok(claim) => claimed.push(OutboxItem {
                    event_id: text(&row, "EventId")?,
                    locator: format!("{}\n{claim}", row.partition_key),
                    body: long_text(&row, "Body")?,
                    attempts: int(&row, "Attempts")? as u32,
                }),
                // Another deliverer claimed it first.
                Err(e) if is_conflict(&e) => {}
                Err(TableError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(claimed)
    }

    async fn outbox_delivered(&self, item: &OutboxItem, now: DateTime<Utc>) -> anyhow::Result<()> {
        let (pk, claim) = locate(item)?;
        let mut e = Entity::new(pk, format!("o:{}", item.event_id));
        e.set("Delivered", true)
            .set("DeliveredAt", ts(now))
            .set("Attempts", i64::from(item.attempts) + 1);
        settle(self.client.merge(&self.table, &e, claim).await)
    }

    async fn outbox_failed(
        &self,
        item: &OutboxItem,
        next_attempt: DateTime<Utc>,
        error: &str,
    ) -> anyhow::Result<()> {
        let (pk, claim) = locate(item)?;
        let mut e = Entity::new(pk, format!("o:{}", item.event_id));
        e.set("NextAttempt", ts(next_attempt))
            .set("Attempts", i64::from(item.attempts) + 1)
            .set("LastError", error);
        settle(self.client.merge(&self.table, &e, claim).await)
    }
}

/// The partition and the claim's ETag an outbox item was claimed with.
fn locate(item: &OutboxItem) -> anyhow::Result<(String, IfMatch)> {
    let (pk, etag) = item.locator.split_once('\n').ok_or_else(|| {
        anyhow::anyhow!(
            "outbox event {}: not claimed from this store",
            item.event_id
        )
    })?;
    Ok((pk.to_string(), IfMatch::Etag(etag.to_string())))
}

/// An outcome written over a claim that expired and was taken by another
/// deliverer is dropped: that deliverer's attempt counts instead.
fn settle(written: Result<String, TableError>) -> anyhow::Result<()> {
    match written {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => {
            tracing::info!(error = %e, "outbox claim expired before its outcome was written");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl AuditStore for TableStore {
    async fn audit_insert(&self, r: &AuditRecord<'_>) -> anyhow::Result<i64> {
        for _ in 0..RACES {
            let seq = new_seq(Utc::now());
            let mut e = Entity::new(AUDIT, newest_first(seq));
            e.set("Seq", seq)
                .set("RunId", r.run_id)
                .set("At", r.at)
                .set("Definition", r.definition)
                .set("Version", r.version)
                .set("Action", r.action)
                .set("Status", r.status)
                .set("Reason", r.reason)
                .set("Policy", r.policy);
            match self.client.insert(&self.table, &e).await {
                Ok(_) => return Ok(seq),
                Err(TableError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("no free audit sequence number after {RACES} tries")
    }

    async fn audit_finish(
        &self,
        seq: i64,
        status: &str,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let rk = newest_first(seq);
        let row = self
            .client
            .get(&self.table, AUDIT, &rk)
            .await?
            .ok_or_else(|| anyhow::anyhow!("retention audit row {seq} is missing"))?;
        let mut e = Entity::new(AUDIT, rk);
        e.set("Status", status);
        if let Some(error) = error {
            e.set(
                "Reason",
                format!("{} — failed: {error}", text(&row, "Reason")?),
            );
        }
        let etag = row.etag.clone().map(IfMatch::Etag).unwrap_or(IfMatch::Any);
        Ok(self.client.merge(&self.table, &e, etag).await.map(|_| ())?)
    }

    async fn audit(&self, limit: usize) -> anyhow::Result<Vec<AuditEntry>> {
        let rows = newest(self, AUDIT, limit).await?;
        rows.iter()
            .map(|e| {
                Ok(AuditEntry {
                    seq: int(e, "Seq")?,
                    run_id: text(e, "RunId")?,
                    at: text(e, "At")?,
                    definition: text(e, "Definition")?,
                    version: text(e, "Version")?,
                    action: text(e, "Action")?,
                    status: text(e, "Status")?,
                    reason: text(e, "Reason")?,
                    policy: policy_json(text(e, "Policy")?),
                })
            })
            .collect()
    }
}

/// The first `limit` rows of a newest-first partition.
async fn newest(s: &TableStore, partition: &str, limit: usize) -> anyhow::Result<Vec<Entity>> {
    let filter = Filter::eq("PartitionKey", partition);
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let top = u32::try_from(limit - out.len()).unwrap_or(1000).min(1000);
        let page = s
            .client
            .query_page(&s.table, &filter, None, Some(top), from.as_ref())
            .await?;
        out.extend(page.entities);
        match page.continuation {
            Some(c) if out.len() < limit => from = Some(c),
            Some(_) | None => break,
        }
    }
    out.truncate(limit);
    Ok(out)
}

fn dead_letter_entity(e: &Entity) -> anyhow::Result<DeadLetter> {
    Ok(DeadLetter {
        seq: int(e, "Seq")?,
        queue: text(e, "Queue")?,
        message_id: text(e, "MessageId")?,
        body: long_text(e, "Body")?,
        reason: text(e, "Reason")?,
        delivery_count: int(e, "DeliveryCount")? as u32,
        dead_at: parse_ts(&text(e, "DeadAt")?),
        replayed_at: opt_text(e, "ReplayedAt")?.map(|s| parse_ts(&s)),
    })
}

#[async_trait]
impl DeadLetterStore for TableStore {
    async fn record_dead_letter(&self, d: &NewDeadLetter<'_>) -> anyhow::Result<()> {
        for _ in 0..RACES {
            let seq = new_seq(d.now);
            let mut e = Entity::new(DEAD, newest_first(seq));
            e.set("Seq", seq)
                .set("Queue", d.queue)
                .set("MessageId", d.message_id)
                .set("Reason", d.reason)
                .set("DeliveryCount", i64::from(d.delivery_count))
                .set("DeadAt", ts(d.now));
            set_long_text(&mut e, "Body", d.body);
            match self.client.insert(&self.table, &e).await {
                Ok(_) => return Ok(()),
                Err(TableError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("no free dead-letter sequence number after {RACES} tries")
    }

    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        let rows = newest(self, DEAD, limit).await?;
        rows.iter().map(dead_letter_entity).collect()
    }

    async fn mark_replayed(&self, seq: i64, now: DateTime<Utc>) -> anyhow::Result<ReplayMark> {
        let Some(mut e) = self
            .client
            .get(&self.table, DEAD, &newest_first(seq))
            .await?
        else {
            return Ok(ReplayMark::Missing);
        };
        let mut d = dead_letter_entity(&e)?;
        if let Some(at) = d.replayed_at {
            return Ok(ReplayMark::Already(at));
        }
        let etag = e.etag.clone().map(IfMatch::Etag).unwrap_or(IfMatch::Any);
        e.set("ReplayedAt", ts(now));
        match self.client.replace(&self.table, &e, etag).await {
            Ok(_) => {
                d.replayed_at = Some(now);
                Ok(ReplayMark::Marked(d))
            }
            // Another replay marked it between our read and write.
            Err(err) if is_conflict(&err) => {
                let at = match self
                    .client
                    .get(&self.table, DEAD, &newest_first(seq))
                    .await?
                {
                    Some(e) => dead_letter_entity(&e)?.replayed_at.unwrap_or(now),
                    None => now,
                };
                Ok(ReplayMark::Already(at))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn unmark_replayed(&self, seq: i64) -> anyhow::Result<()> {
        if let Some(mut e) = self
            .client
            .get(&self.table, DEAD, &newest_first(seq))
            .await?
        {
            e.set("ReplayedAt", "");
            self.client.replace(&self.table, &e, IfMatch::Any).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl TimerStore for TableStore {
    async fn last_fire(&self, function: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(
            match self.client.get(&self.table, TIMERS, function).await? {
                Some(e) => opt_text(&e, "LastFire")?.map(|s| parse_ts(&s)),
                None => None,
            },
        )
    }

    async fn record_fire(&self, function: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
        let mut e = Entity::new(TIMERS, function);
        e.set("LastFire", ts(at));
        Ok(self.client.upsert(&self.table, &e).await.map(|_| ())?)
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> anyhow::Result<bool> {
        let mut lease = Entity::new(LEASES, name);
        lease.set("Holder", holder).set("ExpiresAt", ts(now + ttl));
        let written = match self.client.get(&self.table, LEASES, name).await? {
            None => self.client.insert(&self.table, &lease).await,
            Some(current) => {
                let mine = opt_text(&current, "Holder")?.as_deref() == Some(holder);
                let expired = opt_text(&current, "ExpiresAt")?.is_none_or(|at| at <= ts(now));
                if !mine && !expired {
                    return Ok(false);
                }
                let etag = current
                    .etag
                    .clone()
                    .map(IfMatch::Etag)
                    .unwrap_or(IfMatch::Any);
                self.client.replace(&self.table, &lease, etag).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Someone else took or renewed it between our read and write.
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
