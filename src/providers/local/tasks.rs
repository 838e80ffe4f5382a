//! The registry of build tasks this process runs, and how their watchers wake.
//!
//! One entry per template while its task lives: the cancel signal the task
//! listens to, and a progress channel that `wait_run` (status written) and
//! `cancel` (task ended, staging removed) wait on. The store is the record
//! of a run; this registry only says whether *this* process still runs it,
//! which is how an orphan is told from a live build.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Progress of a run's task, as its watchers see it.
const STATUS_WRITTEN: u8 = 1;
const TASK_ENDED: u8 = 2;

struct RunHandle {
    cancel: watch::Sender<bool>,
    /// 0 running, [`STATUS_WRITTEN`], then [`TASK_ENDED`] (staging removed).
    done: watch::Receiver<u8>,
}

type Running = Arc<Mutex<HashMap<String, RunHandle>>>;

/// The running build tasks of this process, by template name.
#[derive(Default)]
pub(crate) struct Tasks {
    running: Running,
}

impl Tasks {
    pub fn has(&self, name: &str) -> bool {
        self.running
            .lock()
            .map(|m| m.contains_key(name))
            .unwrap_or(false)
    }

    /// Registers a task for `name`: its guard and the cancel signal it
    /// listens to. `None` when a task for `name` already runs (no twin).
    pub fn register(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<(TaskGuard, watch::Receiver<bool>)>> {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(0u8);
        let mut m = self
            .running
            .lock()
            .map_err(|e| anyhow::anyhow!("the task registry is poisoned: {e}"))?;
        if m.contains_key(name) {
            return Ok(None);
        }
        m.insert(
            name.to_string(),
            RunHandle {
                cancel: cancel_tx,
                done: done_rx,
            },
        );
        let guard = TaskGuard {
            running: self.running.clone(),
            name: name.to_string(),
            done: done_tx,
        };
        Ok(Some((guard, cancel_rx)))
    }

    /// The progress of `name`'s task, when this process runs it.
    pub fn progress(&self, name: &str) -> Option<Progress> {
        self.running
            .lock()
            .ok()
            .and_then(|m| m.get(name).map(|h| Progress(h.done.clone())))
    }

    /// Signals `name`'s task to cancel; its progress, when this process runs it.
    pub fn cancel(&self, name: &str) -> anyhow::Result<Option<Progress>> {
        let m = self
            .running
            .lock()
            .map_err(|e| anyhow::anyhow!("the task registry is poisoned: {e}"))?;
        Ok(m.get(name).map(|h| {
            let _ = h.cancel.send(true);
            Progress(h.done.clone())
        }))
    }
}

/// A watcher of one task's progress.
pub(crate) struct Progress(watch::Receiver<u8>);

impl Progress {
    /// Resolves once the run's final status is in the store (or the task is gone).
    pub async fn status_written(&mut self) {
        let _ = self.0.wait_for(|d| *d >= STATUS_WRITTEN).await;
    }

    /// Resolves once the task ended and cleaned up (or is gone).
    pub async fn ended(&mut self) {
        let _ = self.0.wait_for(|d| *d >= TASK_ENDED).await;
    }
}

/// Removes a run's handle when its task ends (even by panic) and wakes the
/// waiters (`wait_run` once the status is written, `cancel` at the end).
pub(crate) struct TaskGuard {
    running: Running,
    name: String,
    done: watch::Sender<u8>,
}

impl TaskGuard {
    pub fn status_written(&self) {
        self.done.send_if_modified(|v| {
            let changed = *v < STATUS_WRITTEN;
            *v = (*v).max(STATUS_WRITTEN);
            changed
        });
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.running.lock() {
            m.remove(&self.name);
        }
        let _ = self.done.send(TASK_ENDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_template_has_one_task_until_its_guard_drops() {
        let tasks = Tasks::default();
        let (guard, _cancel) = tasks.register("t").unwrap().expect("first registration");
        assert!(tasks.has("t"));
        assert!(tasks.register("t").unwrap().is_none(), "no twin task");
        let mut progress = tasks.progress("t").expect("progress of a running task");
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(5), progress.ended())
            .await
            .expect("the watcher wakes when the task ends");
        assert!(!tasks.has("t"));
        assert!(tasks.register("t").unwrap().is_some());
    }

    #[tokio::test]
    async fn cancel_signals_the_task_and_waiters_wake_on_the_written_status() {
        let tasks = Tasks::default();
        let (guard, cancel) = tasks.register("t").unwrap().unwrap();
        let mut progress = tasks.cancel("t").unwrap().expect("a running task");
        assert!(*cancel.borrow(), "the task sees the cancel signal");
        guard.status_written();
        tokio::time::timeout(std::time::Duration::from_secs(5), progress.status_written())
            .await
            .expect("the watcher wakes once the status is written");
        assert!(tasks.has("t"), "the task lives until its guard drops");
        assert!(tasks.cancel("other").unwrap().is_none());
    }
}
