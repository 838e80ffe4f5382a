//! When a Table Storage call is sent again.
//!
//! Every operation is retried under [`RetryPolicy`] on 408, 429, 500, 502,
//! 503 and 504, and on connection errors and timeouts, with exponential
//! backoff and jitter, honouring `Retry-After` up to a bound (a longer wait
//! ends the call with [`TableError::Throttled`](super::TableError::Throttled):
//! kiln's callers ask again on a later poll instead of sleeping in an invocation).
//!
//! Reads, replaces, merges and deletes are idempotent, so a retry is
//! harmless. Inserts and batches are retried too, and a retry can meet its
//! own first attempt when that attempt landed but its answer was lost:
//! an insert then ends in `Conflict` (`EntityAlreadyExists`), a batch in
//! `BatchFailed` for its first insert, and an ETag-conditional write in
//! `PreconditionFailed`. The client does not guess; the caller re-reads the
//! entity and decides (its own write is there, or someone else's is). The
//! service itself warns that a write may succeed although the client saw an
//! error, when the client gives up before the service's 30 s.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with jitter, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` one call waits out.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// Four attempts, 0.5 s / 1 s / 2 s apart (±jitter), `Retry-After` up to 10 s.
    pub fn standard() -> Self {
        Self {
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(4),
            retry_after_max: Duration::from_secs(10),
        }
    }

    /// One attempt: the caller retries, or a test wants to see the first answer.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::standard()
        }
    }

    /// Whether a status is worth another attempt.
    pub fn retryable_status(status: u16) -> bool {
        matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
    }

    /// The wait after failed attempt `attempt` (1-based): `Retry-After` when
    /// the service sent one, else the backoff. `None`: give the answer back.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        match retry_after {
            Some(d) if d > self.retry_after_max => None,
            Some(d) => Some(d),
            None => Some(self.backoff(attempt)),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.backoff_max);
        // Jitter in [exp/2, exp] keeps concurrent invocations from retrying in step.
        let ms = exp.as_millis() as u64;
        Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::thread_rng().gen_range(ms / 2..=ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_last_attempt() {
        let p = RetryPolicy::standard();
        for _ in 0..50 {
            let w1 = p.wait(1, None).unwrap();
            let w3 = p.wait(3, None).unwrap();
            assert!((250..=500).contains(&(w1.as_millis() as u64)), "{w1:?}");
            assert!((1000..=2000).contains(&(w3.as_millis() as u64)), "{w3:?}");
        }
        assert_eq!(p.wait(4, None), None);
        assert_eq!(RetryPolicy::none().wait(1, None), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_bound() {
        let p = RetryPolicy::standard();
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(p.wait(1, Some(Duration::from_secs(60))), None);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(RetryPolicy::retryable_status(s), "{s}");
        }
        for s in [400, 403, 404, 409, 412, 413] {
            assert!(!RetryPolicy::retryable_status(s), "{s}");
        }
    }
}
