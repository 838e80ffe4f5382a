//! Service Bus, as its REST API behaves for kiln's two queues.
//!
//! The model ([`Namespace`]) is plain data moved by calls that take `now`
//! (sim time), so each rule is a small test: a scheduled message is held
//! until its `ScheduledEnqueueTimeUtc`; a `MessageId` seen within the
//! queue's duplicate-detection window is accepted and dropped; a receive
//! takes the oldest visible message under a peek-lock (`DeliveryCount` + 1,
//! a `LockToken`, `LockedUntilUtc`); complete deletes it, abandon unlocks it,
//! an expired lock makes it visible again; a message whose delivery count has
//! reached the queue's `maxDeliveryCount` and comes free again moves to the
//! `$DeadLetterQueue` sub-queue with `DeadLetterReason:
//! MaxDeliveryCountExceeded`, as Service Bus does.
//!
//! [`Bus`] wraps the model for the server: a receive waits (in wall time, up
//! to the request's `timeout`) until a message is visible, waking when one is
//! sent or unlocked, or when the sim clock reaches a scheduled time or a lock
//! expiry. [`routes`] is the HTTP surface.

pub mod routes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ports::{Clock, ScaledClock};

/// The sub-queue Service Bus moves dead letters to: `{queue}/$DeadLetterQueue`.
pub const DEAD_LETTER_SUFFIX: &str = "$DeadLetterQueue";
/// The reason Service Bus gives a message that ran out of deliveries.
pub const MAX_DELIVERY_REASON: &str = "MaxDeliveryCountExceeded";

/// A queue's settings, as `infra/queues.json` declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    /// Deliveries before a message is dead-lettered.
    pub max_delivery_count: u32,
    /// How long a peek-lock lasts (sim time).
    pub lock_duration: chrono::Duration,
    /// How long a `MessageId` is remembered for duplicate detection (sim time).
    pub duplicate_window: chrono::Duration,
}

impl QueueConfig {
    /// kiln's queues as `infra/queues.json` declares them (the file Bicep
    /// deploys them from).
    pub fn kiln_queues() -> anyhow::Result<Vec<QueueConfig>> {
        let file = crate::host::function_json::QUEUES_FILE;
        crate::host::function_json::queues()?
            .into_iter()
            .map(|(name, q)| {
                let duration = |field: &str, text: &str| {
                    iso8601_duration(text).ok_or_else(|| {
                        anyhow::anyhow!(
                            "{file}: {name}.{field}: expected an ISO 8601 duration such as PT5M, got `{text}`"
                        )
                    })
                };
                Ok(QueueConfig {
                    lock_duration: duration("lockDuration", &q.lock_duration)?,
                    duplicate_window: duration(
                        "duplicateDetectionHistoryTimeWindow",
                        &q.duplicate_detection_history_time_window,
                    )?,
                    max_delivery_count: q.max_delivery_count,
                    name,
                })
            })
            .collect()
    }
}

/// `P1D`, `PT1H`, `PT10M`, `PT30S`, `P1DT2H`: the durations Service Bus
/// settings are written in (no years or months, which have no fixed length).
pub fn iso8601_duration(text: &str) -> Option<chrono::Duration> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = chrono::Duration::zero();
    let mut any = false;
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut number = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let (_, secs) = allowed.by_ref().find(|(u, _)| *u == c)?;
            total += chrono::Duration::seconds(number.parse::<i64>().ok()? * secs);
            number.clear();
            any = true;
        }
        number.is_empty().then_some(())
    };
    take(days, &[('D', 86_400)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return None;
        }
        take(t, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    }
    any.then_some(total)
}

/// A message as a sender hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// `BrokerProperties.MessageId`; Service Bus makes one up when absent.
    pub message_id: Option<String>,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub label: Option<String>,
    /// `BrokerProperties.ScheduledEnqueueTimeUtc`.
    pub scheduled_enqueue: Option<DateTime<Utc>>,
}

/// Where a stored message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum MessageState {
    /// Waiting for its scheduled enqueue time.
    Scheduled,
    /// Visible to the next receive.
    Active,
    /// Held by a receiver until `until`.
    Locked {
        #[serde(skip_serializing)]
        token: uuid::Uuid,
        until: DateTime<Utc>,
    },
}

/// A stored message, as the control API and receivers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: String,
    pub sequence_number: i64,
    /// Send time, or the scheduled time for a scheduled message.
    pub enqueued_time: DateTime<Utc>,
    pub delivery_count: u32,
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The body as text, for reading the control API.
    pub text: String,
    pub content_type: Option<String>,
    pub label: Option<String>,
    pub dead_letter_reason: Option<String>,
    #[serde(flatten)]
    pub state: MessageState,
}

impl Message {
    fn visible(&self, now: DateTime<Utc>) -> bool {
        self.enqueued_time <= now
            && match self.state {
                MessageState::Scheduled | MessageState::Active => true,
                MessageState::Locked { until, .. } => until <= now,
            }
    }

    fn state_at(&self, now: DateTime<Utc>) -> MessageState {
        match self.state {
            MessageState::Locked { until, .. } if until > now => self.state,
            MessageState::Scheduled | MessageState::Active | MessageState::Locked { .. } => {
                if self.enqueued_time > now {
                    MessageState::Scheduled
                } else {
                    MessageState::Active
                }
            }
        }
    }
}

/// A message taken under a peek-lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub message: Message,
    pub lock_token: uuid::Uuid,
    pub locked_until: DateTime<Utc>,
}

/// What a send did. Both answer 201: Service Bus drops a duplicate silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Enqueued { sequence_number: i64 },
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// 410 Gone, as Service Bus answers for an entity that does not exist.
    #[error("the messaging entity `{0}` does not exist")]
    NoEntity(String),
    /// 404: no message with that id (or sequence number) holds that lock now.
    #[error("no message was found with the specified MessageId or LockToken")]
    LockLost,
}

/// Which sub-queue a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubQueue {
    Main,
    DeadLetter,
}

struct Queue {
    config: QueueConfig,
    messages: Vec<Message>,
    dead: Vec<Message>,
    /// MessageId → when it was last accepted, for duplicate detection.
    seen: HashMap<String, DateTime<Utc>>,
}

impl Queue {
    fn list(&mut self, sub: SubQueue) -> &mut Vec<Message> {
        match sub {
            SubQueue::Main => &mut self.messages,
            SubQueue::DeadLetter => &mut self.dead,
        }
    }

    /// Moves messages whose lock expired with no deliveries left to the
    /// dead-letter sub-queue. Dead letters themselves are never dead-lettered.
    fn expire(&mut self, now: DateTime<Utc>) {
        let max = self.config.max_delivery_count;
        let (spent, kept): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.messages)
            .into_iter()
            .partition(|m| {
                matches!(m.state, MessageState::Locked { until, .. } if until <= now)
                    && m.delivery_count >= max
            });
        self.messages = kept;
        for m in spent {
            self.dead_letter(m, MAX_DELIVERY_REASON);
        }
    }

    fn dead_letter(&mut self, mut m: Message, reason: &str) {
        m.state = MessageState::Active;
        m.dead_letter_reason = Some(reason.to_string());
        self.dead.push(m);
    }
}

/// The namespace: kiln's queues, their messages and dead letters.
pub struct Namespace {
    queues: BTreeMap<String, Queue>,
    next_sequence: i64,
}

impl Namespace {
    pub fn new(configs: &[QueueConfig]) -> Self {
        Self {
            queues: configs
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        Queue {
                            config: c.clone(),
                            messages: Vec::new(),
                            dead: Vec::new(),
                            seen: HashMap::new(),
                        },
                    )
                })
                .collect(),
            next_sequence: 1,
        }
    }

    /// Splits `build-requests/$DeadLetterQueue` into the queue and its sub-queue.
    pub fn resolve(path: &str) -> (&str, SubQueue) {
        match path.rsplit_once('/') {
            Some((queue, sub)) if sub.eq_ignore_ascii_case(DEAD_LETTER_SUFFIX) => {
                (queue, SubQueue::DeadLetter)
            }
            Some(_) | None => (path, SubQueue::Main),
        }
    }

    fn queue(&mut self, name: &str) -> Result<&mut Queue, BusError> {
        self.queues
            .get_mut(name)
            .ok_or_else(|| BusError::NoEntity(name.to_string()))
    }

    pub fn send(
        &mut self,
        queue: &str,
        m: NewMessage,
        now: DateTime<Utc>,
    ) -> Result<Sent, BusError> {
        let sequence_number = self.next_sequence;
        let q = self.queue(queue)?;
        let window = q.config.duplicate_window;
        q.seen.retain(|_, at| *at + window > now);
        let message_id = m
            .message_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        if q.seen.contains_key(&message_id) {
            return Ok(Sent::Duplicate);
        }
        q.seen.insert(message_id.clone(), now);
        let scheduled = m.scheduled_enqueue.filter(|t| *t > now);
        q.messages.push(Message {
            message_id,
            sequence_number,
            enqueued_time: scheduled.unwrap_or(now),
            delivery_count: 0,
            text: String::from_utf8_lossy(&m.body).into_owned(),
            body: m.body,
            content_type: m.content_type,
            label: m.label,
            dead_letter_reason: None,
            state: match scheduled {
                Some(_) => MessageState::Scheduled,
                None => MessageState::Active,
            },
        });
        self.next_sequence += 1;
        Ok(Sent::Enqueued { sequence_number })
    }

    /// Takes the oldest visible message under a new lock, if there is one.
    pub fn receive(&mut self, path: &str, now: DateTime<Utc>) -> Result<Option<Locked>, BusError> {
        let (name, sub) = Self::resolve(path);
        let q = self.queue(name)?;
        q.expire(now);
        let lock_duration = q.config.lock_duration;
        let list = q.list(sub);
        let Some(m) = list
            .iter_mut()
            .filter(|m| m.visible(now))
            .min_by_key(|m| (m.enqueued_time, m.sequence_number))
        else {
            return Ok(None);
        };
        let token = uuid::Uuid::new_v4();
        let until = now + lock_duration;
        m.delivery_count += 1;
        m.state = MessageState::Locked { token, until };
        Ok(Some(Locked {
            message: m.clone(),
            lock_token: token,
            locked_until: until,
        }))
    }

    /// The index of the message `id` (a MessageId or a SequenceNumber) whose
    /// lock `token` is still held at `now`.
    fn held(
        list: &[Message],
        id: &str,
        token: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<usize, BusError> {
        list.iter()
            .position(|m| {
                (m.message_id == id || m.sequence_number.to_string() == id)
                    && matches!(m.state, MessageState::Locked { token: t, until } if t == token && until > now)
            })
            .ok_or(BusError::LockLost)
    }

    /// Completes a locked message: it is deleted.
    pub fn complete(
        &mut self,
        path: &str,
        id: &str,
        token: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), BusError> {
        let (name, sub) = Self::resolve(path);
        let list = self.queue(name)?.list(sub);
        let i = Self::held(list, id, token, now)?;
        list.remove(i);
        Ok(())
    }

    /// Abandons (unlocks) a locked message: it is visible again at once, or
    /// dead-lettered when it has had its last delivery.
    pub fn abandon(
        &mut self,
        path: &str,
        id: &str,
        token: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), BusError> {
        let (name, sub) = Self::resolve(path);
        let q = self.queue(name)?;
        let max = q.config.max_delivery_count;
        let list = q.list(sub);
        let i = Self::held(list, id, token, now)?;
        if sub == SubQueue::Main && list[i].delivery_count >= max {
            let m = list.remove(i);
            q.dead_letter(m, MAX_DELIVERY_REASON);
        } else {
            list[i].state = MessageState::Active;
        }
        Ok(())
    }

    /// Renews a lock for another lock duration; returns the new expiry.
    pub fn renew(
        &mut self,
        path: &str,
        id: &str,
        token: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, BusError> {
        let (name, sub) = Self::resolve(path);
        let q = self.queue(name)?;
        let until = now + q.config.lock_duration;
        let list = q.list(sub);
        let i = Self::held(list, id, token, now)?;
        list[i].state = MessageState::Locked { token, until };
        Ok(until)
    }

    /// The next instant after `now` at which a message of `path` becomes
    /// visible (a scheduled time or a lock expiry), for a waiting receiver.
    pub fn next_change(&self, path: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (name, sub) = Self::resolve(path);
        let q = self.queues.get(name)?;
        let list = match sub {
            SubQueue::Main => &q.messages,
            SubQueue::DeadLetter => &q.dead,
        };
        list.iter()
            .filter_map(|m| {
                let at = match m.state {
                    MessageState::Locked { until, .. } => until.max(m.enqueued_time),
                    MessageState::Scheduled | MessageState::Active => m.enqueued_time,
                };
                (at > now).then_some(at)
            })
            .min()
    }

    /// Every message of `path` as it stands at `now`, oldest first.
    pub fn snapshot(&mut self, path: &str, now: DateTime<Utc>) -> Result<Vec<Message>, BusError> {
        let (name, sub) = Self::resolve(path);
        let q = self.queue(name)?;
        q.expire(now);
        let mut list: Vec<Message> = q
            .list(sub)
            .iter()
            .map(|m| Message {
                state: m.state_at(now),
                ..m.clone()
            })
            .collect();
        list.sort_by_key(|m| (m.enqueued_time, m.sequence_number));
        Ok(list)
    }

    pub fn queue_names(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }
}

/// The namespace behind the HTTP surface, on the sim's clock.
pub struct Bus {
    namespace: Mutex<Namespace>,
    clock: ScaledClock,
    changed: tokio::sync::Notify,
}

impl Bus {
    pub fn new(clock: ScaledClock, queues: &[QueueConfig]) -> Self {
        Self {
            namespace: Mutex::new(Namespace::new(queues)),
            clock,
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs `f` on the namespace at the sim's current time; wakes waiting
    /// receivers afterwards (a send or an unlock may have freed a message).
    pub fn with<T>(&self, f: impl FnOnce(&mut Namespace, DateTime<Utc>) -> T) -> T {
        let out = {
            let mut ns = self.namespace.lock().expect("bus mutex");
            f(&mut ns, self.clock.now())
        };
        self.changed.notify_waiters();
        out
    }

    /// Peek-lock receive that waits up to `timeout` (wall time) for a
    /// message, as `POST …/messages/head?timeout=N` does.
    pub async fn receive(&self, path: &str, timeout: Duration) -> Result<Option<Locked>, BusError> {
        let deadline = Instant::now() + timeout;
        loop {
            let woken = self.changed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (got, next) = {
                let mut ns = self.namespace.lock().expect("bus mutex");
                let now = self.clock.now();
                let got = ns.receive(path, now)?;
                (got, ns.next_change(path, now).map(|t| t - now))
            };
            if got.is_some() {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let until_next = next
                .and_then(|d| d.to_std().ok())
                .map(|d| self.clock.wall(d) + Duration::from_millis(1))
                .unwrap_or(left);
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(until_next.min(left)) => {}
            }
        }
    }
}
