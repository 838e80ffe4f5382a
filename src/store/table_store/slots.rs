//! The global cap on Table Storage: one entity per slot in the `slots`
//! partition. The cap spans pipelines, so it cannot be in a pipeline's
//! batch; see the module above for how a claim and its slot fit together.

use chrono::{DateTime, Duration, Utc};

use super::{is_conflict, opt_text, parse_ts, ts, TableStore, RACES, SLOTS};
use crate::domain::build::BuildState;
use crate::store::table::{Entity, Filter, IfMatch};

/// A slot taken by a claim whose build is still queued this long after is
/// taken back: the claimant died between taking the slot and starting.
const SLOT_CLAIM_GRACE: i64 = 120;
/// Seconds between two looks for abandoned slots on one instance.
const RECLAIM_EVERY: i64 = 60;

impl TableStore {
    /// Whether the holder of a slot still needs it: its build runs, or was
    /// just granted the slot and is about to start.
    pub(super) async fn holder_alive(
        &self,
        slot: &Entity,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let (Some(holder), Some(pipeline)) =
            (opt_text(slot, "Holder")?, opt_text(slot, "HolderPipeline")?)
        else {
            return Ok(false);
        };
        let Some(row) = self.read_row(&pipeline, &holder).await? else {
            return Ok(false);
        };
        Ok(match row.build.state {
            BuildState::Queued => {
                let claimed = opt_text(slot, "ClaimedAt")?.map(|s| parse_ts(&s));
                claimed.is_some_and(|at| now - at < Duration::seconds(SLOT_CLAIM_GRACE))
            }
            ref s => !s.is_terminal(),
        })
    }

    /// Slots by index, and how many are held by someone other than `id`.
    pub(super) async fn slots(&self) -> anyhow::Result<Vec<Entity>> {
        Ok(self
            .client
            .query(&self.table, &Filter::eq("PartitionKey", SLOTS), None, None)
            .await?)
    }

    /// Frees the slots whose holders are gone; returns the slots after.
    pub(super) async fn reclaim_slots(
        &self,
        slots: Vec<Entity>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<Entity>> {
        let mut out = Vec::with_capacity(slots.len());
        for mut s in slots {
            if opt_text(&s, "Holder")?.is_some() && !self.holder_alive(&s, now).await? {
                let mut freed = Entity::new(SLOTS, s.row_key.clone());
                freed
                    .set("Holder", "")
                    .set("HolderPipeline", "")
                    .set("ClaimedAt", "");
                let etag = s.etag.clone().map(IfMatch::Etag).unwrap_or(IfMatch::Any);
                match self.client.replace(&self.table, &freed, etag).await {
                    Ok(new) => {
                        tracing::info!(slot = %s.row_key, "took back a slot whose build is gone");
                        freed.etag = Some(new);
                        s = freed;
                    }
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            out.push(s);
        }
        Ok(out)
    }

    /// The lowest free slot under `cap` (the one every concurrent claimant
    /// reaches for first), after taking back abandoned ones if none is free.
    pub(super) async fn free_slot(
        &self,
        id: &str,
        cap: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<(String, Option<String>)>> {
        let mut slots = self.slots().await?;
        for s in &slots {
            if opt_text(s, "Holder")?.as_deref() == Some(id) {
                return Ok(Some((s.row_key.clone(), s.etag.clone())));
            }
        }
        let held = |slots: &[Entity]| -> anyhow::Result<usize> {
            let mut n = 0;
            for s in slots {
                n += usize::from(opt_text(s, "Holder")?.is_some());
            }
            Ok(n)
        };
        if held(&slots)? >= cap as usize {
            // Checking every holder is a read per slot; a full factory is
            // the normal case, an abandoned slot (a crash between a claim
            // and its commit) the rare one, so look at most once a minute.
            let due = {
                let mut last = self.last_reclaim.lock().expect("reclaim clock");
                let due = last.is_none_or(|at| now - at >= Duration::seconds(RECLAIM_EVERY));
                if due {
                    *last = Some(now);
                }
                due
            };
            if !due {
                return Ok(None);
            }
            slots = self.reclaim_slots(slots, now).await?;
            if held(&slots)? >= cap as usize {
                return Ok(None);
            }
        }
        for n in 0..cap {
            let key = format!("slot:{n:05}");
            match slots.iter().find(|s| s.row_key == key) {
                None => return Ok(Some((key, None))),
                Some(s) if opt_text(s, "Holder")?.is_none() => {
                    return Ok(Some((key, s.etag.clone())))
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// Takes a slot of the global cap for `id`; `false` when none is free.
    pub(super) async fn take_slot(
        &self,
        id: &str,
        pipeline: &str,
        cap: u32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        for _ in 0..RACES {
            let Some((key, etag)) = self.free_slot(id, cap, now).await? else {
                return Ok(false);
            };
            let mut slot = Entity::new(SLOTS, key);
            slot.set("Holder", id)
                .set("HolderPipeline", pipeline)
                .set("ClaimedAt", ts(now));
            let written = match etag {
                Some(etag) => {
                    self.client
                        .replace(&self.table, &slot, IfMatch::Etag(etag))
                        .await
                }
                None => self.client.insert(&self.table, &slot).await,
            };
            match written {
                Ok(_) => return Ok(true),
                // Another claimant took it first: look again.
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// Gives back the slot `id` holds, if any (its build ended, or its claim lost).
    pub(super) async fn release_slot(&self, id: &str) {
        let released = async {
            let filter = Filter::eq("PartitionKey", SLOTS).and(Filter::eq("Holder", id));
            for s in self.client.query(&self.table, &filter, None, None).await? {
                let mut freed = Entity::new(SLOTS, s.row_key.clone());
                freed
                    .set("Holder", "")
                    .set("HolderPipeline", "")
                    .set("ClaimedAt", "");
                let etag = s.etag.clone().map(IfMatch::Etag).unwrap_or(IfMatch::Any);
                match self.client.replace(&self.table, &freed, etag).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            anyhow::Ok(())
        };
        // Not fatal: a slot left held is taken back when the slots run out.
        if let Err(e) = released.await {
            tracing::warn!(build = id, error = %e, "slot not released; it is taken back later");
        }
    }
}
