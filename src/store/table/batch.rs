//! Entity group transactions: up to 100 writes on one partition, committed
//! together or not at all, sent as one `POST /$batch`.
//!
//! The body is `multipart/mixed`: a batch part holding one change set, and
//! in it one `application/http` part per operation, each written as the
//! request would be on its own (request line with the absolute URL,
//! headers, one-line JSON body). The answer is `202 Accepted` whatever
//! happened inside; the change set's parts carry each operation's status.
//! On failure there is one part, for the operation that failed, whose
//! error message starts with that operation's 0-based index (`"2:The
//! specified entity already exists."`), and nothing was committed.

use super::entity::{Entity, IfMatch};
use super::error::{first_line, service_error};
use super::http::entity_path;
use super::limits::{check_entity, check_key, MAX_BATCH_BYTES, MAX_BATCH_OPERATIONS};
use super::TableError;

/// One write in a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOp {
    /// Fails the batch (409) when the entity exists.
    Insert(Entity),
    /// PUT with `If-Match`: replaces all properties of an existing entity.
    Replace { entity: Entity, if_match: IfMatch },
    /// MERGE with `If-Match`: updates the given properties of an existing entity.
    Merge { entity: Entity, if_match: IfMatch },
    /// PUT without `If-Match`: insert or replace.
    Upsert(Entity),
    /// DELETE with `If-Match`, of the row in the batch's partition.
    Delete { row_key: String, if_match: IfMatch },
}

impl BatchOp {
    fn row_key(&self) -> &str {
        match self {
            BatchOp::Insert(e)
            | BatchOp::Upsert(e)
            | BatchOp::Replace { entity: e, .. }
            | BatchOp::Merge { entity: e, .. } => &e.row_key,
            BatchOp::Delete { row_key, .. } => row_key,
        }
    }

    fn entity(&self) -> Option<&Entity> {
        match self {
            BatchOp::Insert(e)
            | BatchOp::Upsert(e)
            | BatchOp::Replace { entity: e, .. }
            | BatchOp::Merge { entity: e, .. } => Some(e),
            BatchOp::Delete { .. } => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            BatchOp::Insert(_) => "insert",
            BatchOp::Replace { .. } => "replace",
            BatchOp::Merge { .. } => "merge",
            BatchOp::Upsert(_) => "upsert",
            BatchOp::Delete { .. } => "delete",
        }
    }
}

pub(crate) struct BatchBody {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The `$batch` request body for `ops` on partition `pk` of `table`, after
/// checking what the service would refuse.
pub(crate) fn build(
    endpoint: &str,
    table: &str,
    pk: &str,
    ops: &[BatchOp],
) -> Result<BatchBody, TableError> {
    if ops.is_empty() {
        return Err(TableError::Invalid(format!(
            "batch on {table}: no operations"
        )));
    }
    if ops.len() > MAX_BATCH_OPERATIONS {
        return Err(TableError::Invalid(format!(
            "batch on {table}: {} operations; an entity group transaction holds at most {MAX_BATCH_OPERATIONS}",
            ops.len()
        )));
    }
    check_key("PartitionKey", pk)?;
    let mut rows = std::collections::HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(e) = op.entity() {
            if e.partition_key != pk {
                return Err(TableError::Invalid(format!(
                    "batch on {table}: operation {i} ({}) is for PartitionKey {:?}, the batch for {pk:?}; a transaction holds one partition",
                    op.name(),
                    e.partition_key
                )));
            }
            check_entity(e).map_err(|err| in_op(i, op, err))?;
        } else {
            check_key("RowKey", op.row_key()).map_err(|err| in_op(i, op, err))?;
        }
        if !rows.insert(op.row_key()) {
            return Err(TableError::Invalid(format!(
                "batch on {table}: operation {i} ({}) is the second on RowKey {:?}; a transaction touches each entity once",
                op.name(),
                op.row_key()
            )));
        }
    }

    let id = uuid::Uuid::new_v4();
    let batch = format!("batch_{id}");
    let changeset = format!("changeset_{id}");
    let mut body = String::new();
    body.push_str(&format!("--{batch}\r\n"));
    body.push_str(&format!(
        "Content-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
    ));
    for (i, op) in ops.iter().enumerate() {
        body.push_str(&format!("--{changeset}\r\n"));
        body.push_str("Content-Type: application/http\r\n");
        body.push_str("Content-Transfer-Encoding: binary\r\n\r\n");
        let (method, url, if_match) = match op {
            BatchOp::Insert(_) => ("POST", format!("{endpoint}/{table}"), None),
            BatchOp::Upsert(e) => ("PUT", entity_url(endpoint, table, e), None),
            BatchOp::Replace { entity, if_match } => {
                ("PUT", entity_url(endpoint, table, entity), Some(if_match))
            }
            BatchOp::Merge { entity, if_match } => {
                ("MERGE", entity_url(endpoint, table, entity), Some(if_match))
            }
            BatchOp::Delete { row_key, if_match } => (
                "DELETE",
                format!("{endpoint}/{}", entity_path(table, pk, row_key)),
                Some(if_match),
            ),
        };
        body.push_str(&format!("{method} {url} HTTP/1.1\r\n"));
        body.push_str(&format!("Content-ID: {}\r\n", i + 1));
        body.push_str("Accept: application/json;odata=nometadata\r\n");
        body.push_str("DataServiceVersion: 3.0;\r\n");
        if let Some(m) = if_match {
            body.push_str(&format!("If-Match: {}\r\n", m.header()));
        }
        match op.entity() {
            Some(e) => {
                body.push_str("Content-Type: application/json\r\n");
                body.push_str("Prefer: return-no-content\r\n\r\n");
                // One line: the JSON serializer escapes newlines inside strings.
                body.push_str(&e.to_wire().to_string());
                body.push_str("\r\n");
            }
            None => body.push_str("\r\n"),
        }
    }
    body.push_str(&format!("--{changeset}--\r\n"));
    body.push_str(&format!("--{batch}--\r\n"));
    if body.len() > MAX_BATCH_BYTES {
        return Err(TableError::Invalid(format!(
            "batch on {table}: {} bytes; an entity group transaction carries at most {MAX_BATCH_BYTES}",
            body.len()
        )));
    }
    Ok(BatchBody {
        content_type: format!("multipart/mixed; boundary={batch}"),
        body: body.into_bytes(),
    })
}

fn entity_url(endpoint: &str, table: &str, e: &Entity) -> String {
    format!(
        "{endpoint}/{}",
        entity_path(table, &e.partition_key, &e.row_key)
    )
}

fn in_op(i: usize, op: &BatchOp, err: TableError) -> TableError {
    match err {
        TableError::Invalid(m) => {
            TableError::Invalid(format!("batch operation {i} ({}): {m}", op.name()))
        }
        other => other,
    }
}

/// One operation's answer inside the change set.
#[derive(Debug)]
struct SubResponse {
    status: u16,
    etag: Option<String>,
    body: String,
}

/// Each operation's new ETag (`None` for a delete), or the operation that failed.
pub(crate) fn parse_response(
    op: &str,
    body: &str,
    expected: usize,
) -> Result<Vec<Option<String>>, TableError> {
    let parts = sub_responses(body);
    if let Some((position, failed)) = parts
        .iter()
        .enumerate()
        .find(|(_, p)| !(200..300).contains(&p.status))
    {
        let (code, message) = service_error(&failed.body);
        let message = first_line(&message);
        // The index the service prefixes; the part's position if it did not.
        let (index, message) = match message.split_once(':') {
            Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (n.parse().unwrap_or(position), rest.trim())
            }
            _ => (position, message),
        };
        return Err(TableError::BatchFailed {
            op: op.to_string(),
            index,
            status: failed.status,
            code: code.unwrap_or_else(|| "none".into()),
            message: message.to_string(),
        });
    }
    if parts.len() != expected {
        return Err(TableError::Protocol {
            op: op.to_string(),
            message: format!(
                "{} operation answers in the batch response, {expected} operations sent",
                parts.len()
            ),
        });
    }
    Ok(parts.into_iter().map(|p| p.etag).collect())
}

/// The `HTTP/1.1 NNN …` parts of a batch response, in order. Boundaries
/// are not needed to find them: MIME part headers and boundary lines
/// never start with `HTTP/`, and a part's body runs to the next boundary.
fn sub_responses(body: &str) -> Vec<SubResponse> {
    #[derive(PartialEq)]
    enum At {
        Outside,
        Headers,
        Body,
    }
    let mut parts: Vec<SubResponse> = Vec::new();
    let mut at = At::Outside;
    for line in body.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("--") {
            at = At::Outside;
            continue;
        }
        match at {
            At::Outside => {
                if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
                    let status = rest
                        .split_whitespace()
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    parts.push(SubResponse {
                        status,
                        etag: None,
                        body: String::new(),
                    });
                    at = At::Headers;
                }
            }
            At::Headers => {
                if line.is_empty() {
                    at = At::Body;
                } else if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("etag") {
                        if let Some(p) = parts.last_mut() {
                            p.etag = Some(value.trim().to_string());
                        }
                    }
                }
            }
            At::Body => {
                if let Some(p) = parts.last_mut() {
                    if !p.body.is_empty() {
                        p.body.push('\n');
                    }
                    p.body.push_str(line);
                }
            }
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "https://acct.table.core.windows.net";

    fn text(ops: &[BatchOp]) -> String {
        String::from_utf8(build(ENDPOINT, "builds", "p", ops).unwrap().body).unwrap()
    }

    #[test]
    fn each_operation_is_an_http_request_inside_one_change_set() {
        let body = text(&[
            BatchOp::Insert(Entity::new("p", "a").with("N", 1)),
            BatchOp::Delete {
                row_key: "b".into(),
                if_match: IfMatch::Etag("W/\"1\"".into()),
            },
        ]);
        let lines: Vec<&str> = body.split("\r\n").collect();
        assert!(lines[0].starts_with("--batch_"));
        assert!(lines[1].starts_with("Content-Type: multipart/mixed; boundary=changeset_"));
        assert!(body.contains(
            "POST https://acct.table.core.windows.net/builds HTTP/1.1\r\nContent-ID: 1\r\n"
        ));
        assert!(body.contains("\r\n\r\n{\"PartitionKey\":\"p\",\"RowKey\":\"a\",\"N\":1}\r\n"));
        assert!(body.contains(
            "DELETE https://acct.table.core.windows.net/builds(PartitionKey='p',RowKey='b') HTTP/1.1\r\nContent-ID: 2\r\n"
        ));
        assert!(body.contains("If-Match: W/\"1\"\r\n"));
        assert_eq!(body.matches("Content-Type: application/http").count(), 2);
        assert!(body.ends_with("--\r\n"));
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let insert = |rk: String| BatchOp::Insert(Entity::new("p", rk));
        let too_many: Vec<_> = (0..101).map(|i| insert(format!("r{i}"))).collect();
        let e = build(ENDPOINT, "builds", "p", &too_many)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("101 operations; an entity group transaction holds at most 100"),
            "{e}"
        );
        let e = build(
            ENDPOINT,
            "builds",
            "p",
            &[BatchOp::Insert(Entity::new("q", "r"))],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("operation 0 (insert) is for PartitionKey \"q\""),
            "{e}"
        );
        let e = build(
            ENDPOINT,
            "builds",
            "p",
            &[insert("r".into()), insert("r".into())],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("operation 1 (insert) is the second on RowKey \"r\""),
            "{e}"
        );
        let e = build(ENDPOINT, "builds", "p", &[insert("a/b".into())])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("batch operation 0 (insert): RowKey \"a/b\" contains '/'"),
            "{e}"
        );
        let big = |i: usize| {
            let mut e = Entity::new("p", format!("r{i}"));
            for j in 0..15 {
                e.set(&format!("C{j}"), "x".repeat(32 * 1024));
            }
            BatchOp::Upsert(e)
        };
        let e = build(
            ENDPOINT,
            "builds",
            "p",
            &(0..10).map(big).collect::<Vec<_>>(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("bytes; an entity group transaction carries at most 4194304"),
            "{e}"
        );
        assert!(build(ENDPOINT, "builds", "p", &[]).is_err());
    }

    const SUCCESS: &str = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 204 No Content\r\nContent-ID: 1\r\nETag: W/\"0x8D101F7E4B662C4\"\r\n\r\n\r\n--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 204 No Content\r\nContent-ID: 2\r\nDataServiceVersion: 1.0;\r\n\r\n\r\n--changesetresponse_2--\r\n--batchresponse_1--\r\n";

    #[test]
    fn a_committed_batch_gives_each_operations_etag_in_order() {
        assert_eq!(
            parse_response("b", SUCCESS, 2).unwrap(),
            vec![Some("W/\"0x8D101F7E4B662C4\"".to_string()), None]
        );
        assert!(matches!(
            parse_response("b", SUCCESS, 3),
            Err(TableError::Protocol { .. })
        ));
    }

    #[test]
    fn a_failed_batch_names_the_index_the_service_put_in_the_message() {
        let failed = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 409 Conflict\r\nContent-ID: 3\r\nContent-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8\r\n\r\n{\"odata.error\":{\"code\":\"EntityAlreadyExists\",\"message\":{\"lang\":\"en-US\",\"value\":\"2:The specified entity already exists.\\nRequestId:x\\nTime:y\"}}}\r\n--changesetresponse_2--\r\n--batchresponse_1--\r\n";
        match parse_response("b", failed, 3).unwrap_err() {
            TableError::BatchFailed {
                index,
                status,
                code,
                message,
                ..
            } => {
                assert_eq!((index, status), (2, 409));
                assert_eq!(code, "EntityAlreadyExists");
                assert_eq!(message, "The specified entity already exists.");
            }
            other => panic!("{other:?}"),
        }
    }
}
