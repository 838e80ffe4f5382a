//! The store port on Azure Table Storage: what lets several kiln instances
//! share their state. The same REST protocol serves Azurite (the tests)
//! and Azure Cosmos DB for Table.
//!
//! Layout, in one table (`{prefix}state`), chosen so that every decision
//! that must be atomic is one entity group transaction in one partition:
//!
//! | PartitionKey      | RowKey                  | what                                   |
//! |-------------------|-------------------------|----------------------------------------|
//! | `p:{pipeline}`    | `state`                 | breaker, watcher memory; the pipeline's lock |
//! |                   | `b:{build}`             | a build (its JSON, state, revision)    |
//! |                   | `h:{build}:{at}:{rev}:…`| one history entry                      |
//! |                   | `k:{sha256(key)}`       | an admitted request key → build        |
//! |                   | `o:{event}`             | a webhook event committed with a transition |
//! |                   | `c:{template}`          | a template to clean up                 |
//! | `ids`             | `{build}`               | build → pipeline, written before the build |
//! | `slots`           | `slot:{n}`              | the global cap: one entity per slot    |
//! | `events`          | `o:{event}`             | events published outside a transition  |
//! | `log:{template}`  | `head`, `g{gen}:{n}`    | a kept customization log in chunks     |
//! | `audit`, `dead`   | `{inverted seq}`        | retention audit, dead letters (newest first) |
//! | `timers`, `leases`| `{name}`                | timer memory and leases                |
//!
//! - A transition is one batch in its pipeline's partition: the build row
//!   (If-Match its ETag), its history entry, its outbox event, the templates
//!   it retires and, when it ends a build or leaves `queued`, the pipeline's
//!   `state` row (If-Match), so a breaker count or a slot decision cannot be
//!   lost or doubled.
//! - Admissions and slot claims touch the `state` row too: two decisions
//!   about one pipeline (which build is queued, which starts, which version
//!   is next) cannot both commit from the same read.
//! - The global cap spans partitions, so it has its own entities: a claim
//!   takes the lowest free slot with a conditional write first, then commits
//!   the build; a claim that loses the build write gives the slot back, and
//!   a slot whose holder ended or never started (a crash between the two
//!   writes) is taken back when the slots run out.
//!
//! Files: `builds.rs` (reads, transitions, claims), `admission.rs`,
//! `slots.rs` (the global cap), `pipeline.rs` (breaker and memory),
//! `cleanup.rs` (cleanup queue, kept logs), `records.rs` (outbox, audit,
//! dead letters, timers, leases).
//!
//! Revisions: the port's revision is the build's `RowVersion`; the ETag of
//! the row at that revision is cached per build, so a write costs no read
//! when this instance wrote or read the build last.

mod admission;
mod builds;
mod cleanup;
mod pipeline;
mod records;
mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::port::Store;
use super::table::{Entity, TableClient, TableError};
use crate::config::TableAccess;
use crate::providers::azure::identity::TokenSource;

/// The store port on one Table Storage table.
pub struct TableStore {
    client: TableClient,
    table: String,
    /// Build id → pipeline (builds never move).
    pipelines: Mutex<HashMap<String, String>>,
    /// Build id → (revision, ETag of the row at that revision).
    etags: Mutex<HashMap<String, (i64, String)>>,
    /// When this instance last looked for abandoned slots.
    last_reclaim: Mutex<Option<DateTime<Utc>>>,
}

impl TableStore {
    /// Opens (and creates if missing) the table `{prefix}state`.
    pub async fn open(client: TableClient, prefix: &str) -> anyhow::Result<TableStore> {
        let table = format!("{prefix}state");
        client
            .create_table_if_missing(&table)
            .await
            .with_context(|| {
                format!(
                    "Cannot open the Table Storage table {table} at {}",
                    client.endpoint()
                )
            })?;
        Ok(TableStore {
            client,
            table,
            pipelines: Mutex::new(HashMap::new()),
            etags: Mutex::new(HashMap::new()),
            last_reclaim: Mutex::new(None),
        })
    }

    /// A client for `access`: Shared Key from a connection string, or
    /// Entra ID tokens from `tokens` for an endpoint.
    pub fn client(
        access: &TableAccess,
        tokens: impl FnOnce() -> anyhow::Result<Arc<dyn TokenSource>>,
    ) -> anyhow::Result<TableClient> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(match access {
            TableAccess::ConnectionString(cs) => {
                TableClient::from_connection_string(http, cs).context("KILN_TABLE_CONNECTION")?
            }
            TableAccess::Endpoint(url) => {
                TableClient::with_token(http, url, tokens()?).context("KILN_TABLE_ENDPOINT")?
            }
        })
    }

    fn cache_etag(&self, id: &str, revision: i64, etag: Option<String>) {
        let mut m = self.etags.lock().expect("etag cache");
        match etag {
            Some(e) => {
                m.insert(id.to_string(), (revision, e));
            }
            None => {
                m.remove(id);
            }
        }
    }

    fn cached_etag(&self, id: &str, revision: i64) -> Option<String> {
        let m = self.etags.lock().expect("etag cache");
        m.get(id)
            .filter(|(r, _)| *r == revision)
            .map(|(_, e)| e.clone())
    }

    fn cache_pipeline(&self, id: &str, pipeline: &str) {
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(id.to_string(), pipeline.to_string());
    }

    /// The pipeline of build `id`, or `None` when there is no such build.
    async fn pipeline_of(&self, id: &str) -> anyhow::Result<Option<String>> {
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(id) {
            return Ok(Some(p.clone()));
        }
        if let Some(e) = self.client.get(&self.table, IDS, id).await? {
            let p = text(&e, "Pipeline")?;
            self.cache_pipeline(id, &p);
            return Ok(Some(p));
        }
        // No index row: the admission's index write failed, or there is no
        // such build. A query over the table tells which (and repairs it).
        let filter = super::table::Filter::eq("RowKey", format!("b:{id}"));
        let found = self
            .client
            .query(&self.table, &filter, Some(&["Id"]), None)
            .await?;
        let Some(e) = found.first() else {
            return Ok(None);
        };
        let p = e
            .partition_key
            .strip_prefix("p:")
            .with_context(|| format!("build {id} is in partition {}", e.partition_key))?
            .to_string();
        let mut index = Entity::new(IDS, id);
        index.set("Pipeline", p.as_str());
        self.client.upsert(&self.table, &index).await?;
        self.cache_pipeline(id, &p);
        Ok(Some(p))
    }
}

impl Store for TableStore {
    fn kind(&self) -> &'static str {
        "table"
    }
}

const IDS: &str = "ids";
const SLOTS: &str = "slots";
const EVENTS: &str = "events";
const AUDIT: &str = "audit";
const DEAD: &str = "dead";
const TIMERS: &str = "timers";
const LEASES: &str = "leases";
const STATE_ROW: &str = "state";

/// The partition of a pipeline's builds and state.
fn ppk(pipeline: &str) -> String {
    format!("p:{pipeline}")
}

/// Request keys are chosen by callers and may hold characters row keys
/// cannot; their digest can't, and the key itself is kept beside it.
fn key_row(key: &str) -> String {
    format!("k:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// Instants as the SQLite store writes them: fixed-width RFC 3339 text, so
/// that string comparison in a `$filter` agrees with time order.
fn ts(t: DateTime<Utc>) -> String {
    crate::domain::stored_time::format(t)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    crate::domain::stored_time::parse(s).unwrap_or_default()
}

/// A string property kiln wrote; its absence is a damaged row.
fn text(e: &Entity, name: &str) -> anyhow::Result<String> {
    e.get_str(name)?
        .map(str::to_string)
        .with_context(|| format!("row {}/{}: no {name}", e.partition_key, e.row_key))
}

fn opt_text(e: &Entity, name: &str) -> anyhow::Result<Option<String>> {
    Ok(e.get_str(name)?
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

fn int(e: &Entity, name: &str) -> anyhow::Result<i64> {
    Ok(e.get_i64(name)?.unwrap_or(0))
}

/// Strings up to this many bytes go in one property (the service allows
/// 64 KiB, UTF-16 counted); longer ones are split over numbered ones.
const TEXT_PART: usize = 30_000;

/// Writes `value` as `name`, or split over `name0`, `name1`, … when long.
/// `{name}Parts` says which (0: the value is in `name`), so that a merge
/// over an earlier value of the other form reads right.
fn set_long_text(e: &mut Entity, name: &str, value: &str) {
    if value.len() <= TEXT_PART {
        e.set(name, value);
        e.set(&format!("{name}Parts"), 0i64);
        return;
    }
    let mut parts = 0i64;
    let mut rest = value;
    while !rest.is_empty() {
        let mut cut = rest.len().min(TEXT_PART);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        e.set(&format!("{name}{parts}"), &rest[..cut]);
        rest = &rest[cut..];
        parts += 1;
    }
    e.set(name, "");
    e.set(&format!("{name}Parts"), parts);
}

fn long_text(e: &Entity, name: &str) -> anyhow::Result<String> {
    let parts = int(e, &format!("{name}Parts"))?;
    if parts == 0 {
        return text(e, name);
    }
    let mut out = String::new();
    for i in 0..parts {
        out.push_str(&text(e, &format!("{name}{i}"))?);
    }
    Ok(out)
}

/// A unique, increasing number for rows listed newest first (audit, dead
/// letters): microseconds since the epoch, times 1000, plus a random tail
/// so that two instances writing in one microsecond do not collide.
fn new_seq(now: DateTime<Utc>) -> i64 {
    use rand::Rng;
    now.timestamp_micros() * 1000 + rand::thread_rng().gen_range(0..1000)
}

/// Row keys sort ascending; inverted, the newest row comes first.
fn newest_first(seq: i64) -> String {
    format!("{:019}", i64::MAX - seq)
}

fn is_conflict(e: &TableError) -> bool {
    matches!(
        e,
        TableError::Conflict { .. } | TableError::PreconditionFailed { .. }
    )
}

/// Attempts at a read-decide-write before giving up on a contended row.
const RACES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{admit, build, t0};
    use crate::store::port::BuildStore;
    use crate::store::table::testing::Azurite;
    use crate::store::table::IfMatch;

    #[tokio::test]
    async fn a_build_whose_index_row_is_lost_is_still_found_and_the_index_repaired() {
        let azurite = Azurite::start();
        let a = TableStore::open(azurite.client(), "kiln").await.unwrap();
        admit(&a, &build("b1", "p", t0())).await;
        let client = azurite.client();
        client
            .delete("kilnstate", IDS, "b1", IfMatch::Any)
            .await
            .unwrap();
        // Another instance, which never saw the build.
        let b = TableStore::open(azurite.client(), "kiln").await.unwrap();
        let (found, _) = b
            .get("b1")
            .await
            .unwrap()
            .expect("found without its index row");
        assert_eq!(found.pipeline, "p");
        assert!(client.get("kilnstate", IDS, "b1").await.unwrap().is_some());
        assert!(b.get("nope").await.unwrap().is_none());
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::TableStore;
    use crate::store::conformance::Pair;
    use crate::store::table::testing::Azurite;

    /// Two clients on one Azurite: two instances sharing one storage account.
    async fn pair() -> Pair {
        let azurite = Azurite::start();
        let a = TableStore::open(azurite.client(), "kiln").await.unwrap();
        let b = TableStore::open(azurite.client(), "kiln").await.unwrap();
        Pair {
            a: Arc::new(a),
            b: Arc::new(b),
            keep: Some(Box::new(azurite)),
        }
    }

    crate::conformance_suite!(pair());
}
