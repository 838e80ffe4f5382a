//! The webhook outbox, the retention audit, dead letters, timers and
//! leases on Table Storage.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    int, is_conflict, long_text, new_seq, newest_first, opt_text, parse_ts, set_long_text, text,
    ts, TableStore, AUDIT, DEAD, EVENTS, LEASES, RACES, TIMERS,
};
use crate::store::port::{
    policy_json, AuditEntry, AuditRecord, AuditStore, DeadLetter, DeadLetterStore, NewDeadLetter,
    OutboxItem, OutboxRow, OutboxStore, ReplayMark, TimerStore,
};
use crate::store::table::{Entity, Filter, IfMatch, TableError};

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
