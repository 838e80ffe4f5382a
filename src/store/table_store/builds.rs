//! Builds and admission on Table Storage: reads, transitions as one batch,
//! slot claims, admission. See the module above for the layout; the slots
//! are in `slots.rs`, the pipeline's state row in `pipeline.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    int, is_conflict, key_row, long_text, opt_text, parse_ts, ppk, set_long_text, text, ts,
    TableStore, RACES, STATE_ROW,
};
use crate::domain::build::{Build, BuildState};
use crate::store::port::{
    Admission, Admitted, BreakerChange, BuildFilter, BuildStore, Caps, HistoryEntry, Outcome,
    Transition, Write,
};
use crate::store::table::{BatchOp, Entity, Filter, IfMatch, TableError};

/// A build row, as kept.
pub(super) struct Row {
    pub(super) build: Build,
    revision: i64,
    etag: Option<String>,
    /// Which write put the row there (see [`TableStore::landed`]).
    write_id: Option<String>,
}

pub(super) fn build_entity(
    b: &Build,
    revision: i64,
    now: DateTime<Utc>,
    next_poll: Option<DateTime<Utc>>,
    write_id: &str,
) -> anyhow::Result<Entity> {
    let mut e = Entity::new(ppk(&b.pipeline), format!("b:{}", b.id));
    e.set("Kind", "build")
        .set("WriteId", write_id)
        .set("Id", b.id.as_str())
        .set("State", b.state.name())
        .set("Terminal", b.state.is_terminal())
        .set("RowVersion", revision)
        .set("CreatedAt", ts(b.created_at))
        .set("UpdatedAt", ts(now))
        .set("Version", b.version.to_string());
    if let Some(at) = next_poll {
        e.set("NextPollAt", ts(at));
    }
    set_long_text(&mut e, "Body", &serde_json::to_string(b)?);
    Ok(e)
}

fn parse_row(e: Entity) -> anyhow::Result<Row> {
    let body = long_text(&e, "Body")?;
    let build: Build = serde_json::from_str(&body).map_err(|err| {
        anyhow::anyhow!("row {}/{}: not a build: {err}", e.partition_key, e.row_key)
    })?;
    Ok(Row {
        build,
        revision: int(&e, "RowVersion")?,
        etag: e.etag.clone(),
        write_id: opt_text(&e, "WriteId")?,
    })
}

/// Where in a build's history an entry goes.
#[derive(Clone, Copy)]
pub(super) enum Entry {
    /// The step that brought the build to this revision.
    Step(i64),
    /// A note on the build at this revision (a coalesced request), after its step.
    Note(i64),
}

pub(super) fn history_entity(
    pipeline: &str,
    id: &str,
    at: DateTime<Utc>,
    entry: Entry,
    from: Option<&str>,
    to: &str,
    cause: &str,
) -> Entity {
    // Ordered by revision (which orders causally, whatever the writers'
    // clocks), steps before notes, then time; the random tail keeps two
    // notes apart.
    let (revision, kind) = match entry {
        Entry::Step(r) => (r, '0'),
        Entry::Note(r) => (r, '1'),
    };
    let tail = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut e = Entity::new(
        ppk(pipeline),
        format!("h:{id}:{revision:08}{kind}:{}:{tail}", ts(at)),
    );
    e.set("Kind", "history")
        .set("At", ts(at))
        .set("From", from.unwrap_or(""))
        .set("To", to);
    set_long_text(&mut e, "Cause", cause);
    e
}

/// The write that makes a decision about a pipeline conditional on the
/// pipeline's state as read: a merge over its ETag, or the first insert.
pub(super) fn touch_state(
    pipeline: &str,
    state: &Option<Entity>,
    now: DateTime<Utc>,
    mut extra: Entity,
) -> BatchOp {
    extra.partition_key = ppk(pipeline);
    extra.row_key = STATE_ROW.into();
    extra.set("Touched", ts(now));
    match state.as_ref().and_then(|s| s.etag.clone()) {
        Some(etag) => BatchOp::Merge {
            entity: extra,
            if_match: IfMatch::Etag(etag),
        },
        None => {
            for (name, default) in [
                ("Failures", None),
                ("BreakerOpenSince", Some("")),
                ("Memory", Some("{}")),
            ] {
                if !extra.properties.contains_key(name) {
                    match default {
                        Some(text) => extra.set(name, text),
                        None => extra.set(name, 0i64),
                    };
                }
            }
            BatchOp::Insert(extra)
        }
    }
}

/// The breaker after `o`, as properties to merge, and the change to announce.
pub(super) fn breaker_after(
    state: &Option<Entity>,
    o: Outcome,
    now: DateTime<Utc>,
) -> anyhow::Result<(Entity, Option<BreakerChange>)> {
    let failures = match state {
        Some(s) => int(s, "Failures")? as u32,
        None => 0,
    };
    let open = match state {
        Some(s) => opt_text(s, "BreakerOpenSince")?.is_some(),
        None => false,
    };
    let mut e = Entity::new("", "");
    let change = if o.succeeded {
        e.set("Failures", 0i64).set("BreakerOpenSince", "");
        open.then_some(BreakerChange::Closed)
    } else if o.automatic {
        let failures = failures + 1;
        let opens = !open && failures >= o.threshold;
        e.set("Failures", i64::from(failures));
        if opens {
            e.set("BreakerOpenSince", ts(now));
        }
        opens.then_some(BreakerChange::Opened { failures })
    } else {
        None
    };
    Ok((e, change))
}

/// Where a failed batch failed: on its first operation (the row the
/// decision was about) or on another (a row a concurrent writer changed).
pub(super) enum Lost {
    First,
    Other,
}

/// Only a 409 or 412 is a lost race; a batch refused for its size or a
/// server error is an error, not a reason to decide again.
pub(super) fn lost(e: &TableError) -> Option<Lost> {
    match e {
        TableError::BatchFailed {
            index: 0,
            status: 409 | 412,
            ..
        } => Some(Lost::First),
        TableError::BatchFailed {
            status: 409 | 412, ..
        } => Some(Lost::Other),
        TableError::BatchFailed { .. } => None,
        other if is_conflict(other) => Some(Lost::First),
        _ => None,
    }
}

impl TableStore {
    /// A listing names each build's partition: the pipeline, for later
    /// reads by id without the index.
    fn learn_pipeline(&self, id: &str, e: &Entity) {
        if let Some(p) = e.partition_key.strip_prefix("p:") {
            self.cache_pipeline(id, p);
        }
    }

    pub(super) async fn state_row(&self, pipeline: &str) -> anyhow::Result<Option<Entity>> {
        Ok(self
            .client
            .get(&self.table, &ppk(pipeline), STATE_ROW)
            .await?)
    }

    pub(super) async fn read_row(&self, pipeline: &str, id: &str) -> anyhow::Result<Option<Row>> {
        let Some(e) = self
            .client
            .get(&self.table, &ppk(pipeline), &format!("b:{id}"))
            .await?
        else {
            return Ok(None);
        };
        let row = parse_row(e)?;
        self.cache_etag(id, row.revision, row.etag.clone());
        Ok(Some(row))
    }

    /// The ETag of build `id` at `revision`: cached, else read; `None`
    /// when the build is no longer at that revision.
    async fn etag_at(
        &self,
        pipeline: &str,
        id: &str,
        revision: i64,
    ) -> anyhow::Result<Option<String>> {
        if let Some(e) = self.cached_etag(id, revision) {
            return Ok(Some(e));
        }
        Ok(self
            .read_row(pipeline, id)
            .await?
            .filter(|r| r.revision == revision)
            .and_then(|r| r.etag))
    }

    /// The pipeline's non-terminal builds (the queue and the active ones).
    async fn open_builds(&self, pipeline: &str) -> anyhow::Result<Vec<(String, String, String)>> {
        let filter = Filter::eq("PartitionKey", ppk(pipeline))
            .and(Filter::eq("Kind", "build"))
            .and(Filter::eq("Terminal", false));
        let rows = self
            .client
            .query(
                &self.table,
                &filter,
                Some(&["Id", "State", "CreatedAt"]),
                None,
            )
            .await?;
        rows.iter()
            .map(|e| Ok((text(e, "Id")?, text(e, "State")?, text(e, "CreatedAt")?)))
            .collect()
    }

    /// The pipeline side of a slot: `id` is the oldest queued build of its
    /// pipeline and the pipeline is under its own cap.
    async fn pipeline_allows(&self, pipeline: &str, id: &str, cap: u32) -> anyhow::Result<bool> {
        let open = self.open_builds(pipeline).await?;
        // Only a queued build asks for a slot: one already started (by
        // another instance) must not reach for the slot it holds.
        let Some((_, _, created)) = open.iter().find(|(i, s, _)| i == id && s == "queued") else {
            return Ok(false);
        };
        let older_queued = open
            .iter()
            .any(|(i, s, c)| s == "queued" && (c.as_str(), i.as_str()) < (created.as_str(), id));
        let active = open.iter().filter(|(_, s, _)| s != "queued").count();
        Ok(!older_queued && active < cap as usize)
    }

    /// The operations that commit with a transition, after its build row.
    async fn extras_ops(
        &self,
        t: &Transition<'_>,
        state: &Option<Entity>,
        touch: bool,
    ) -> anyhow::Result<(Vec<BatchOp>, Option<BreakerChange>)> {
        let b = t.build;
        let mut ops = Vec::new();
        if let Some(cause) = t.cause {
            ops.push(BatchOp::Insert(history_entity(
                &b.pipeline,
                &b.id,
                t.now,
                Entry::Step(t.expected + 1),
                Some(t.from.name()),
                b.state.name(),
                cause,
            )));
        }
        if let Some(row) = &t.extras.outbox {
            ops.push(BatchOp::Insert(super::records::outbox_entity(
                &ppk(&b.pipeline),
                row,
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &t.extras.retire {
            if !seen.insert(r.template.clone()) {
                continue;
            }
            // A template already queued keeps its row (and its attempts).
            let rk = format!("c:{}", r.template);
            if self
                .client
                .get(&self.table, &ppk(&b.pipeline), &rk)
                .await?
                .is_none()
            {
                ops.push(BatchOp::Insert(super::cleanup::cleanup_entity(r, t.now)));
            }
        }
        let mut change = None;
        if let Some(o) = t.extras.outcome {
            let (props, c) = breaker_after(state, o, t.now)?;
            change = c;
            ops.push(touch_state(&b.pipeline, state, t.now, props));
        } else if touch {
            ops.push(touch_state(&b.pipeline, state, t.now, Entity::new("", "")));
        }
        Ok((ops, change))
    }

    /// After a lost reply the batch may have landed: the row then carries
    /// this write's id (another writer's identical build would not).
    async fn landed(&self, t: &Transition<'_>, write_id: &str) -> anyhow::Result<bool> {
        let Some(row) = self.read_row(&t.build.pipeline, &t.build.id).await? else {
            return Ok(false);
        };
        Ok(row.revision == t.expected + 1 && row.write_id.as_deref() == Some(write_id))
    }

    /// Writes transition `t` (after `before` succeeded for a claim).
    ///
    /// A claim passes the `state` row its decision was read with
    /// (`decided_on`): the batch is then conditional on exactly that read,
    /// so any admission, claim or cancel since makes it decide again.
    async fn write(
        &self,
        t: &Transition<'_>,
        decided_on: Option<Option<Entity>>,
    ) -> anyhow::Result<Option<(Write, Option<BreakerChange>)>> {
        let b = t.build;
        let claim = decided_on.is_some();
        for _ in 0..RACES {
            let write_id = uuid::Uuid::new_v4().to_string();
            let Some(etag) = self.etag_at(&b.pipeline, &b.id, t.expected).await? else {
                return Ok(Some((Write::Conflict, None)));
            };
            // Decisions about which build is queued or running serialize on
            // the pipeline's state row, as does the breaker count.
            let leaves_queue = matches!(t.from, BuildState::Queued);
            let state = match &decided_on {
                Some(read) => read.clone(),
                None if leaves_queue || t.extras.outcome.is_some() => {
                    self.state_row(&b.pipeline).await?
                }
                None => None,
            };
            let mut ops = vec![BatchOp::Replace {
                entity: build_entity(b, t.expected + 1, t.now, t.next_poll_at, &write_id)?,
                if_match: IfMatch::Etag(etag),
            }];
            let (more, change) = self.extras_ops(t, &state, leaves_queue).await?;
            ops.extend(more);
            match self
                .client
                .batch(&self.table, &ppk(&b.pipeline), &ops)
                .await
            {
                Ok(etags) => {
                    self.cache_etag(&b.id, t.expected + 1, etags.into_iter().next().flatten());
                    return Ok(Some((
                        Write::Written {
                            row_version: t.expected + 1,
                        },
                        change,
                    )));
                }
                Err(e) => match lost(&e) {
                    Some(Lost::First) => {
                        if self.landed(t, &write_id).await? {
                            return Ok(Some((
                                Write::Written {
                                    row_version: t.expected + 1,
                                },
                                change,
                            )));
                        }
                        return Ok(Some((Write::Conflict, None)));
                    }
                    // The state row moved (another admission or claim): a
                    // claim decides again from the top, a step just retries.
                    Some(Lost::Other) if claim => return Ok(None),
                    Some(Lost::Other) => continue,
                    None => return Err(e.into()),
                },
            }
        }
        anyhow::bail!(
            "build {}: the pipeline's state row kept changing; try again",
            b.id
        )
    }
}

#[async_trait]
impl BuildStore for TableStore {
    async fn get(&self, id: &str) -> anyhow::Result<Option<(Build, i64)>> {
        let Some(pipeline) = self.pipeline_of(id).await? else {
            return Ok(None);
        };
        Ok(self
            .read_row(&pipeline, id)
            .await?
            .map(|r| (r.build, r.revision)))
    }

    async fn list(&self, f: &BuildFilter) -> anyhow::Result<Vec<Build>> {
        let mut filter = Filter::eq("Kind", "build");
        if let Some(p) = &f.pipeline {
            filter = Filter::eq("PartitionKey", ppk(p)).and(filter);
        }
        if let Some(s) = &f.state {
            filter = filter.and(Filter::eq("State", s.as_str()));
        }
        let mut builds = Vec::new();
        for e in self.client.query(&self.table, &filter, None, None).await? {
            let b = parse_row(e)?.build;
            // The time window is checked here: the row's creation time is
            // inside its JSON body, not a property `$filter` can compare.
            if f.since.is_some_and(|t| b.created_at < t)
                || f.until.is_some_and(|t| b.created_at >= t)
            {
                continue;
            }
            builds.push(b);
        }
        builds.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(builds
            .into_iter()
            .skip(f.offset)
            .take(f.limit.unwrap_or(200).min(10_000))
            .collect())
    }

    async fn history(&self, id: &str) -> anyhow::Result<Vec<HistoryEntry>> {
        let Some(pipeline) = self.pipeline_of(id).await? else {
            return Ok(Vec::new());
        };
        let filter = Filter::eq("PartitionKey", ppk(&pipeline))
            .and(Filter::starts_with("RowKey", &format!("h:{id}:")));
        let rows = self.client.query(&self.table, &filter, None, None).await?;
        rows.iter()
            .map(|e| {
                Ok(HistoryEntry {
                    at: parse_ts(&text(e, "At")?),
                    from: opt_text(e, "From")?,
                    to: text(e, "To")?,
                    cause: long_text(e, "Cause")?,
                })
            })
            .collect()
    }

    async fn commit(&self, t: &Transition<'_>) -> anyhow::Result<(Write, Option<BreakerChange>)> {
        let written = self
            .write(t, None)
            .await?
            .expect("a step is never asked to decide again");
        if matches!(written.0, Write::Written { .. })
            && t.build.state.is_terminal()
            && !t.from.is_terminal()
        {
            self.release_slot(&t.build.id).await;
        }
        Ok(written)
    }

    async fn claim_slot(&self, t: &Transition<'_>, caps: Caps) -> anyhow::Result<Option<Write>> {
        let b = t.build;
        for _ in 0..RACES {
            // Read before deciding, so the commit is conditional on it.
            let state = self.state_row(&b.pipeline).await?;
            if !self
                .pipeline_allows(&b.pipeline, &b.id, caps.pipeline)
                .await?
            {
                return Ok(None);
            }
            if !self
                .take_slot(&b.id, &b.pipeline, caps.global, t.now)
                .await?
            {
                return Ok(None);
            }
            // A lost claim keeps the slot: the build may have been started
            // by the instance that won (the slot is then its), and a slot
            // whose build stays queued is taken back after the grace period.
            match self.write(t, Some(state)).await? {
                Some((w, _)) => return Ok(Some(w)),
                // The pipeline's state moved under the claim: decide again.
                None => continue,
            }
        }
        Ok(None)
    }

    async fn slot_free(&self, id: &str, caps: Caps, now: DateTime<Utc>) -> anyhow::Result<bool> {
        let Some(pipeline) = self.pipeline_of(id).await? else {
            return Ok(false);
        };
        if !self.pipeline_allows(&pipeline, id, caps.pipeline).await? {
            return Ok(false);
        }
        Ok(self.free_slot(id, caps.global, now).await?.is_some())
    }

    async fn admit(&self, a: &Admission<'_>) -> anyhow::Result<Admitted> {
        self.admit_request(a).await
    }

    async fn build_for_key(&self, pipeline: &str, key: &str) -> anyhow::Result<Option<String>> {
        match self
            .client
            .get(&self.table, &ppk(pipeline), &key_row(key))
            .await?
        {
            Some(e) => Ok(Some(text(&e, "BuildId")?)),
            None => Ok(None),
        }
    }

    async fn due(&self, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
        let filter = Filter::eq("Kind", "build").and(Filter::eq("Terminal", false));
        let rows = self
            .client
            .query(
                &self.table,
                &filter,
                Some(&["Id", "CreatedAt", "NextPollAt"]),
                None,
            )
            .await?;
        let now = ts(now);
        let mut due = Vec::new();
        for e in &rows {
            let next = opt_text(e, "NextPollAt")?;
            if next.is_none_or(|n| n <= now) {
                let id = text(e, "Id")?;
                self.learn_pipeline(&id, e);
                due.push((text(e, "CreatedAt")?, id));
            }
        }
        due.sort();
        Ok(due.into_iter().map(|(_, id)| id).collect())
    }

    /// The held slots (one small partition), stale holders included until
    /// a claim takes them back.
    async fn active_builds(&self) -> anyhow::Result<usize> {
        let mut held = 0;
        for s in self.slots().await? {
            held += usize::from(opt_text(&s, "Holder")?.is_some());
        }
        Ok(held)
    }

    async fn queued(&self) -> anyhow::Result<Vec<String>> {
        let filter = Filter::eq("Kind", "build").and(Filter::eq("State", "queued"));
        let rows = self
            .client
            .query(&self.table, &filter, Some(&["Id", "CreatedAt"]), None)
            .await?;
        let mut queued = rows
            .iter()
            .map(|e| {
                let id = text(e, "Id")?;
                self.learn_pipeline(&id, e);
                Ok((text(e, "CreatedAt")?, id))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        queued.sort();
        Ok(queued.into_iter().map(|(_, id)| id).collect())
    }
}
