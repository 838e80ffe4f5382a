//! Admission on Table Storage: one read of the pipeline's partition, one
//! decision (the domain's), one batch conditional on the partition's
//! `state` row, so two admissions of one pipeline cannot both commit from
//! the same read (one queued build, no version taken twice).

use super::builds::{build_entity, history_entity, lost, touch_state, Entry};
use super::{int, key_row, opt_text, ppk, text, ts, TableStore, IDS, RACES, STATE_ROW};
use crate::domain::build::Build;
use crate::domain::request::{admit, Admission as Decision, AdmissionView};
use crate::domain::version::ImageVersion;
use crate::store::port::{Admission, Admitted};
use crate::store::table::{BatchOp, Entity, Filter};

impl TableStore {
    pub(super) async fn admit_request(&self, a: &Admission<'_>) -> anyhow::Result<Admitted> {
        let pk = ppk(a.pipeline);
        let krow = key_row(a.key);
        // What this call tried to create: a retried batch whose first
        // attempt landed finds its own key, which is a creation, not a repeat.
        let mut made: Option<Build> = None;
        for _ in 0..RACES {
            // One read of the partition: its state row, the request's key
            // row and its builds' summaries.
            let filter = Filter::eq("PartitionKey", pk.clone()).and(
                Filter::eq("RowKey", STATE_ROW)
                    .or(Filter::eq("RowKey", krow.clone()))
                    .or(Filter::eq("Kind", "build")),
            );
            let mut rows = self
                .client
                .query(
                    &self.table,
                    &filter,
                    Some(&[
                        "Kind",
                        "Id",
                        "State",
                        "CreatedAt",
                        "Version",
                        "RowVersion",
                        "BuildId",
                        "BreakerOpenSince",
                    ]),
                    None,
                )
                .await?;
            let state = rows
                .iter()
                .position(|e| e.row_key == STATE_ROW)
                .map(|i| rows.swap_remove(i));
            if let Some(k) = rows.iter().find(|e| e.row_key == krow) {
                let id = text(k, "BuildId")?;
                return Ok(match made {
                    Some(b) if b.id == id => Admitted::Created(Box::new(b)),
                    Some(_) | None => Admitted::Existing(id),
                });
            }
            rows.retain(|e| e.row_key.starts_with("b:"));
            let mut queued: Option<(String, String, i64)> = None;
            let mut taken: Vec<ImageVersion> = a.gallery_versions.to_vec();
            for e in &rows {
                let (id, created) = (text(e, "Id")?, text(e, "CreatedAt")?);
                if text(e, "State")? == "queued"
                    && queued
                        .as_ref()
                        .is_none_or(|(c, i, _)| (&created, &id) < (c, i))
                {
                    queued = Some((created, id, int(e, "RowVersion")?));
                }
                let v = text(e, "Version")?;
                taken.push(v.parse().map_err(|err| {
                    anyhow::anyhow!("row {}/{}: version {v}: {err}", e.partition_key, e.row_key)
                })?);
            }
            let breaker_open = match &state {
                Some(s) => opt_text(s, "BreakerOpenSince")?.is_some(),
                None => false,
            };
            let view = AdmissionView {
                existing_for_key: None,
                queued_build: queued.as_ref().map(|(_, id, _)| id.clone()),
                breaker_open,
            };
            let mut key = Entity::new(pk.clone(), krow.clone());
            key.set("Kind", "key")
                .set("Key", a.key)
                .set("CreatedAt", ts(a.now));
            let (ops, result) = match admit(a.trigger, &view) {
                Decision::Existing { build } => return Ok(Admitted::Existing(build)),
                Decision::Paused { reason } => return Ok(Admitted::Paused(reason)),
                Decision::Coalesced { build } => {
                    key.set("BuildId", build.as_str());
                    let cause = format!("request {} coalesced into this build", a.key);
                    let revision = queued.as_ref().map(|(_, _, r)| *r).unwrap_or(1);
                    let entry = history_entity(
                        a.pipeline,
                        &build,
                        a.now,
                        Entry::Note(revision),
                        Some("queued"),
                        "queued",
                        &cause,
                    );
                    let ops = vec![
                        BatchOp::Insert(key),
                        BatchOp::Insert(entry),
                        touch_state(a.pipeline, &state, a.now, Entity::new("", "")),
                    ];
                    (ops, Admitted::Coalesced(build))
                }
                Decision::New => {
                    let build = match (a.make)(&taken) {
                        Ok(b) => b,
                        Err(reason) => return Ok(Admitted::Refused(reason)),
                    };
                    self.cache_pipeline(&build.id, a.pipeline);
                    made = Some(build.clone());
                    key.set("BuildId", build.id.as_str());
                    let cause = format!("admitted: {}", build.reason);
                    let ops = vec![
                        BatchOp::Insert(build_entity(
                            &build,
                            1,
                            a.now,
                            Some(a.now),
                            &uuid::Uuid::new_v4().to_string(),
                        )?),
                        BatchOp::Insert(key),
                        BatchOp::Insert(history_entity(
                            a.pipeline,
                            &build.id,
                            a.now,
                            Entry::Step(1),
                            None,
                            build.state.name(),
                            &cause,
                        )),
                        touch_state(a.pipeline, &state, a.now, Entity::new("", "")),
                    ];
                    (ops, Admitted::Created(Box::new(build)))
                }
            };
            // The build-id index is written beside the batch, not before
            // it: an index row without its build reads as no build, and a
            // build whose index row is missing is still found (by a query;
            // see `pipeline_of`), so neither order can lose one.
            let index = async {
                match &result {
                    Admitted::Created(b) => {
                        let mut index = Entity::new(IDS, b.id.clone());
                        index.set("Pipeline", a.pipeline);
                        self.client.upsert(&self.table, &index).await.map(|_| ())
                    }
                    _ => Ok(()),
                }
            };
            let (batch, index) = tokio::join!(self.client.batch(&self.table, &pk, &ops), index);
            if let Err(e) = index {
                tracing::warn!(pipeline = a.pipeline, error = %e, "build index not written; the build is found by a query");
            }
            match batch {
                Ok(etags) => {
                    if let Admitted::Created(b) = &result {
                        self.cache_etag(&b.id, 1, etags.into_iter().next().flatten());
                    }
                    return Ok(result);
                }
                // Someone admitted, coalesced or started a build of this
                // pipeline since the read (or took the key): decide again.
                Err(e) if lost(&e).is_some() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!(
            "pipeline {}: admission kept losing races; the request is retried",
            a.pipeline
        )
    }
}
