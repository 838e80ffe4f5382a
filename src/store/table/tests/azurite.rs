//! The client against Azurite, the local Table Storage.

use chrono::{TimeZone, Utc};

use crate::config::Secret;
use crate::store::table::testing::Azurite;
use crate::store::table::*;

const T: &str = "builds";

async fn with_table() -> (Azurite, TableClient) {
    let azurite = Azurite::start();
    let client = azurite.client();
    assert!(client.create_table_if_missing(T).await.unwrap());
    (azurite, client)
}

#[tokio::test]
async fn an_entity_round_trips_with_int64_datetime_binary_and_a_60_kib_string() {
    let (_azurite, client) = with_table().await;
    let at = Utc.with_ymd_and_hms(2031, 3, 4, 5, 6, 7).unwrap()
        + chrono::Duration::microseconds(123_456);
    // 60 KiB as the service counts it (UTF-16): 30 Ki characters, under its 32 Ki limit.
    let long = "é".repeat(30 * 1024);
    let bytes: Vec<u8> = (0..=255).collect();
    let e = Entity::new("pipeline-a", "build-0001")
        .with("Big", i64::MAX - 1)
        .with("Negative", -7_i64)
        .with("At", at)
        .with("Blob", bytes.clone())
        .with("Log", long.clone())
        .with("Attempts", 3)
        .with("Done", false)
        .with("Ratio", 0.25)
        .with("Whole", 2.0);
    let etag = client.insert(T, &e).await.unwrap();

    let back = client
        .get(T, "pipeline-a", "build-0001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(back.get_i64("Big").unwrap(), Some(i64::MAX - 1));
    assert_eq!(back.get_i64("Negative").unwrap(), Some(-7));
    assert_eq!(back.get_datetime("At").unwrap(), Some(at));
    assert_eq!(back.get_binary("Blob").unwrap(), Some(bytes));
    assert_eq!(back.get_str("Log").unwrap(), Some(long.as_str()));
    assert_eq!(back.get("Attempts").unwrap(), Some(Property::Int32(3)));
    assert_eq!(back.get_bool("Done").unwrap(), Some(false));
    assert_eq!(back.get("Ratio").unwrap(), Some(Property::Double(0.25)));
    // A whole double must not come back as an Int32.
    assert_eq!(back.get("Whole").unwrap(), Some(Property::Double(2.0)));
    assert!(back.timestamp.is_some());
    let names = |e: &Entity| {
        let mut n: Vec<String> = e.property_names().map(str::to_string).collect();
        n.sort();
        n
    };
    assert_eq!(names(&back), names(&e), "no property lost or added");
}

#[tokio::test]
async fn a_second_insert_of_the_same_keys_is_a_conflict() {
    let (_azurite, client) = with_table().await;
    let e = Entity::new("p", "r").with("N", 1);
    client.insert(T, &e).await.unwrap();
    match client.insert(T, &e.clone().with("N", 2)).await.unwrap_err() {
        TableError::Conflict { code, op, .. } => {
            assert_eq!(code, "EntityAlreadyExists");
            assert!(
                op.contains("insert builds (PartitionKey \"p\", RowKey \"r\")"),
                "{op}"
            );
        }
        other => panic!("{other:?}"),
    }
    let kept = client.get(T, "p", "r").await.unwrap().unwrap();
    assert_eq!(kept.get("N").unwrap(), Some(Property::Int32(1)));
}

#[tokio::test]
async fn a_replace_with_a_stale_etag_is_refused_and_changes_nothing() {
    let (_azurite, client) = with_table().await;
    let first = client
        .insert(T, &Entity::new("p", "r").with("State", "queued"))
        .await
        .unwrap();
    let second = client
        .replace(
            T,
            &Entity::new("p", "r").with("State", "running"),
            IfMatch::Etag(first.clone()),
        )
        .await
        .unwrap();
    assert_ne!(first, second);
    let e = client
        .replace(
            T,
            &Entity::new("p", "r").with("State", "failed"),
            IfMatch::Etag(first),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TableError::PreconditionFailed { .. }), "{e:?}");
    let now = client.get(T, "p", "r").await.unwrap().unwrap();
    assert_eq!(now.get_str("State").unwrap(), Some("running"));
    assert_eq!(now.etag, Some(second));
}

#[tokio::test]
async fn a_delete_with_a_stale_etag_is_refused_and_the_entity_stays() {
    let (_azurite, client) = with_table().await;
    let first = client.insert(T, &Entity::new("p", "r")).await.unwrap();
    let second = client
        .merge(T, &Entity::new("p", "r").with("N", 1), IfMatch::Any)
        .await
        .unwrap();
    let e = client
        .delete(T, "p", "r", IfMatch::Etag(first))
        .await
        .unwrap_err();
    assert!(matches!(e, TableError::PreconditionFailed { .. }), "{e:?}");
    assert!(client.get(T, "p", "r").await.unwrap().is_some());
    client
        .delete(T, "p", "r", IfMatch::Etag(second))
        .await
        .unwrap();
    assert!(client.get(T, "p", "r").await.unwrap().is_none());
    let e = client.delete(T, "p", "r", IfMatch::Any).await.unwrap_err();
    assert!(matches!(e, TableError::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn merge_keeps_other_properties_and_upsert_replaces_them_all() {
    let (_azurite, client) = with_table().await;
    client
        .insert(T, &Entity::new("p", "r").with("A", 1).with("B", 2))
        .await
        .unwrap();
    client
        .merge(T, &Entity::new("p", "r").with("B", 20), IfMatch::Any)
        .await
        .unwrap();
    let e = client.get(T, "p", "r").await.unwrap().unwrap();
    assert_eq!(
        (e.get("A").unwrap(), e.get("B").unwrap()),
        (Some(Property::Int32(1)), Some(Property::Int32(20)))
    );
    client
        .upsert(T, &Entity::new("p", "r").with("C", 3))
        .await
        .unwrap();
    let e = client.get(T, "p", "r").await.unwrap().unwrap();
    assert_eq!(e.property_names().collect::<Vec<_>>(), ["C"]);
    // Upsert also inserts; replace and merge with If-Match need the entity.
    client.upsert(T, &Entity::new("p", "new")).await.unwrap();
    let e = client
        .replace(T, &Entity::new("p", "absent"), IfMatch::Any)
        .await
        .unwrap_err();
    assert!(matches!(e, TableError::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn a_missing_entity_is_none_and_a_missing_table_is_an_error() {
    let (_azurite, client) = with_table().await;
    assert_eq!(client.get(T, "p", "nobody").await.unwrap(), None);
    match client.get("nosuchtable", "p", "r").await.unwrap_err() {
        TableError::NotFound { code, .. } => assert_eq!(code, "TableNotFound"),
        other => panic!("{other:?}"),
    }
    assert!(
        !client.create_table_if_missing(T).await.unwrap(),
        "second create is a no-op"
    );
    assert!(client.delete_table(T).await.unwrap());
    assert!(!client.delete_table(T).await.unwrap());
}

#[tokio::test]
async fn a_batch_of_insert_replace_merge_delete_and_upsert_commits_together() {
    let (_azurite, client) = with_table().await;
    let merged = client
        .insert(T, &Entity::new("p", "merge-me").with("Kept", "yes"))
        .await
        .unwrap();
    let old = client
        .insert(T, &Entity::new("p", "replace-me").with("V", 1))
        .await
        .unwrap();
    let gone = client
        .insert(T, &Entity::new("p", "delete-me"))
        .await
        .unwrap();
    let etags = client
        .batch(
            T,
            "p",
            &[
                BatchOp::Insert(Entity::new("p", "new").with("V", 1)),
                BatchOp::Replace {
                    entity: Entity::new("p", "replace-me").with("V", 2),
                    if_match: IfMatch::Etag(old),
                },
                BatchOp::Delete {
                    row_key: "delete-me".into(),
                    if_match: IfMatch::Etag(gone),
                },
                BatchOp::Upsert(Entity::new("p", "upserted")),
                BatchOp::Merge {
                    entity: Entity::new("p", "merge-me").with("Added", 5_i64),
                    if_match: IfMatch::Etag(merged),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(etags.len(), 5);
    assert!(
        etags[0].is_some() && etags[1].is_some() && etags[3].is_some() && etags[4].is_some(),
        "{etags:?}"
    );
    assert_eq!(etags[2], None, "a delete has no ETag");
    let m = client.get(T, "p", "merge-me").await.unwrap().unwrap();
    assert_eq!(m.get_str("Kept").unwrap(), Some("yes"));
    assert_eq!(m.get_i64("Added").unwrap(), Some(5));
    assert_eq!(m.etag, etags[4]);
    let replaced = client.get(T, "p", "replace-me").await.unwrap().unwrap();
    assert_eq!(replaced.get("V").unwrap(), Some(Property::Int32(2)));
    assert_eq!(replaced.etag, etags[1]);
    assert_eq!(
        client.get(T, "p", "new").await.unwrap().unwrap().etag,
        etags[0]
    );
    assert!(client.get(T, "p", "delete-me").await.unwrap().is_none());
}

#[tokio::test]
async fn a_batch_whose_third_operation_conflicts_commits_nothing_and_names_index_2() {
    let (_azurite, client) = with_table().await;
    client.insert(T, &Entity::new("p", "taken")).await.unwrap();
    let etag = client.insert(T, &Entity::new("p", "keep")).await.unwrap();
    let e = client
        .batch(
            T,
            "p",
            &[
                BatchOp::Insert(Entity::new("p", "a")),
                BatchOp::Delete {
                    row_key: "keep".into(),
                    if_match: IfMatch::Etag(etag),
                },
                BatchOp::Insert(Entity::new("p", "taken")),
                BatchOp::Insert(Entity::new("p", "b")),
            ],
        )
        .await
        .unwrap_err();
    match &e {
        TableError::BatchFailed {
            index,
            status,
            code,
            ..
        } => {
            assert_eq!(*index, 2, "{e}");
            assert_eq!(*status, 409, "{e}");
            assert_eq!(code, "EntityAlreadyExists", "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        client.get(T, "p", "a").await.unwrap().is_none(),
        "operation 0 rolled back"
    );
    assert!(
        client.get(T, "p", "keep").await.unwrap().is_some(),
        "operation 1 rolled back"
    );
    assert!(client.get(T, "p", "b").await.unwrap().is_none());
}

#[tokio::test]
async fn a_query_over_more_than_1000_entities_follows_continuations_to_the_end() {
    let (_azurite, client) = with_table().await;
    for chunk in 0..13 {
        let ops: Vec<_> = (0..100)
            .map(|i| {
                BatchOp::Insert(
                    Entity::new("p", format!("r{:05}", chunk * 100 + i)).with("N", chunk * 100 + i),
                )
            })
            .collect();
        client.batch(T, "p", &ops).await.unwrap();
    }
    let first = client
        .query_page(T, &Filter::all(), None, None, None)
        .await
        .unwrap();
    assert_eq!(first.entities.len(), 1000, "Azurite pages at 1000");
    let next = first
        .continuation
        .expect("a continuation after 1000 of 1300");
    let second = client
        .query_page(T, &Filter::all(), None, None, Some(&next))
        .await
        .unwrap();
    assert_eq!(second.entities.len(), 300);
    assert_eq!(second.entities[0].row_key, "r01000");
    assert_eq!(second.continuation, None);

    let all = client
        .query(T, &Filter::eq("PartitionKey", "p"), Some(&["N"]), None)
        .await
        .unwrap();
    assert_eq!(all.len(), 1300);
    assert!(
        all.iter().all(|e| e.etag.is_some()),
        "each queried entity has its ETag"
    );
    let rows: Vec<i32> = all
        .iter()
        .map(|e| {
            e.get("N")
                .unwrap()
                .map(|p| match p {
                    Property::Int32(n) => n,
                    other => panic!("{other:?}"),
                })
                .unwrap()
        })
        .collect();
    assert_eq!(rows, (0..1300).collect::<Vec<_>>());
    let small_pages = client
        .query(T, &Filter::ge("N", 1250), None, Some(7))
        .await
        .unwrap();
    assert_eq!(small_pages.len(), 50);
}

#[tokio::test]
async fn a_quote_in_a_filter_value_or_a_key_is_data_not_syntax() {
    let (_azurite, client) = with_table().await;
    for rk in ["o'clock", "o", "clock", "x' or RowKey ne 'y"] {
        client
            .insert(T, &Entity::new("p q ü", rk).with("Label", rk))
            .await
            .unwrap();
    }
    let hits = client
        .query(T, &Filter::eq("RowKey", "o'clock"), None, None)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].get_str("Label").unwrap(), Some("o'clock"));
    let hits = client
        .query(T, &Filter::eq("Label", "x' or RowKey ne 'y"), None, None)
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|e| e.row_key.as_str()).collect::<Vec<_>>(),
        ["x' or RowKey ne 'y"]
    );
    let e = client.get(T, "p q ü", "o'clock").await.unwrap().unwrap();
    assert_eq!(e.partition_key, "p q ü");
    client
        .delete(T, "p q ü", "o'clock", IfMatch::Any)
        .await
        .unwrap();
}

#[tokio::test]
async fn int64_and_datetime_filters_compare_as_their_types() {
    let (_azurite, client) = with_table().await;
    let day = |d| Utc.with_ymd_and_hms(2030, 1, d, 0, 0, 0).unwrap();
    for i in 1..=5_i64 {
        client
            .insert(
                T,
                &Entity::new("p", format!("r{i}"))
                    .with("Size", i * 10_000_000_000)
                    .with("At", day(i as u32)),
            )
            .await
            .unwrap();
    }
    let big = client
        .query(T, &Filter::gt("Size", 30_000_000_000_i64), None, None)
        .await
        .unwrap();
    assert_eq!(
        big.iter().map(|e| e.row_key.as_str()).collect::<Vec<_>>(),
        ["r4", "r5"]
    );
    let early = client
        .query(T, &Filter::lt("At", day(3)), None, None)
        .await
        .unwrap();
    assert_eq!(
        early.iter().map(|e| e.row_key.as_str()).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
}

#[tokio::test]
async fn a_wrong_shared_key_is_a_clear_403_that_does_not_contain_the_key() {
    let azurite = Azurite::start();
    let wrong_key = "d3Jvbmcta2V5LXRoYXQtbXVzdC1ub3QtbGVhay0wMTIzNDU2Nzg5";
    let cs = Secret::new(format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={wrong_key};TableEndpoint={}",
        azurite.endpoint()
    ));
    let client = TableClient::from_connection_string(reqwest::Client::new(), &cs).unwrap();
    let e = client.create_table_if_missing(T).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e:?}");
    let shown = format!("{e} {e:?}");
    // The service says AuthenticationFailed, Azurite AuthorizationFailure; both explain.
    assert!(
        shown.starts_with("create table builds: HTTP 403 ("),
        "{shown}"
    );
    assert!(
        shown.contains("Server failed to authenticate the request"),
        "{shown}"
    );
    assert!(!shown.contains(wrong_key), "{shown}");
    assert!(!shown.contains(&wrong_key[..16]), "{shown}");
}

#[tokio::test]
async fn a_bearer_token_is_accepted_over_https_and_an_expired_one_is_refused() {
    use std::sync::Arc;

    use crate::providers::azure::identity::StaticToken;
    use crate::store::table::testing::unsigned_token;

    let azurite = Azurite::start_with_oauth();
    let token = unsigned_token(Utc::now(), chrono::Duration::hours(1));
    let client = azurite.bearer_client(Arc::new(StaticToken::new(token.clone())));
    assert!(client.create_table_if_missing(T).await.unwrap());
    let etag = client
        .insert(T, &Entity::new("p", "r").with("N", 1_i64))
        .await
        .unwrap();
    let back = client.get(T, "p", "r").await.unwrap().unwrap();
    assert_eq!(back.etag, Some(etag));
    let ops = [BatchOp::Upsert(Entity::new("p", "s"))];
    client.batch(T, "p", &ops).await.unwrap();
    assert_eq!(
        client
            .query(T, &Filter::all(), None, None)
            .await
            .unwrap()
            .len(),
        2
    );

    let expired = unsigned_token(Utc::now(), chrono::Duration::hours(-1));
    let e = azurite
        .bearer_client(Arc::new(StaticToken::new(expired.clone())))
        .get(T, "p", "r")
        .await
        .unwrap_err();
    match &e {
        TableError::Http { status, code, .. } => {
            assert_eq!(
                (*status, code.as_str()),
                (403, "AuthenticationFailed"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains(&expired) && !shown.contains(&token),
        "{shown}"
    );
}
