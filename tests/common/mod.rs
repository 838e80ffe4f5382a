//! Fixtures every integration-test crate shares: where the repository is,
//! the shipped pipelines as JSON, the test subscription, and the wall-clock
//! bound each scenario runs under. Each crate under `tests/` includes this
//! file as `mod common`; not every crate uses every item.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// The subscription and resource group the shipped pipelines publish to.
pub const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/Microsoft.Compute";

/// How long one scenario may run on the wall clock before it fails. A hung
/// factory then fails its own test, named, instead of holding the whole run
/// until CI gives up at 90 minutes. Generous: the slowest app-level
/// scenario takes about 20 s on a loaded 2-core machine.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A pipeline shipped in `pipelines/`, as JSON.
pub fn shipped_pipeline(file: &str) -> Value {
    let path = repo().join("pipelines").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped tiny pipeline, publishing to `gallery/image` of [`SUB`].
pub fn tiny_in(gallery: &str, image: &str) -> Value {
    let mut doc = shipped_pipeline("tiny.json");
    doc["properties"]["distribute"][0]["galleryImageId"] =
        json!(format!("{SUB}/galleries/{gallery}/images/{image}"));
    doc
}

/// Runs one test body under [`TEST_LIMIT`].
pub async fn bounded(test: impl Future<Output = ()>) {
    bounded_for(TEST_LIMIT, test).await
}

/// Runs one test body under `limit`, failing the test when it passes.
pub async fn bounded_for(limit: Duration, test: impl Future<Output = ()>) {
    if tokio::time::timeout(limit, test).await.is_err() {
        panic!("the test did not finish within its limit of {limit:?}");
    }
}
