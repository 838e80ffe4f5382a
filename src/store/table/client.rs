//! The operations: tables, single entities, queries and batches.
//!
//! Reads ask for `odata=fullmetadata`: it is the level at which the service promises each
//! queried entity's `odata.etag` and every type annotation; writes ask for
//! `odata=nometadata` with `Prefer: return-no-content` and take the new ETag
//! from the `ETag` header.

use std::sync::Arc;

use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::auth::{ConnectionString, Credential};
use super::batch::{self, BatchOp};
use super::entity::{Entity, IfMatch};
use super::filter::Filter;
use super::http::{encode, entity_path, Call, Http, TableOptions, ACCEPT_FULL, ACCEPT_NONE};
use super::limits::check_entity;
use super::TableError;
use crate::config::Secret;
use crate::providers::azure::arm::{Pause, TokioPause};
use crate::providers::azure::identity::{is_loopback_http, TokenSource};

/// One page of a query, and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entities: Vec<Entity>,
    /// `None` on the last page. A page may be empty and still have one.
    pub continuation: Option<Continuation>,
}

/// The service's `x-ms-continuation-Next*` tokens, opaque to kiln.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    pub next_partition_key: String,
    pub next_row_key: Option<String>,
}

#[derive(Clone)]
pub struct TableClient {
    inner: Arc<Http>,
}

impl std::fmt::Debug for TableClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credential's own Debug shows the account, never the key or a token.
        f.debug_struct("TableClient")
            .field("endpoint", &self.inner.endpoint)
            .field("credential", &self.inner.credential)
            .finish_non_exhaustive()
    }
}

impl TableClient {
    /// Shared Key from a storage connection string (Azurite's included).
    pub fn from_connection_string(
        http: reqwest::Client,
        connection_string: &Secret,
    ) -> Result<Self, TableError> {
        let cs = ConnectionString::parse(connection_string)?;
        Self::new(http, &cs.table_endpoint, Credential::SharedKey(cs.key))
    }

    /// Entra ID tokens for [`STORAGE_SCOPE`](super::STORAGE_SCOPE), e.g. the Function App's managed identity;
    /// `endpoint` is `https://{account}.table.core.windows.net`.
    pub fn with_token(
        http: reqwest::Client,
        endpoint: &str,
        tokens: Arc<dyn TokenSource>,
    ) -> Result<Self, TableError> {
        Self::new(http, endpoint, Credential::Bearer(tokens))
    }

    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        credential: Credential,
    ) -> Result<Self, TableError> {
        let endpoint = endpoint.trim_end_matches('/');
        let parsed = Url::parse(endpoint).map_err(|e| {
            TableError::Invalid(format!("table endpoint {endpoint:?} is not a URL: {e}"))
        })?;
        if parsed.query().is_some() {
            return Err(TableError::Invalid(format!(
                "table endpoint {endpoint:?} must not have a query"
            )));
        }
        // A request's signature or token must not cross the network in clear.
        if parsed.scheme() != "https" && !is_loopback_http(endpoint) {
            return Err(TableError::Invalid(format!(
                "table endpoint {endpoint:?} must be https (plain http only on 127.0.0.1 or localhost)"
            )));
        }
        Ok(Self {
            inner: Arc::new(Http {
                http,
                endpoint: endpoint.to_string(),
                credential,
                opts: TableOptions::default(),
                pause: Arc::new(TokioPause),
            }),
        })
    }

    /// The same client with other timeouts and retries.
    pub fn with_options(self, opts: TableOptions) -> Self {
        self.rebuilt(opts, self.inner.pause.clone())
    }

    /// The same client, waiting between attempts through `pause` (tests, the simulator's clock).
    pub fn with_pause(self, pause: Arc<dyn Pause>) -> Self {
        self.rebuilt(self.inner.opts.clone(), pause)
    }

    fn rebuilt(&self, opts: TableOptions, pause: Arc<dyn Pause>) -> Self {
        Self {
            inner: Arc::new(Http {
                http: self.inner.http.clone(),
                endpoint: self.inner.endpoint.clone(),
                credential: self.inner.credential.clone(),
                opts,
                pause,
            }),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Creates `table`; `false` when it already existed (409 `TableAlreadyExists`).
    pub async fn create_table_if_missing(&self, table: &str) -> Result<bool, TableError> {
        check_table_name(table)?;
        let op = format!("create table {table}");
        let call = Call::new(Method::POST, "Tables".into(), ACCEPT_NONE, op.clone())
            .json_body(&json!({ "TableName": table }));
        let reply = self.inner.send(&call).await?;
        if reply.status == 409 {
            return match reply.error(&op) {
                TableError::Conflict { code, .. } if code == "TableAlreadyExists" => Ok(false),
                other => Err(other),
            };
        }
        reply.ok(&op).map(|_| true)
    }

    /// Deletes `table` and everything in it; `false` when there was none.
    pub async fn delete_table(&self, table: &str) -> Result<bool, TableError> {
        check_table_name(table)?;
        let op = format!("delete table {table}");
        let call = Call::new(
            Method::DELETE,
            format!("Tables('{}')", encode(table)),
            ACCEPT_NONE,
            op.clone(),
        );
        let reply = self.inner.send(&call).await?;
        if reply.status == 404 {
            return Ok(false);
        }
        reply.ok(&op).map(|_| true)
    }

    /// The entity with these keys, with its ETag; `None` when there is none.
    /// A missing table is an error ([`TableError::NotFound`] `TableNotFound`), not `None`.
    pub async fn get(&self, table: &str, pk: &str, rk: &str) -> Result<Option<Entity>, TableError> {
        check_table_name(table)?;
        let op = format!("get {}", describe(table, pk, rk));
        let call = Call::new(
            Method::GET,
            entity_path(table, pk, rk),
            ACCEPT_FULL,
            op.clone(),
        );
        let reply = self.inner.send(&call).await?;
        if reply.status == 404 {
            return match reply.error(&op) {
                TableError::NotFound { code, .. } if code != "TableNotFound" => Ok(None),
                other => Err(other),
            };
        }
        let reply = reply.ok(&op)?;
        let entity = Entity::from_wire(&reply.json(&op)?, reply.header("etag"))
            .map_err(|message| TableError::Protocol { op, message })?;
        Ok(Some(entity))
    }

    /// Inserts a new entity; its ETag. [`TableError::Conflict`]
    /// (`EntityAlreadyExists`) when one with these keys exists, which
    /// includes this insert's own earlier attempt when its answer was lost
    /// and it was retried: on `Conflict`, re-read the entity to tell.
    pub async fn insert(&self, table: &str, entity: &Entity) -> Result<String, TableError> {
        self.write(table, entity, Method::POST, None, "insert")
            .await
    }

    /// Replaces the entity's properties with these (PUT). `IfMatch::Any`
    /// needs the entity to exist ([`TableError::NotFound`] otherwise), an
    /// ETag needs it unchanged since ([`TableError::PreconditionFailed`]).
    pub async fn replace(
        &self,
        table: &str,
        entity: &Entity,
        if_match: IfMatch,
    ) -> Result<String, TableError> {
        self.write(table, entity, Method::PUT, Some(if_match), "replace")
            .await
    }

    /// Inserts the entity or replaces all of an existing one's properties
    /// (PUT without `If-Match`); its new ETag.
    pub async fn upsert(&self, table: &str, entity: &Entity) -> Result<String, TableError> {
        self.write(table, entity, Method::PUT, None, "upsert").await
    }

    /// Updates these properties and keeps the entity's others (MERGE), on
    /// the same conditions as [`replace`](Self::replace).
    pub async fn merge(
        &self,
        table: &str,
        entity: &Entity,
        if_match: IfMatch,
    ) -> Result<String, TableError> {
        let merge = Method::from_bytes(b"MERGE").expect("MERGE is a valid method token");
        self.write(table, entity, merge, Some(if_match), "merge")
            .await
    }

    /// Deletes the entity. [`TableError::NotFound`] when there is none
    /// (a retried delete whose first attempt landed ends here too),
    /// [`TableError::PreconditionFailed`] when an ETag no longer matches.
    pub async fn delete(
        &self,
        table: &str,
        pk: &str,
        rk: &str,
        if_match: IfMatch,
    ) -> Result<(), TableError> {
        check_table_name(table)?;
        let op = format!("delete {}", describe(table, pk, rk));
        let mut call = Call::new(
            Method::DELETE,
            entity_path(table, pk, rk),
            ACCEPT_NONE,
            op.clone(),
        );
        call.if_match = Some(if_match.header().to_string());
        self.inner.send(&call).await?.ok(&op).map(|_| ())
    }

    async fn write(
        &self,
        table: &str,
        entity: &Entity,
        method: Method,
        if_match: Option<IfMatch>,
        verb: &str,
    ) -> Result<String, TableError> {
        check_table_name(table)?;
        check_entity(entity)?;
        let op = format!(
            "{verb} {}",
            describe(table, &entity.partition_key, &entity.row_key)
        );
        let resource = if method == Method::POST {
            table.to_string()
        } else {
            entity_path(table, &entity.partition_key, &entity.row_key)
        };
        let mut call =
            Call::new(method, resource, ACCEPT_NONE, op.clone()).json_body(&entity.to_wire());
        call.if_match = if_match.map(|m| m.header().to_string());
        self.inner.send(&call).await?.ok(&op)?.etag(&op)
    }

    /// Every entity matching `filter`, following continuation tokens to the
    /// end. `top` is the page size (the service's maximum, 1000, when `None`).
    /// `select` limits the properties returned; the keys always come back.
    pub async fn query(
        &self,
        table: &str,
        filter: &Filter,
        select: Option<&[&str]>,
        top: Option<u32>,
    ) -> Result<Vec<Entity>, TableError> {
        let mut all = Vec::new();
        let mut from: Option<Continuation> = None;
        loop {
            let page = self
                .query_page(table, filter, select, top, from.as_ref())
                .await?;
            all.extend(page.entities);
            match page.continuation {
                None => return Ok(all),
                Some(next) if Some(&next) == from.as_ref() => {
                    return Err(TableError::Protocol {
                        op: format!("query {table}"),
                        message: "the service returned the same continuation twice".into(),
                    })
                }
                Some(next) => from = Some(next),
            }
        }
    }

    /// One page of a query, starting at `from` (the previous page's
    /// continuation), for callers that stop early.
    pub async fn query_page(
        &self,
        table: &str,
        filter: &Filter,
        select: Option<&[&str]>,
        top: Option<u32>,
        from: Option<&Continuation>,
    ) -> Result<Page, TableError> {
        check_table_name(table)?;
        filter.check()?;
        let op = if filter.as_str().is_empty() {
            format!("query {table}")
        } else {
            format!("query {table} where {}", filter.as_str())
        };
        let mut call = Call::new(Method::GET, format!("{table}()"), ACCEPT_FULL, op.clone());
        if !filter.as_str().is_empty() {
            call.query.push(("$filter", filter.as_str().to_string()));
        }
        if let Some(select) = select {
            let mut names: Vec<&str> = vec!["PartitionKey", "RowKey"];
            names.extend(select.iter().filter(|n| !names_key(n)));
            call.query.push(("$select", names.join(",")));
        }
        if let Some(top) = top {
            if !(1..=1000).contains(&top) {
                return Err(TableError::Invalid(format!(
                    "{op}: $top {top} is outside 1..=1000"
                )));
            }
            call.query.push(("$top", top.to_string()));
        }
        if let Some(c) = from {
            call.query
                .push(("NextPartitionKey", c.next_partition_key.clone()));
            if let Some(rk) = &c.next_row_key {
                call.query.push(("NextRowKey", rk.clone()));
            }
        }
        let reply = self.inner.send(&call).await?.ok(&op)?;
        let body = reply.json(&op)?;
        let values =
            body.get("value")
                .and_then(Value::as_array)
                .ok_or_else(|| TableError::Protocol {
                    op: op.clone(),
                    message: "no value array in the query response".into(),
                })?;
        let entities = values
            .iter()
            .map(|v| Entity::from_wire(v, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| TableError::Protocol {
                op: op.clone(),
                message,
            })?;
        let token = |name: &str| {
            reply
                .header(name)
                .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("null"))
                .map(str::to_string)
        };
        let continuation = token("x-ms-continuation-nextpartitionkey").map(|pk| Continuation {
            next_partition_key: pk,
            next_row_key: token("x-ms-continuation-nextrowkey"),
        });
        Ok(Page {
            entities,
            continuation,
        })
    }

    /// An entity group transaction: all of `ops` on partition `pk` commit
    /// together or not at all; the new ETag of each (`None` for a delete),
    /// in order. A refused operation is [`TableError::BatchFailed`] with its
    /// index. Limits (100 operations, one partition, distinct rows, 4 MiB)
    /// are checked before sending. A retried batch whose first attempt
    /// landed fails on its first insert (`EntityAlreadyExists`) or ETag
    /// condition; re-read to tell.
    pub async fn batch(
        &self,
        table: &str,
        pk: &str,
        ops: &[BatchOp],
    ) -> Result<Vec<Option<String>>, TableError> {
        check_table_name(table)?;
        let op = format!("batch of {} on {table} (PartitionKey {pk:?})", ops.len());
        let body = batch::build(&self.inner.endpoint, table, pk, ops)?;
        let mut call = Call::new(Method::POST, "$batch".into(), ACCEPT_NONE, op.clone());
        call.body = Some((body.content_type, body.body));
        let reply = self.inner.send(&call).await?.ok(&op)?;
        batch::parse_response(&op, &reply.body, ops.len())
    }
}

fn names_key(name: &str) -> bool {
    name == "PartitionKey" || name == "RowKey"
}

/// `table (PartitionKey 'p', RowKey 'r')` for logs and errors.
fn describe(table: &str, pk: &str, rk: &str) -> String {
    format!("{table} (PartitionKey {pk:?}, RowKey {rk:?})")
}

/// `^[A-Za-z][A-Za-z0-9]{2,62}$`, the service's rule for table names.
pub fn check_table_name(table: &str) -> Result<(), TableError> {
    let ok = (3..=63).contains(&table.len())
        && table.starts_with(|c: char| c.is_ascii_alphabetic())
        && table.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(TableError::Invalid(format!(
            "table name {table:?} must be 3 to 63 letters and digits, starting with a letter"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_the_service_rule() {
        for ok in ["builds", "Abc", "t12345"] {
            check_table_name(ok).unwrap();
        }
        for bad in ["ab", "1abc", "has-dash", "has space", &"a".repeat(64)] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_must_be_https_unless_it_is_this_machine() {
        let http = reqwest::Client::new();
        let key = ConnectionString::parse(&Secret::new("UseDevelopmentStorage=true"))
            .unwrap()
            .key;
        let make = |e: &str| TableClient::new(http.clone(), e, Credential::SharedKey(key.clone()));
        let client = make("https://stkiln.table.core.windows.net/").unwrap();
        assert_eq!(client.endpoint(), "https://stkiln.table.core.windows.net");
        let shown = format!("{client:?}");
        assert!(
            shown.contains("devstoreaccount1") && !shown.contains("Eby8"),
            "{shown}"
        );
        assert!(make("http://127.0.0.1:10002/devstoreaccount1").is_ok());
        let e = make("http://stkiln.table.core.windows.net").err().unwrap();
        assert!(e.to_string().contains("must be https"), "{e}");
        assert!(make("https://x.table.core.windows.net?sv=1").is_err());
    }
}
