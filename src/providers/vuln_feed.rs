//! The vulnerability feed the gate reads: an OSV file, folder or zip on
//! disk (`KILN_OSV_FEED`), kept up to date from a URL when one is given
//! (`KILN_OSV_FEED_URL`, downloaded into the data folder by
//! [`super::osv_feed`]). Loaded again only when the file changed, so a
//! build's evidence step does not parse tens of megabytes each time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;

use super::osv_feed::{FeedOptions, OsvFeedSource, Refresh};
use crate::domain::evidence::osv::{self, Feed};
use crate::ports::{FeedRefresh, VulnerabilityFeed};

/// What identifies a loaded copy: the path's size and modification time
/// (a folder's entries' too).
type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub struct FileFeed {
    path: Option<PathBuf>,
    url: Option<String>,
    /// The timer's downloads: patient (several attempts, long timeouts).
    source: Option<OsvFeedSource>,
    /// The gate's own: one attempt of at most [`GATE_DOWNLOAD_TIMEOUT`],
    /// since a build's evidence step waits for it.
    quick: Option<OsvFeedSource>,
    cache: Mutex<Option<(Stamp, Arc<Feed>)>>,
    /// One download at a time from this process (two evidence steps at
    /// once on a cold instance would both fetch the feed), and when this
    /// process may look again (see [`MAX_AGE`], [`RETRY_AFTER_FAILURE`]).
    downloading: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// A downloaded copy older than this is refreshed before it is used. The
/// `evidence_recheck` timer (every six hours) refreshes the copy of the
/// instance it runs on; every other instance of a scaled-out app has its
/// own data folder, so it fetches its first copy on first use and a newer
/// one once its copy is this old (a conditional GET: usually a 304).
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// After a failed download, the gate goes on with the copy on hand (or
/// none) and this process does not try again for this long: an unreachable
/// feed must not make every build wait out the download's retries.
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The gate's download: well inside a Functions invocation's budget.
const GATE_DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

impl FileFeed {
    /// `path`: where the feed is; with `url`, where it is downloaded to.
    pub fn new(path: Option<PathBuf>, url: Option<String>) -> anyhow::Result<Self> {
        let (source, quick) = match &url {
            Some(_) => (
                Some(OsvFeedSource::new(FeedOptions::default())?),
                Some(OsvFeedSource::new(FeedOptions {
                    timeout: GATE_DOWNLOAD_TIMEOUT,
                    max_attempts: 1,
                    ..FeedOptions::default()
                })?),
            ),
            None => (None, None),
        };
        Ok(Self {
            path,
            url,
            source,
            quick,
            cache: Mutex::new(None),
            downloading: tokio::sync::Mutex::new(None),
        })
    }

    /// With a URL: downloads the feed when this instance has no copy, or
    /// has one older than [`MAX_AGE`] and has not looked since. A download
    /// already under way in this process is not waited for when a copy is
    /// on hand. A failed download is logged and the copy on hand (if any)
    /// is used; the gate's findings name the feed they were judged by.
    async fn ensure_fresh(&self) {
        let (Some(_), Some(path)) = (&self.url, &self.path) else {
            return;
        };
        let copy_age = || {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .map(|t| t.elapsed().unwrap_or_default())
        };
        if copy_age().is_some_and(|a| a < MAX_AGE) {
            return;
        }
        let mut next = match (copy_age(), self.downloading.try_lock()) {
            (_, Ok(guard)) => guard,
            // Someone else is downloading: use the copy on hand.
            (Some(_), Err(_)) => return,
            // No copy yet: wait for theirs.
            (None, Err(_)) => self.downloading.lock().await,
        };
        let now = std::time::Instant::now();
        if next.is_some_and(|at| now < at) || copy_age().is_some_and(|a| a < MAX_AGE) {
            return;
        }
        let had_copy = copy_age().is_some();
        let outcome = self.download(self.quick.as_ref()).await;
        *next = Some(
            now + match outcome {
                FeedRefresh::Refreshed { .. } | FeedRefresh::NotModified => MAX_AGE,
                FeedRefresh::Failed(_) | FeedRefresh::NotConfigured => RETRY_AFTER_FAILURE,
            },
        );
        match outcome {
            FeedRefresh::Refreshed { advisories } => tracing::info!(
                advisories,
                first = !had_copy,
                "vulnerability feed downloaded for the gate"
            ),
            FeedRefresh::NotModified => {}
            FeedRefresh::Failed(why) => tracing::warn!(
                error = %why,
                retry_in_s = RETRY_AFTER_FAILURE.as_secs(),
                "cannot refresh the vulnerability feed; the gate uses the copy on hand"
            ),
            FeedRefresh::NotConfigured => {}
        }
    }

    async fn download(&self, source: Option<&OsvFeedSource>) -> FeedRefresh {
        let (Some(url), Some(path), Some(source)) = (&self.url, &self.path, source) else {
            return FeedRefresh::NotConfigured;
        };
        match source.refresh(url, path).await {
            Refresh::Refreshed { advisories } => FeedRefresh::Refreshed { advisories },
            Refresh::NotModified => FeedRefresh::NotModified,
            Refresh::Failed(why) => FeedRefresh::Failed(why),
        }
    }
}

impl FileFeed {
    /// The feed settings: `KILN_OSV_FEED` (a path) and `KILN_OSV_FEED_URL`;
    /// a URL without a path downloads to `<data dir>/osv/feed.zip` (or
    /// `.json` when the URL names a JSON file).
    pub fn from_settings(
        path: Option<PathBuf>,
        url: Option<String>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let path = match (path, &url) {
            (Some(p), _) => Some(p),
            (None, Some(u)) => {
                let name = if u.split('?').next().unwrap_or(u).ends_with(".json") {
                    "feed.json"
                } else {
                    "feed.zip"
                };
                Some(data_dir.join("osv").join(name))
            }
            (None, None) => None,
        };
        Self::new(path, url)
    }
}

fn stamp(path: &std::path::Path) -> std::io::Result<Stamp> {
    let md = std::fs::metadata(path)?;
    let mut out = vec![(path.to_path_buf(), md.len(), md.modified().ok())];
    if md.is_dir() {
        for e in std::fs::read_dir(path)?.flatten() {
            if let Ok(m) = e.metadata() {
                out.push((e.path(), m.len(), m.modified().ok()));
            }
        }
        out.sort();
    }
    Ok(out)
}

#[async_trait]
impl VulnerabilityFeed for FileFeed {
    async fn current(&self) -> anyhow::Result<Option<Arc<Feed>>> {
        let Some(path) = self.path.clone() else {
            return Ok(None);
        };
        self.ensure_fresh().await;
        let now = match stamp(&path) {
            Ok(s) => s,
            // A URL's first download has not happened yet: no feed, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.url.is_some() => {
                return Ok(None)
            }
            Err(e) => anyhow::bail!("the vulnerability feed {}: {e}", path.display()),
        };
        if let Some((s, feed)) = self.cache.lock().expect("feed cache").as_ref() {
            if *s == now {
                return Ok(Some(feed.clone()));
            }
        }
        let feed = Arc::new(
            tokio::task::spawn_blocking(move || osv::load(&path))
                .await
                .map_err(|e| anyhow::anyhow!("loading the feed: {e}"))??,
        );
        *self.cache.lock().expect("feed cache") = Some((now, feed.clone()));
        Ok(Some(feed))
    }

    /// The timer's refresh: always asks (a conditional GET), one download
    /// at a time with the gate's own.
    async fn refresh(&self) -> FeedRefresh {
        let mut next = self.downloading.lock().await;
        let outcome = self.download(self.source.as_ref()).await;
        // The timer asks regardless; the gate's next look waits as after its own try.
        *next = Some(
            std::time::Instant::now()
                + match outcome {
                    FeedRefresh::Refreshed { .. } | FeedRefresh::NotModified => MAX_AGE,
                    FeedRefresh::Failed(_) | FeedRefresh::NotConfigured => RETRY_AFTER_FAILURE,
                },
        );
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advisory(id: &str, modified: &str) -> String {
        format!(
            r#"{{"id":"{id}","modified":"{modified}","affected":[{{"package":{{"ecosystem":"Debian:12","name":"jq"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"1.6-2.2"}}]}}]}}]}}"#
        )
    }

    #[tokio::test]
    async fn the_feed_is_loaded_again_only_when_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("feed.json");
        std::fs::write(
            &file,
            format!("[{}]", advisory("KILN-TEST-1", "2026-11-01T00:00:00Z")),
        )
        .unwrap();
        let feed = FileFeed::new(Some(file.clone()), None).unwrap();
        let a = feed.current().await.unwrap().unwrap();
        let b = feed.current().await.unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "an unchanged file must not be parsed again"
        );
        assert_eq!(a.len(), 1);
        std::fs::write(
            &file,
            format!(
                "[{},{}]",
                advisory("KILN-TEST-1", "2026-11-01T00:00:00Z"),
                advisory("KILN-TEST-2", "2026-11-02T00:00:00Z")
            ),
        )
        .unwrap();
        let c = feed.current().await.unwrap().unwrap();
        assert_eq!(c.len(), 2);
        assert_ne!(a.digest(), c.digest());
        assert_eq!(feed.refresh().await, FeedRefresh::NotConfigured);
    }

    #[tokio::test]
    async fn no_path_is_no_feed_and_a_missing_path_is_an_error_that_names_it() {
        assert!(FileFeed::new(None, None)
            .unwrap()
            .current()
            .await
            .unwrap()
            .is_none());
        let e = FileFeed::new(Some("/nonexistent/osv".into()), None)
            .unwrap()
            .current()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/osv"), "{e}");
    }

    /// An instance that never ran the refresh timer (another instance of a
    /// scaled-out app did) fetches its own copy when the gate first needs it.
    #[tokio::test]
    async fn an_instance_without_a_copy_downloads_the_feed_on_first_use() {
        let upstream = tempfile::tempdir().unwrap();
        let source = upstream.path().join("all.json");
        std::fs::write(
            &source,
            format!("[{}]", advisory("KILN-TEST-9", "2026-11-01T00:00:00Z")),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let url = format!("file://{}", source.display());
        let feed = FileFeed::from_settings(None, Some(url), data.path()).unwrap();
        let loaded = feed
            .current()
            .await
            .unwrap()
            .expect("downloaded on first use");
        assert!(loaded.get("KILN-TEST-9").is_some());
        assert!(data.path().join("osv/feed.json").exists());
        // Six hours later, with the source gone: one failed try, then the
        // copy on hand, and no second try within the quarter hour.
        let copy = data.path().join("osv/feed.json");
        let old = SystemTime::now() - std::time::Duration::from_secs(7 * 3600);
        std::fs::File::options()
            .append(true)
            .open(&copy)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::remove_file(&source).unwrap();
        let fresh = FileFeed::from_settings(
            None,
            Some(format!("file://{}", source.display())),
            data.path(),
        )
        .unwrap();
        let loaded = fresh.current().await.unwrap().expect("the copy on hand");
        assert!(loaded.get("KILN-TEST-9").is_some());
        let next = fresh
            .downloading
            .lock()
            .await
            .expect("the failed try is remembered");
        assert!(next > std::time::Instant::now() + std::time::Duration::from_secs(14 * 60));
        // The source is back with a new advisory: within the quarter hour
        // the gate does not look, so it still judges by the copy on hand.
        std::fs::write(
            &source,
            format!(
                "[{},{}]",
                advisory("KILN-TEST-9", "2026-11-01T00:00:00Z"),
                advisory("KILN-TEST-10", "2026-11-02T00:00:00Z")
            ),
        )
        .unwrap();
        let again = fresh.current().await.unwrap().unwrap();
        assert!(again.get("KILN-TEST-10").is_none(), "no second try yet");
        // The timer's refresh always asks, and the gate then has it.
        assert!(matches!(
            fresh.refresh().await,
            FeedRefresh::Refreshed { .. }
        ));
        let now = fresh.current().await.unwrap().unwrap();
        assert!(now.get("KILN-TEST-10").is_some());
    }
}
