//! The Table Storage test fixture seen from an integration test: Azurite
//! starts from the library's `testing` module, and a missing Azurite fails
//! loudly instead of skipping.

use kiln::store::table::testing::Azurite;
use kiln::store::table::{Entity, TableClient};

#[tokio::test]
async fn a_client_built_from_the_fixtures_connection_string_reads_its_own_writes() {
    let azurite = Azurite::start();
    let client =
        TableClient::from_connection_string(reqwest::Client::new(), &azurite.connection_string())
            .unwrap();
    client.create_table_if_missing("runs").await.unwrap();
    let etag = client
        .upsert(
            "runs",
            &Entity::new("pipeline", "run-1").with("Attempt", 2_i64),
        )
        .await
        .unwrap();
    let back = client
        .get("runs", "pipeline", "run-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.etag, Some(etag));
    assert_eq!(back.get_i64("Attempt").unwrap(), Some(2));
}

#[test]
fn a_missing_azurite_fails_the_test_and_says_how_to_install_it() {
    let panic = std::panic::catch_unwind(|| Azurite::start_program("/nonexistent/azurite-table"))
        .err()
        .expect("starting a missing Azurite must fail");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("cannot run /nonexistent/azurite-table"),
        "{message}"
    );
    assert!(message.contains("scripts/setup-debian.sh"), "{message}");
}
