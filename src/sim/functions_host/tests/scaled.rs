//! The host in front of several instances: where invocations go, what
//! happens when an instance dies mid-invocation, and timers on one instance
//! per firing.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::*;

/// `n` tiny handlers behind one host.
async fn start_scaled(
    options: SimOptions,
    n: usize,
) -> (SimHandle, Vec<TinyHandler>, Vec<String>, HostHandle) {
    let sim = Sim::start(options).await.unwrap();
    let mut handlers = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..n {
        let h = TinyHandler::default();
        urls.push(h.clone().serve().await);
        handlers.push(h);
    }
    let mut opts = HostOptions::scaled(&sim, &urls, &repo_handlers());
    opts.max_concurrent_calls = 2;
    let host = FunctionsHost::start(opts).await.unwrap();
    (sim, handlers, urls, host)
}

/// Queue invocations of `function`: (instance, delivery count, settled, message id).
fn deliveries(host: &HostHandle, function: &str) -> Vec<(Option<usize>, u64, Settled, String)> {
    host.invocations()
        .into_iter()
        .filter(|r| r.function == function)
        .filter_map(|r| match r.trigger {
            InvocationTrigger::Queue {
                delivery_count,
                settled,
                message_id,
                ..
            } => Some((r.instance, delivery_count, settled, message_id)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn queue_messages_are_spread_over_the_instances() {
    let (sim, handlers, urls, host) = start_scaled(SimOptions::new(60), 3).await;
    for i in 0..30 {
        send_poll(&sim, &format!("p{i}")).await;
    }
    let done = wait_until(DEADLINE, "thirty polls completed", || async {
        let d = deliveries(&host, "build_polls");
        (d.len() == 30).then_some(d)
    })
    .await
    .unwrap();
    assert!(done.iter().all(|d| d.2 == Settled::Completed), "{done:?}");
    for (i, h) in handlers.iter().enumerate() {
        let served = done.iter().filter(|d| d.0 == Some(i)).count();
        // Each handler got exactly what the host says it sent there, and
        // round-robin leaves none of three idle over thirty messages.
        assert_eq!(h.calls_to("build_polls").len(), served, "instance {i}");
        assert!(served > 0, "instance {i} got nothing: {done:?}");
    }
    let record = host
        .invocations()
        .into_iter()
        .find(|r| r.function == "build_polls")
        .unwrap();
    assert_eq!(
        record.instance_url.as_deref(),
        Some(urls[record.instance.unwrap()].as_str())
    );
}

/// An instance that answers `GET /` and holds every invocation without an
/// answer, until it is killed: its listener and every connection close at
/// once, as when the process is SIGKILLed.
struct DyingInstance {
    url: String,
    /// Paths of the invocations it holds.
    held: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl DyingInstance {
    async fn start() -> DyingInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = Arc::new(Mutex::new(Vec::new()));
        let seen = held.clone();
        let task = tokio::spawn(async move {
            // Dropped with this task: every connection goes with it.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.spawn(Self::serve(stream, seen.clone()));
            }
        });
        DyingInstance { url, held, task }
    }

    async fn serve(mut stream: TcpStream, held: Arc<Mutex<Vec<String>>>) {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                continue;
            }
            buf.drain(..end + 4 + length);
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if method == "GET" && path == "/" {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nready";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
                continue;
            }
            held.lock().unwrap().push(path.to_string());
            std::future::pending::<()>().await;
        }
    }

    /// Invocations of `function` it holds.
    fn held(&self, function: &str) -> usize {
        let path = format!("/{function}");
        self.held
            .lock()
            .unwrap()
            .iter()
            .filter(|p| **p == path)
            .count()
    }

    fn kill(&self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_message_whose_instance_dies_mid_invocation_is_redelivered_to_another() {
    let sim = Sim::start(SimOptions::new(60)).await.unwrap();
    let dying = DyingInstance::start().await;
    let survivor = TinyHandler::default();
    let survivor_url = survivor.clone().serve().await;
    let mut opts = HostOptions::scaled(
        &sim,
        &[dying.url.clone(), survivor_url.clone()],
        &repo_handlers(),
    );
    opts.max_concurrent_calls = 2;
    let host = FunctionsHost::start(opts).await.unwrap();

    // Polls, one at a time, until one is held by instance 0 (the others are
    // completed by instance 1).
    let mut sent = 0;
    while dying.held("build_polls") == 0 {
        assert!(sent < 50, "instance 0 was never given a poll");
        sent += 1;
        let id = format!("p{sent}");
        send_poll(&sim, &id).await;
        wait_until(
            DEADLINE,
            &format!("{id} to be held or completed"),
            || async {
                let done = deliveries(&host, "build_polls")
                    .iter()
                    .any(|d| d.3 == id && d.2 == Settled::Completed);
                (done || dying.held("build_polls") > 0).then_some(())
            },
        )
        .await
        .unwrap();
    }
    let held_before = dying.held("build_polls");
    dying.kill();

    let all = wait_until(DEADLINE, "every poll to be completed", || async {
        let d = deliveries(&host, "build_polls");
        let completed: std::collections::BTreeSet<String> = d
            .iter()
            .filter(|d| d.2 == Settled::Completed)
            .map(|d| d.3.clone())
            .collect();
        (completed.len() == sent).then_some(d)
    })
    .await
    .unwrap();
    // What instance 0 held failed without an answer and was abandoned (as
    // was any delivery that reached it dead, before it was out of
    // rotation); each went to instance 1 at a later delivery.
    let failed: Vec<_> = all.iter().filter(|d| d.0 == Some(0)).collect();
    assert!(failed.len() >= held_before, "{all:?}");
    for (_, count, settled, id) in &failed {
        assert_eq!(*settled, Settled::Abandoned, "{all:?}");
        let again = all
            .iter()
            .find(|d| &d.3 == id && d.2 == Settled::Completed)
            .unwrap();
        assert_eq!(again.0, Some(1), "{all:?}");
        assert!(again.1 > *count, "{all:?}");
    }
    let record = host
        .invocations()
        .into_iter()
        .find(|r| r.instance == Some(0) && r.function == "build_polls")
        .unwrap();
    assert_eq!(record.status, None);

    // The dead instance is out of rotation: the API goes to the survivor.
    for _ in 0..4 {
        let r = reqwest::get(format!("{}/api/builds", host.app_url()))
            .await
            .unwrap();
        assert_eq!(r.status(), 418);
    }

    // A replacement on a new port takes the dead one's place.
    let replacement = TinyHandler::default();
    let replacement_url = replacement.clone().serve().await;
    host.replace_instance(0, &replacement_url).await.unwrap();
    assert_eq!(
        host.instances(),
        vec![replacement_url.clone(), survivor_url]
    );
    let mut more = 0;
    while replacement.calls_to("build_polls").is_empty() {
        assert!(more < 50, "the replacement was never given a poll");
        more += 1;
        let id = format!("after{more}");
        send_poll(&sim, &id).await;
        wait_until(DEADLINE, &format!("{id} to be completed"), || async {
            deliveries(&host, "build_polls")
                .iter()
                .any(|d| d.3 == id && d.2 == Settled::Completed)
                .then_some(())
        })
        .await
        .unwrap();
    }
    let on_replacement = host
        .invocations()
        .into_iter()
        .find(|r| r.instance_url.as_deref() == Some(replacement_url.as_str()))
        .unwrap();
    assert_eq!(on_replacement.instance, Some(0));
    assert!(on_replacement.succeeded());
}

#[tokio::test]
async fn each_timer_firing_goes_to_one_instance() {
    // build_sweeper, `*/30 * * * * *` with runOnStartup: every 50 ms at 600×.
    let (_sim, handlers, _urls, host) = start_scaled(SimOptions::new(600), 3).await;
    let fired = wait_until(DEADLINE, "twelve sweeper firings", || async {
        let f: Vec<InvocationRecord> = host
            .invocations()
            .into_iter()
            .filter(|r| r.function == "build_sweeper")
            .collect();
        (f.len() >= 12).then_some(f)
    })
    .await
    .unwrap();
    // Each firing reached exactly one handler, the one the host says it
    // went to: the calls, counted between two readings of the records, lie
    // between the two counts (the second plus one firing on its way).
    let sweeps = |host: &HostHandle| -> Vec<usize> {
        let records = host.invocations();
        (0..3)
            .map(|i| {
                records
                    .iter()
                    .filter(|r| r.function == "build_sweeper" && r.instance == Some(i))
                    .count()
            })
            .collect()
    };
    let recorded = sweeps(&host);
    let calls: Vec<usize> = handlers
        .iter()
        .map(|h| h.calls_to("build_sweeper").len())
        .collect();
    let after = sweeps(&host);
    for i in 0..3 {
        assert!(
            recorded[i] <= calls[i] && calls[i] <= after[i] + 1,
            "instance {i}: {calls:?} calls, {recorded:?} then {after:?} recorded"
        );
    }
    let total = |v: &[usize]| v.iter().sum::<usize>();
    assert!(total(&calls) <= total(&after) + 1, "{calls:?} {after:?}");
    assert!(
        recorded.iter().filter(|n| **n > 0).count() > 1,
        "all firings went to one instance: {recorded:?}"
    );
    // One at a time for the whole app: no two firings overlap.
    for pair in fired.windows(2) {
        assert!(pair[0].sim_ended <= pair[1].sim_started, "{pair:?}");
    }
    // Every firing's guid is its own: none was sent twice.
    let mut guids: Vec<String> = handlers
        .iter()
        .flat_map(|h| h.calls_to("build_sweeper"))
        .map(|c| {
            c["Metadata"]["sys"]["RandGuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let n = guids.len();
    guids.sort();
    guids.dedup();
    assert_eq!(guids.len(), n);
}
