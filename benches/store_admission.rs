//! Admission throughput on each store against the bare store doing the same
//! durable writes.
//!
//! An admission writes a build, its request key and its first history
//! entry, and (on Table Storage) touches the pipeline's state row, all in
//! one transaction, with the build-id index row beside it; before that it
//! reads what it must decide on (the key, the queued build, the versions
//! taken, the breaker). The bare side does only the same writes, nothing
//! read: the floor no store can beat. One writer, one request at a time, a new pipeline per
//! request (so nothing coalesces), on both sides.
//!
//! `cargo bench --bench store_admission` runs the criterion groups, then prints
//!
//! `admission on sqlite: X/s, bare: Y/s, ratio Z` (and the same for table, on Azurite)
//!
//! from plainly timed runs of ROUNDS admissions each (medians of 5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::Criterion;

use kiln::domain::build::{Build, BuildState, Trigger};
use kiln::domain::version::ImageVersion;
use kiln::store::port::{Admission, Admitted, Store};
use kiln::store::table::testing::Azurite;
use kiln::store::table::{BatchOp, Entity, TableClient};
use kiln::store::table_store::TableStore;
use kiln::store::{Db, SqliteStore};

const ROUNDS: u64 = 100;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn build(n: u64) -> Build {
    Build {
        id: format!("20261208-180000-{n:06}"),
        pipeline: format!("p{n}"),
        trigger: Trigger::Manual,
        reason: "bench".into(),
        requested_by: "bench".into(),
        idempotency_key: format!("manual:p{n}:k"),
        version: ImageVersion::new(1, 0, 0),
        source_version: None,
        template_hash: "h".into(),
        attempt: 1,
        max_attempts: 3,
        timeout_minutes: 60,
        state: BuildState::Queued,
        created_at: Utc.with_ymd_and_hms(2026, 12, 8, 18, 0, 0).unwrap(),
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    }
}

async fn admit(store: &dyn Store) {
    let b = build(NEXT.fetch_add(1, Ordering::Relaxed));
    let made = b.clone();
    let r = store
        .admit(&Admission {
            pipeline: &b.pipeline,
            key: &b.idempotency_key,
            trigger: &Trigger::Manual,
            now: b.created_at,
            gallery_versions: &[],
            make: &move |_| Ok(made.clone()),
        })
        .await
        .unwrap();
    assert!(matches!(r, Admitted::Created(_)));
}

/// The same three rows as an admission, in one transaction, nothing read.
fn bare_sqlite(db: &Db) {
    let b = build(NEXT.fetch_add(1, Ordering::Relaxed));
    let body = serde_json::to_string(&b).unwrap();
    let at = b.created_at.to_rfc3339();
    db.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO builds (id, pipeline, state, terminal, automatic, row_version, created_at, updated_at, next_poll_at, body)
             VALUES (?1, ?2, 'queued', 0, 0, 1, ?3, ?3, ?3, ?4)",
            rusqlite::params![b.id, b.pipeline, at, body],
        )?;
        tx.execute(
            "INSERT INTO request_keys (key, build_id, created_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![b.idempotency_key, b.id, at],
        )?;
        tx.execute(
            "INSERT INTO build_history (build_id, seq, at, from_state, to_state, cause) VALUES (?1, 1, ?2, NULL, 'queued', 'admitted')",
            rusqlite::params![b.id, at],
        )?;
        tx.commit()
    })
    .unwrap();
}

/// The same writes as an admission: its four entities as one batch, and
/// beside it the build-id index row; nothing read.
async fn bare_table(client: &TableClient) {
    let b = build(NEXT.fetch_add(1, Ordering::Relaxed));
    let pk = format!("p:{}", b.pipeline);
    let at = b.created_at.to_rfc3339();
    let row = |rk: &str| Entity::new(pk.clone(), rk.to_string());
    let mut build_row = row(&format!("b:{}", b.id));
    build_row
        .set("Kind", "build")
        .set("State", "queued")
        .set("Body", serde_json::to_string(&b).unwrap());
    let mut key = row("k:bench");
    key.set("BuildId", b.id.as_str());
    let mut history = row(&format!("h:{}:{at}", b.id));
    history.set("To", "queued").set("Cause", "admitted");
    let mut state = row("state");
    state.set("Touched", at.as_str());
    let ops = [build_row, key, history, state].map(BatchOp::Insert);
    let mut index = Entity::new("ids", b.id.clone());
    index.set("Pipeline", b.pipeline.as_str());
    let (batch, index) = tokio::join!(
        client.batch("benchbare", &pk, &ops),
        client.upsert("benchbare", &index)
    );
    batch.unwrap();
    index.unwrap();
}

fn per_second(rounds: u64, d: Duration) -> f64 {
    rounds as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // Two workers, as `kiln serve` has: the HTTP client's pooled
    // connections are watched by tasks that need a runtime running between
    // requests (on a current-thread runtime, idle between block_on calls, a
    // connection Azurite closed is found dead only when reused).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("kiln.db")).unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::new(db.clone()));
    let bare_db = Db::open(&dir.path().join("bare.db")).unwrap();

    let azurite = Azurite::start();
    let table: Arc<dyn Store> = Arc::new(
        rt.block_on(TableStore::open(azurite.client(), "bench"))
            .unwrap(),
    );
    let client = azurite.client();
    rt.block_on(client.create_table_if_missing("benchbare"))
        .unwrap();

    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut g = c.benchmark_group("admission");
    g.bench_function("sqlite store", |b| {
        b.iter(|| rt.block_on(admit(sqlite.as_ref())))
    });
    g.bench_function("sqlite bare", |b| b.iter(|| bare_sqlite(&bare_db)));
    g.finish();
    // Table Storage is timed plainly below: criterion's tens of thousands
    // of iterations per sample are more than one Azurite process keeps up
    // with for long (its in-memory tables grow with every admission).

    let time = |f: &mut dyn FnMut()| {
        median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..ROUNDS {
                        f();
                    }
                    t.elapsed()
                })
                .collect(),
        )
    };
    let store = time(&mut || rt.block_on(admit(sqlite.as_ref())));
    let bare = time(&mut || bare_sqlite(&bare_db));
    println!(
        "admission on sqlite: {:.0}/s, bare: {:.0}/s, ratio {:.2}",
        per_second(ROUNDS, store),
        per_second(ROUNDS, bare),
        bare.as_secs_f64() / store.as_secs_f64()
    );
    let store = time(&mut || rt.block_on(admit(table.as_ref())));
    let bare = time(&mut || rt.block_on(bare_table(&client)));
    println!(
        "admission on table (Azurite): {:.0}/s, bare: {:.0}/s, ratio {:.2}",
        per_second(ROUNDS, store),
        per_second(ROUNDS, bare),
        bare.as_secs_f64() / store.as_secs_f64()
    );
}
