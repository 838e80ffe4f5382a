//! The instances of a scaled-out Function App: every invocation and every
//! forwarded HTTP request goes to one live instance, round-robin.
//!
//! An instance that refuses a connection is taken out of rotation (its
//! process is gone, as the platform finds out when an instance dies) and
//! probed with `GET /` until it answers again or is replaced
//! ([`super::HostHandle::replace_instance`]). A timeout or a 5xx fails the
//! invocation but leaves the instance in rotation: it is alive, only slow or
//! failing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How often an instance out of rotation is probed.
const PROBE_EVERY: Duration = Duration::from_millis(100);

struct Slot {
    url: String,
    live: bool,
    /// Bumped when the slot gets a new process, so that a failure seen on
    /// the old one does not take the new one out of rotation.
    generation: u64,
}

/// The instance one call went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Picked {
    pub index: usize,
    pub url: String,
    generation: u64,
}

pub(super) struct Instances {
    slots: Mutex<Vec<Slot>>,
    next: AtomicUsize,
    /// Wakes callers waiting for a live instance.
    changed: Notify,
}

impl Instances {
    pub fn new(urls: &[String]) -> Self {
        Self {
            slots: Mutex::new(
                urls.iter()
                    .map(|u| Slot {
                        url: u.clone(),
                        live: true,
                        generation: 0,
                    })
                    .collect(),
            ),
            next: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn urls(&self) -> Vec<String> {
        self.slots().iter().map(|s| s.url.clone()).collect()
    }

    /// The next live instance after the last one picked, if any is live.
    pub fn try_pick(&self) -> Option<Picked> {
        let slots = self.slots();
        let n = slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| (start + i) % n).find_map(|i| {
            let s = &slots[i];
            s.live.then(|| Picked {
                index: i,
                url: s.url.clone(),
                generation: s.generation,
            })
        })
    }

    /// The next live instance; waits while none is, up to `wait`.
    pub async fn pick(&self, wait: Duration) -> Option<Picked> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            if let Some(p) = self.try_pick() {
                return Some(p);
            }
            if tokio::time::timeout_at(end, changed).await.is_err() {
                return None;
            }
        }
    }

    /// `p` refused a connection: out of rotation until it answers again.
    pub fn mark_down(&self, p: &Picked) {
        let mut slots = self.slots();
        if let Some(s) = slots.get_mut(p.index) {
            if s.generation == p.generation && s.live {
                tracing::warn!(instance = p.index, url = %p.url, "sim host: instance refused a connection; out of rotation");
                s.live = false;
            }
        }
    }

    /// Puts `url` (already answering) in slot `index`, in rotation.
    pub fn replace(&self, index: usize, url: &str) -> anyhow::Result<()> {
        let mut slots = self.slots();
        let n = slots.len();
        let s = slots
            .get_mut(index)
            .ok_or_else(|| anyhow::anyhow!("no instance {index} (the app has {n})"))?;
        s.url = url.trim_end_matches('/').to_string();
        s.live = true;
        s.generation += 1;
        drop(slots);
        self.changed.notify_waiters();
        Ok(())
    }

    fn back_up(&self, index: usize, generation: u64) {
        let mut slots = self.slots();
        if let Some(s) = slots.get_mut(index).filter(|s| s.generation == generation) {
            s.live = true;
        }
        drop(slots);
        self.changed.notify_waiters();
    }

    /// Probes every instance out of rotation until it answers `GET /`.
    pub async fn probe_down(&self, http: &reqwest::Client, mut stopped: watch::Receiver<bool>) {
        loop {
            let down: Vec<(usize, String, u64)> = self
                .slots()
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.live)
                .map(|(i, s)| (i, s.url.clone(), s.generation))
                .collect();
            for (index, url, generation) in down {
                let answered = http
                    .get(format!("{url}/"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok();
                if answered {
                    tracing::info!(instance = index, %url, "sim host: instance answers again");
                    self.back_up(index, generation);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }
}
