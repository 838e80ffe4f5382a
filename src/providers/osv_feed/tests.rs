//! The feed refresh against a local HTTP server: conditional GET, a bad
//! body kept out, and a transient failure retried.

use std::time::Duration;

use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

fn advisory(id: &str) -> String {
    format!(
        r#"[{{"id": "{id}", "modified": "2026-11-01T00:00:00Z", "affected": [{{"package": {{"ecosystem": "Debian:12", "name": "curl"}},
            "ranges": [{{"type": "ECOSYSTEM", "events": [{{"introduced": "0"}}, {{"fixed": "7.88.1-10+deb12u99"}}]}}]}}]}},
           {{"id": "{id}-b", "modified": "2026-11-01T00:00:00Z"}}]"#
    )
}

fn quick() -> OsvFeedSource {
    OsvFeedSource::new(FeedOptions {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::Idempotent,
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        retry_after_max: Duration::from_secs(1),
    })
    .unwrap()
}

#[tokio::test]
async fn a_download_replaces_the_feed_and_an_unchanged_one_is_a_304() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("feed.json");
    let url = format!("{}/Debian/all.json", server.uri());
    // Only a request carrying the remembered ETag gets the 304.
    Mock::given(method("GET"))
        .and(path("/Debian/all.json"))
        .and(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304))
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Debian/all.json"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .insert_header("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT")
                .set_body_string(advisory("DSA-9901-1")),
        )
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;

    let source = quick();
    assert_eq!(
        source.refresh(&url, &target).await,
        Refresh::Refreshed { advisories: 2 }
    );
    let remembered = read_validators(&target).unwrap();
    assert_eq!(remembered.etag.as_deref(), Some("\"v1\""));
    assert_eq!(
        remembered.last_modified.as_deref(),
        Some("Sun, 01 Nov 2026 00:00:00 GMT")
    );
    assert_eq!(source.refresh(&url, &target).await, Refresh::NotModified);
    assert_eq!(
        crate::domain::evidence::osv::load(&target).unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_corrupt_body_keeps_the_old_feed() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("feed.json");
    std::fs::write(&target, advisory("DSA-1000-1")).unwrap();
    let before = std::fs::read(&target).unwrap();
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(r#"[{"id": "DSA-9901-1", "modified": "#),
        )
        .mount(&server)
        .await;

    let got = quick()
        .refresh(&format!("{}/all.json", server.uri()), &target)
        .await;
    let Refresh::Failed(why) = got else {
        panic!("{got:?}")
    };
    assert!(why.contains("not replaced"), "{why}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
    // No temporary file is left beside it, and no validators for the bad body.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("feed.json")]);
}

#[tokio::test]
async fn an_empty_feed_does_not_replace_a_good_one_and_no_url_reaches_the_disk() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("feed.json");
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string(advisory("DSA-1000-1")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&server)
        .await;
    let url = format!("{}/all.json?sv=2024&sig=SECRETSIGNATUREVALUE", server.uri());
    assert_eq!(
        quick().refresh(&url, &target).await,
        Refresh::Refreshed { advisories: 2 }
    );
    let before = std::fs::read(&target).unwrap();
    let got = quick().refresh(&url, &target).await;
    let Refresh::Failed(why) = got else {
        panic!("{got:?}")
    };
    assert!(why.contains("holds no advisory"), "{why}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        assert!(
            !text.contains("SECRETSIGNATUREVALUE"),
            "a signature reached the disk: {text}"
        );
    }
}

#[tokio::test]
async fn a_503_is_retried_and_the_next_answer_counts() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("all.zip");
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string(advisory("DSA-9901-1")))
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;

    assert_eq!(
        quick()
            .refresh(&format!("{}/all.zip", server.uri()), &target)
            .await,
        Refresh::Refreshed { advisories: 2 }
    );
}

#[tokio::test]
async fn a_404_is_not_retried_and_says_so_without_the_query_string() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let url = format!("{}/all.zip?sig=SECRETSIGNATURE", server.uri());
    let got = quick().refresh(&url, &dir.path().join("all.zip")).await;
    let Refresh::Failed(why) = got else {
        panic!("{got:?}")
    };
    assert!(why.contains("404"), "{why}");
    assert!(!why.contains("SECRETSIGNATURE"), "{why}");
}

#[tokio::test]
async fn a_file_url_is_copied_in_and_the_same_content_is_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("mirror.json");
    std::fs::write(&source, advisory("DSA-9901-1")).unwrap();
    let target = dir.path().join("feed").join("feed.json");
    let url = format!("file://{}", source.display());
    assert_eq!(
        quick().refresh(&url, &target).await,
        Refresh::Refreshed { advisories: 2 }
    );
    assert_eq!(quick().refresh(&url, &target).await, Refresh::NotModified);
    let got = quick()
        .refresh("ftp://example.invalid/all.zip", &target)
        .await;
    assert!(
        matches!(got, Refresh::Failed(ref why) if why.contains("file://")),
        "{got:?}"
    );
}
