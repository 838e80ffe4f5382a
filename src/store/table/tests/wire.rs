//! What Azurite cannot show: the bearer header, throttling and retries
//! (scripted with wiremock), and refusals that never reach a server.

use std::sync::Arc;
use std::time::Duration;

use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::providers::azure::arm::testing::{RecordedPauses, TOKEN};
use crate::providers::azure::identity::StaticToken;
use crate::store::table::*;

fn bearer_client(server: &MockServer) -> (TableClient, Arc<RecordedPauses>) {
    let pauses = Arc::new(RecordedPauses::default());
    let client = TableClient::with_token(
        reqwest::Client::new(),
        &server.uri(),
        Arc::new(StaticToken::new(TOKEN)),
    )
    .unwrap()
    .with_pause(pauses.clone());
    (client, pauses)
}

fn conflict() -> ResponseTemplate {
    ResponseTemplate::new(409).set_body_string(
        r#"{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"The specified entity already exists.\nRequestId:r\nTime:t"}}}"#,
    )
}

#[tokio::test]
async fn a_bearer_token_is_sent_with_the_version_entra_id_needs() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/builds"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("x-ms-version", API_VERSION))
        .and(header("content-type", "application/json"))
        .and(header("prefer", "return-no-content"))
        .and(header("dataserviceversion", "3.0;NetFx"))
        .and(header_exists("x-ms-date"))
        .and(header_exists("x-ms-client-request-id"))
        .respond_with(ResponseTemplate::new(204).insert_header("ETag", "W/\"1\""))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = bearer_client(&server);
    let etag = client
        .insert("builds", &Entity::new("p", "r"))
        .await
        .unwrap();
    assert_eq!(etag, "W/\"1\"");
}

#[tokio::test]
async fn a_busy_service_is_retried_and_a_retried_insert_that_had_landed_reads_as_a_conflict() {
    let server = MockServer::start().await;
    // The first attempt lands but its answer is lost (503 here); the retry
    // meets the entity the first attempt wrote.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "2"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(conflict())
        .mount(&server)
        .await;
    let (client, pauses) = bearer_client(&server);
    let e = client
        .insert("builds", &Entity::new("p", "r"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, TableError::Conflict { ref code, .. } if code == "EntityAlreadyExists"),
        "{e:?}"
    );
    assert_eq!(
        pauses.taken(),
        [Duration::from_secs(2)],
        "Retry-After honoured"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn throttling_that_outlasts_the_policy_is_reported_as_throttled() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-ms-error-code", "ServerBusy")
                .insert_header("x-ms-request-id", "req-1"),
        )
        .mount(&server)
        .await;
    let (client, pauses) = bearer_client(&server);
    let e = client.get("builds", "p", "r").await.unwrap_err();
    match &e {
        TableError::Throttled {
            status, message, ..
        } => {
            assert_eq!(*status, 429);
            assert!(
                message.contains("ServerBusy") && message.contains("req-1"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pauses.taken().len(), 3, "four attempts, three waits");
    assert!(!format!("{e} {e:?}").contains(TOKEN));

    // A Retry-After longer than one call may wait gives the answer back at once.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "120"))
        .mount(&server)
        .await;
    let (client, pauses) = bearer_client(&server);
    let e = client.get("builds", "p", "r").await.unwrap_err();
    assert!(
        matches!(e, TableError::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(120)),
        "{e:?}"
    );
    assert!(pauses.taken().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported_with_the_operation() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pauses = Arc::new(RecordedPauses::default());
    let client = TableClient::with_token(
        reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}"),
        Arc::new(StaticToken::new(TOKEN)),
    )
    .unwrap()
    .with_pause(pauses.clone());
    let e = client
        .delete("builds", "p", "r", IfMatch::Any)
        .await
        .unwrap_err();
    assert!(matches!(e, TableError::Transport { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("delete builds (PartitionKey \"p\", RowKey \"r\"): DELETE"),
        "{e}"
    );
    assert_eq!(pauses.taken().len(), 3);
}

/// A client whose every request would fail to connect: a refusal that
/// comes back as `Invalid` was decided before sending.
fn unreachable() -> TableClient {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    TableClient::from_connection_string(
        reqwest::Client::new(),
        &crate::config::Secret::new(format!(
            "AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
            auth::DEV_ACCOUNT_KEY
        )),
    )
    .unwrap()
    .with_options(TableOptions {
        timeout: Duration::from_secs(1),
        retry: RetryPolicy::none(),
    })
}

fn refused(r: Result<impl std::fmt::Debug, TableError>) -> String {
    match r {
        Err(TableError::Invalid(m)) => m,
        other => panic!("expected a refusal before sending, got {other:?}"),
    }
}

#[tokio::test]
async fn a_partition_key_with_a_slash_is_refused_before_sending() {
    let m = refused(
        unreachable()
            .insert("builds", &Entity::new("a/b", "r"))
            .await,
    );
    assert!(m.contains("PartitionKey \"a/b\" contains '/'"), "{m}");
}

#[tokio::test]
async fn an_entity_of_1_1_mib_is_refused_before_sending() {
    let mut e = Entity::new("p", "r");
    for i in 0..18 {
        // 18 × 64 KiB (as UTF-16) ≈ 1.1 MiB.
        e.set(&format!("Part{i}"), "x".repeat(32 * 1024));
    }
    let m = refused(unreachable().upsert("builds", &e).await);
    assert!(m.contains("Table Storage allows 1048576 per entity"), "{m}");
}

#[tokio::test]
async fn a_batch_of_101_operations_is_refused_before_sending() {
    let ops: Vec<_> = (0..101)
        .map(|i| BatchOp::Insert(Entity::new("p", format!("r{i}"))))
        .collect();
    let m = refused(unreachable().batch("builds", "p", &ops).await);
    assert!(m.contains("101 operations"), "{m}");
}
