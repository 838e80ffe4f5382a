//! The rules of the store port, as one suite every implementation runs
//! (`conformance_suite!` in each implementation's tests). A case gets two
//! handles on one fresh store: `a` and `b` stand for two kiln instances
//! (two SQLite connections, two Table Storage clients), so the races are
//! real races between writers, not calls on one object.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::port::*;
use crate::domain::build::{Build, BuildState, FailureCategory, Trigger};
use crate::domain::version::ImageVersion;

/// Two instances' handles on one store.
pub struct Pair {
    pub a: Arc<dyn Store>,
    pub b: Arc<dyn Store>,
    /// What the store needs alive for the case (a temporary folder, an
    /// Azurite process); dropped with the pair when the case ends.
    pub keep: Option<Box<dyn std::any::Any + Send>>,
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 8, 18, 0, 0).unwrap()
}

pub fn build(id: &str, pipeline: &str, created_at: DateTime<Utc>) -> Build {
    Build {
        id: id.into(),
        pipeline: pipeline.into(),
        trigger: Trigger::Manual,
        reason: "r".into(),
        requested_by: "t".into(),
        idempotency_key: format!("k-{id}"),
        version: ImageVersion::new(1, 0, 0),
        source_version: None,
        template_hash: "h".into(),
        attempt: 1,
        max_attempts: 3,
        timeout_minutes: 60,
        state: BuildState::Queued,
        created_at,
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    }
}

/// Admits `b` under its own key, as a manual request.
pub async fn admit(s: &dyn Store, b: &Build) -> Admitted {
    let made = b.clone();
    s.admit(&Admission {
        pipeline: &b.pipeline,
        key: &b.idempotency_key,
        trigger: &Trigger::Manual,
        now: b.created_at,
        gallery_versions: &[],
        make: &move |_| Ok(made.clone()),
    })
    .await
    .unwrap()
}

fn failed(b: &Build) -> Build {
    let mut f = b.clone();
    f.state = BuildState::Failed {
        category: FailureCategory::Customizer,
        message: "x".into(),
    };
    f
}

fn submitting(b: &Build) -> Build {
    let mut s = b.clone();
    s.state = BuildState::Submitting { not_before: None };
    s
}

fn breaker_outcome() -> Outcome {
    Outcome {
        automatic: true,
        succeeded: false,
        threshold: 1,
    }
}

fn outbox(id: &str, at: DateTime<Utc>) -> OutboxRow {
    OutboxRow {
        event_id: id.into(),
        body: format!("{{\"id\":\"{id}\"}}"),
        at,
    }
}

async fn pending_events(s: &dyn Store) -> Vec<String> {
    s.outbox_claim(t0() + Duration::days(365), Duration::zero(), 100, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.event_id)
        .collect()
}

async fn claim(s: &dyn Store, b: &Build, v: i64, caps: Caps) -> Option<Write> {
    let started = submitting(b);
    s.claim_slot(
        &Transition {
            build: &started,
            expected: v,
            from: &b.state,
            cause: Some("slot granted"),
            next_poll_at: None,
            now: b.created_at,
            extras: &Extras::default(),
        },
        caps,
    )
    .await
    .unwrap()
}

/// Moves queued build `id` on to submitting (a slot claim without caps).
async fn start(s: &dyn Store, id: &str) -> i64 {
    let (b, v) = s.get(id).await.unwrap().unwrap();
    let caps = Caps {
        pipeline: 100,
        global: 100,
    };
    match claim(s, &b, v, caps).await {
        Some(Write::Written { row_version }) => row_version,
        other => panic!("{id} did not start: {other:?}"),
    }
}

pub async fn a_write_from_a_stale_read_is_a_conflict_and_changes_nothing(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let (read, v) = p.a.get("b1").await.unwrap().unwrap();
    let first = submitting(&read);
    let none = Extras::default();
    let t = |build, cause, extras| Transition {
        build,
        expected: v,
        from: &read.state,
        cause: Some(cause),
        next_poll_at: None,
        now: t0(),
        extras,
    };
    let (w, _) = p.a.commit(&t(&first, "first", &none)).await.unwrap();
    assert_eq!(w, Write::Written { row_version: v + 1 });
    // The loser's event and breaker count are not committed either.
    let extras = Extras {
        outbox: Some(outbox("ev-late", t0())),
        outcome: Some(breaker_outcome()),
        retire: vec![],
    };
    let second = failed(&read);
    let lost = p.b.commit(&t(&second, "second", &extras)).await.unwrap();
    assert_eq!(lost, (Write::Conflict, None));
    assert!(pending_events(&*p.a).await.is_empty());
    assert_eq!(p.a.runtime("p").await.unwrap().consecutive_failures, 0);
    assert_eq!(p.b.get("b1").await.unwrap().unwrap().0.state, first.state);
    let history = p.a.history("b1").await.unwrap();
    let causes: Vec<&str> = history.iter().map(|h| h.cause.as_str()).collect();
    assert_eq!(
        causes.len(),
        2,
        "admission and the first write only: {causes:?}"
    );
    assert_eq!(causes[1], "first");
}

pub async fn two_writers_racing_on_one_build_leave_exactly_one_winner(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let (read, v) = p.a.get("b1").await.unwrap().unwrap();
    let none = Extras::default();
    let x = submitting(&read);
    let y = failed(&read);
    let tx = |build| Transition {
        build,
        expected: v,
        from: &read.state,
        cause: Some("race"),
        next_poll_at: None,
        now: t0(),
        extras: &none,
    };
    let (tx_x, tx_y) = (tx(&x), tx(&y));
    let (wa, wb) = tokio::join!(p.a.commit(&tx_x), p.b.commit(&tx_y));
    let written = [wa.unwrap().0, wb.unwrap().0]
        .iter()
        .filter(|w| matches!(w, Write::Written { .. }))
        .count();
    assert_eq!(written, 1, "one writer wins, the other conflicts");
    assert_eq!(p.a.history("b1").await.unwrap().len(), 2);
    assert_eq!(p.a.get("b1").await.unwrap().unwrap().1, v + 1);
}

pub async fn a_final_transition_commits_its_event_breaker_count_and_cleanup_with_it(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let (read, v) = p.a.get("b1").await.unwrap().unwrap();
    let extras = Extras {
        outbox: Some(outbox("ev-1", t0())),
        outcome: Some(breaker_outcome()),
        retire: vec![Retire {
            template: "kiln-b1-a1".into(),
            build_id: "b1".into(),
            pipeline: "p".into(),
            keep: false,
        }],
    };
    let end = failed(&read);
    let (w, change) =
        p.a.commit(&Transition {
            build: &end,
            expected: v,
            from: &read.state,
            cause: Some("failed"),
            next_poll_at: None,
            now: t0(),
            extras: &extras,
        })
        .await
        .unwrap();
    assert!(matches!(w, Write::Written { .. }));
    assert_eq!(change, Some(BreakerChange::Opened { failures: 1 }));
    assert_eq!(pending_events(&*p.b).await, vec!["ev-1".to_string()]);
    let jobs = p.b.cleanup_of("b1").await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].pipeline, "p");
    assert!(p.b.due(t0() + Duration::days(1)).await.unwrap().is_empty());
}

pub async fn a_repeated_key_finds_the_first_build_and_creates_nothing(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let other = build("b2", "p", t0());
    let again =
        p.b.admit(&Admission {
            pipeline: "p",
            key: &b.idempotency_key,
            trigger: &Trigger::Manual,
            now: t0(),
            gallery_versions: &[],
            make: &move |_| Ok(other.clone()),
        })
        .await
        .unwrap();
    assert_eq!(again, Admitted::Existing("b1".into()));
    assert!(p.a.get("b2").await.unwrap().is_none());
    assert_eq!(
        p.b.build_for_key("p", &b.idempotency_key).await.unwrap(),
        Some("b1".into())
    );
    assert_eq!(p.b.build_for_key("p", "unknown").await.unwrap(), None);
}

pub async fn an_admission_storm_with_one_key_admits_one_build(p: Pair) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let s = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        tasks.spawn(async move {
            let mut b = build(&format!("storm-{i}"), "p", t0());
            b.idempotency_key = "one-key".into();
            admit(&*s, &b).await
        });
    }
    let mut created = Vec::new();
    let mut existing = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Admitted::Created(b) => created.push(b.id),
            Admitted::Existing(id) => existing.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "one build for one key");
    assert!(existing.iter().all(|id| *id == created[0]));
    let all = p.a.list(&BuildFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
}

pub async fn concurrent_requests_of_one_pipeline_make_one_queued_build(p: Pair) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        tasks.spawn(async move { admit(&*s, &build(&format!("c-{i}"), "p", t0())).await });
    }
    let mut created = Vec::new();
    let mut coalesced = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Admitted::Created(b) => created.push(b.id),
            Admitted::Coalesced(id) => coalesced.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "one queued build per pipeline");
    assert_eq!(coalesced.len(), 7);
    assert!(coalesced.iter().all(|id| *id == created[0]));
    assert_eq!(p.a.queued().await.unwrap(), created);
}

pub async fn a_new_build_takes_a_version_no_earlier_build_has(p: Pair) {
    let versioned = |id: &str, secs| {
        let b = build(id, "p", t0() + Duration::seconds(secs));
        let template = b.clone();
        (b, move |taken: &[ImageVersion]| {
            let mut b = template.clone();
            b.version = taken.iter().max().unwrap().next_patch();
            Ok(b)
        })
    };
    for (i, s) in [&p.a, &p.b, &p.a].iter().enumerate() {
        let (b, make) = versioned(&format!("v{i}"), i as i64);
        let r = s
            .admit(&Admission {
                pipeline: "p",
                key: &b.idempotency_key,
                trigger: &Trigger::Manual,
                now: b.created_at,
                gallery_versions: &[ImageVersion::new(1, 0, 4)],
                make: &make,
            })
            .await
            .unwrap();
        assert!(matches!(r, Admitted::Created(_)), "{r:?}");
        // Started (or failed: a failed build's number is not reused either).
        start(s.as_ref(), &b.id).await;
    }
    let mut versions: Vec<ImageVersion> =
        p.a.list(&BuildFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.version)
            .collect();
    versions.sort();
    let expected: Vec<ImageVersion> = (5..8).map(|n| ImageVersion::new(1, 0, n)).collect();
    assert_eq!(versions, expected, "each admission saw every earlier build");
}

pub async fn a_scheduled_request_coalesces_into_the_queued_build(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let later = build("b2", "p", t0());
    let trigger = Trigger::Schedule {
        cycle: "2026-12".into(),
    };
    let r =
        p.b.admit(&Admission {
            pipeline: "p",
            key: "schedule:p:2026-12",
            trigger: &trigger,
            now: t0(),
            gallery_versions: &[],
            make: &move |_| Ok(later.clone()),
        })
        .await
        .unwrap();
    assert_eq!(r, Admitted::Coalesced("b1".into()));
    assert_eq!(
        p.a.build_for_key("p", "schedule:p:2026-12").await.unwrap(),
        Some("b1".into())
    );
    let history = p.a.history("b1").await.unwrap();
    assert!(history.last().unwrap().cause.contains("coalesced"));
}

pub async fn an_open_breaker_pauses_automatic_requests_only(p: Pair) {
    let o = Outcome {
        automatic: true,
        succeeded: false,
        threshold: 1,
    };
    p.a.record_outcome("p", o, t0()).await.unwrap();
    let b = build("b1", "p", t0());
    let made = b.clone();
    let trigger = Trigger::Schedule {
        cycle: "2026-12".into(),
    };
    let r =
        p.b.admit(&Admission {
            pipeline: "p",
            key: "schedule:p:2026-12",
            trigger: &trigger,
            now: t0(),
            gallery_versions: &[],
            make: &move |_| Ok(made.clone()),
        })
        .await
        .unwrap();
    assert!(matches!(r, Admitted::Paused(_)), "{r:?}");
    assert!(matches!(admit(&*p.b, &b).await, Admitted::Created(_)));
}

pub async fn the_breaker_opens_at_the_threshold_and_closes_on_success(p: Pair) {
    let o = |automatic, succeeded| Outcome {
        automatic,
        succeeded,
        threshold: 2,
    };
    let s = &*p.a;
    assert_eq!(
        s.record_outcome("p", o(true, false), t0()).await.unwrap(),
        None
    );
    assert_eq!(
        s.record_outcome("p", o(false, false), t0()).await.unwrap(),
        None,
        "manual failures do not count"
    );
    assert_eq!(
        p.b.record_outcome("p", o(true, false), t0()).await.unwrap(),
        Some(BreakerChange::Opened { failures: 2 })
    );
    assert!(s.runtime("p").await.unwrap().breaker_open_since.is_some());
    assert_eq!(
        s.record_outcome("p", o(false, true), t0()).await.unwrap(),
        Some(BreakerChange::Closed)
    );
    assert_eq!(s.runtime("p").await.unwrap().consecutive_failures, 0);
}

pub async fn two_claimants_of_the_last_slot_get_one_slot(p: Pair) {
    let x = build("x", "px", t0());
    let y = build("y", "py", t0());
    admit(&*p.a, &x).await;
    admit(&*p.a, &y).await;
    let caps = Caps {
        pipeline: 1,
        global: 1,
    };
    let (vx, vy) = (
        p.a.get("x").await.unwrap().unwrap().1,
        p.a.get("y").await.unwrap().unwrap().1,
    );
    let (cx, cy) = tokio::join!(claim(&*p.a, &x, vx, caps), claim(&*p.b, &y, vy, caps));
    let won = [cx, cy]
        .iter()
        .filter(|c| matches!(c, Some(Write::Written { .. })))
        .count();
    assert_eq!(won, 1, "the global cap of 1 holds");
    let running = p.a.list(&BuildFilter::default()).await.unwrap();
    let active = running
        .iter()
        .filter(|b| !matches!(b.state, BuildState::Queued))
        .count();
    assert_eq!(active, 1);
    assert_eq!(p.b.active_builds().await.unwrap(), 1);
}

pub async fn a_finished_build_gives_its_slot_to_the_next(p: Pair) {
    let caps = Caps {
        pipeline: 1,
        global: 1,
    };
    let x = build("x", "px", t0());
    let y = build("y", "py", t0() + Duration::seconds(1));
    admit(&*p.a, &x).await;
    admit(&*p.a, &y).await;
    let vx = p.a.get("x").await.unwrap().unwrap().1;
    let Some(Write::Written { row_version }) = claim(&*p.a, &x, vx, caps).await else {
        panic!("the first build gets the free slot");
    };
    let vy = p.b.get("y").await.unwrap().unwrap().1;
    assert_eq!(
        claim(&*p.b, &y, vy, caps).await,
        None,
        "no slot while x runs"
    );
    assert!(!p.b.slot_free("y", caps, t0()).await.unwrap());
    let (running, _) = p.a.get("x").await.unwrap().unwrap();
    let end = failed(&running);
    let (w, _) =
        p.a.commit(&Transition {
            build: &end,
            expected: row_version,
            from: &running.state,
            cause: Some("failed"),
            next_poll_at: None,
            now: t0(),
            extras: &Extras::default(),
        })
        .await
        .unwrap();
    assert!(matches!(w, Write::Written { .. }));
    assert!(p.b.slot_free("y", caps, t0()).await.unwrap());
    assert!(matches!(
        claim(&*p.b, &y, vy, caps).await,
        Some(Write::Written { .. })
    ));
}

pub async fn a_pipeline_at_its_own_cap_waits_while_others_start(p: Pair) {
    let caps = Caps {
        pipeline: 1,
        global: 10,
    };
    admit(&*p.a, &build("x", "p", t0())).await;
    start(&*p.a, "x").await;
    let y = build("y", "p", t0() + Duration::seconds(5));
    let z = build("z", "q", t0() + Duration::seconds(6));
    admit(&*p.a, &y).await;
    admit(&*p.b, &z).await;
    assert_eq!(
        p.b.queued().await.unwrap(),
        vec!["y".to_string(), "z".to_string()]
    );
    assert!(!p.b.slot_free("y", caps, t0()).await.unwrap());
    assert!(p.b.slot_free("z", caps, t0()).await.unwrap());
    let vy = p.b.get("y").await.unwrap().unwrap().1;
    assert_eq!(claim(&*p.b, &y, vy, caps).await, None);
    let vz = p.a.get("z").await.unwrap().unwrap().1;
    assert!(matches!(
        claim(&*p.a, &z, vz, caps).await,
        Some(Write::Written { .. })
    ));
    assert_eq!(p.a.queued().await.unwrap(), vec!["y".to_string()]);
}

pub async fn due_lists_active_builds_whose_poll_time_has_come(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let (read, v) = p.a.get("b1").await.unwrap().unwrap();
    let next = submitting(&read);
    p.a.commit(&Transition {
        build: &next,
        expected: v,
        from: &read.state,
        cause: None,
        next_poll_at: Some(t0() + Duration::minutes(5)),
        now: t0(),
        extras: &Extras::default(),
    })
    .await
    .unwrap();
    assert!(p
        .b
        .due(t0() + Duration::minutes(4))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        p.b.due(t0() + Duration::minutes(5)).await.unwrap(),
        vec!["b1".to_string()]
    );
    assert_eq!(
        p.a.history("b1").await.unwrap().len(),
        1,
        "no cause, no entry"
    );
}

pub async fn listings_filter_by_pipeline_and_state_newest_first(p: Pair) {
    for (i, pipeline) in ["p", "q", "p"].iter().enumerate() {
        let b = build(
            &format!("b{i}"),
            pipeline,
            t0() + Duration::seconds(i as i64),
        );
        admit(&*p.a, &b).await;
        start(&*p.a, &b.id).await;
    }
    let ids = |v: Vec<Build>| v.into_iter().map(|b| b.id).collect::<Vec<_>>();
    let only_p = BuildFilter {
        pipeline: Some("p".into()),
        ..Default::default()
    };
    assert_eq!(ids(p.b.list(&only_p).await.unwrap()), vec!["b2", "b0"]);
    let one = BuildFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(p.b.list(&one).await.unwrap()), vec!["b2"]);
    let submitting = BuildFilter {
        state: Some("submitting".into()),
        ..Default::default()
    };
    assert_eq!(p.b.list(&submitting).await.unwrap().len(), 3);
    let queued = BuildFilter {
        state: Some("queued".into()),
        ..Default::default()
    };
    assert!(p.b.list(&queued).await.unwrap().is_empty());
    // Paging: the second page starts where the first ended.
    let page = |offset| BuildFilter {
        limit: Some(2),
        offset,
        ..Default::default()
    };
    assert_eq!(ids(p.b.list(&page(0)).await.unwrap()), vec!["b2", "b1"]);
    assert_eq!(ids(p.b.list(&page(2)).await.unwrap()), vec!["b0"]);
    assert!(p.b.list(&page(3)).await.unwrap().is_empty());
    // The window: since is inclusive, until exclusive.
    let window = BuildFilter {
        since: Some(t0() + Duration::seconds(1)),
        until: Some(t0() + Duration::seconds(2)),
        ..Default::default()
    };
    assert_eq!(ids(p.b.list(&window).await.unwrap()), vec!["b1"]);
    let since = BuildFilter {
        pipeline: Some("p".into()),
        since: Some(t0() + Duration::seconds(1)),
        ..Default::default()
    };
    assert_eq!(ids(p.b.list(&since).await.unwrap()), vec!["b2"]);
}

pub async fn memory_updates_from_two_instances_are_both_kept(p: Pair) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        tasks.spawn(async move {
            s.update_memory("p", |m| m.warnings.push(format!("w{i}")))
                .await
                .unwrap()
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut warnings = p.a.runtime("p").await.unwrap().memory.warnings;
    warnings.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    expected.sort();
    assert_eq!(warnings, expected, "no update is lost");
}

pub async fn a_cleanup_job_is_due_until_done_and_later_moves_it_back(p: Pair) {
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let (read, v) = p.a.get("b1").await.unwrap().unwrap();
    let retire = Retire {
        template: "kiln-b1-a1".into(),
        build_id: "b1".into(),
        pipeline: "p".into(),
        keep: false,
    };
    let extras = Extras {
        retire: vec![retire.clone(), retire],
        ..Default::default()
    };
    let end = failed(&read);
    p.a.commit(&Transition {
        build: &end,
        expected: v,
        from: &read.state,
        cause: Some("failed"),
        next_poll_at: None,
        now: t0(),
        extras: &extras,
    })
    .await
    .unwrap();
    let due = p.b.cleanup_due(t0(), 10).await.unwrap();
    assert_eq!(due.len(), 1, "one row per template");
    let later = t0() + Duration::minutes(2);
    p.b.cleanup_later(&due[0], later, Some("409 Conflict"))
        .await
        .unwrap();
    // Progress (no error) moves it on without counting as a failure.
    p.a.cleanup_later(&due[0], later, None).await.unwrap();
    assert!(p.a.cleanup_due(t0(), 10).await.unwrap().is_empty());
    let job = p.a.cleanup_due(later, 10).await.unwrap().remove(0);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.last_error.as_deref(), Some("409 Conflict"));
    p.b.cleanup_done(&job).await.unwrap();
    assert!(p.a.cleanup_due(later, 10).await.unwrap().is_empty());
    assert!(p.a.cleanup_of("b1").await.unwrap().is_empty());
}

pub async fn a_kept_log_is_read_back_whole_and_replaced_by_a_later_copy(p: Pair) {
    assert_eq!(p.a.log("kiln-b1-a1").await.unwrap(), None);
    p.a.put_log("kiln-b1-a1", "b1", b"first", t0())
        .await
        .unwrap();
    // Bigger than any one row or property of any store holds.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    p.b.put_log("kiln-b1-a1", "b1", &big, t0()).await.unwrap();
    assert_eq!(p.a.log("kiln-b1-a1").await.unwrap().unwrap(), big);
    p.a.put_log("kiln-b1-a1", "b1", b"short again", t0())
        .await
        .unwrap();
    assert_eq!(
        p.b.log("kiln-b1-a1").await.unwrap().unwrap(),
        b"short again"
    );
}

pub async fn a_claimed_event_is_hidden_from_other_deliverers_until_its_lease_ends(p: Pair) {
    p.a.outbox_add(&outbox("e1", t0())).await.unwrap();
    p.a.outbox_add(&outbox("e1", t0())).await.unwrap();
    p.a.outbox_add(&outbox("e2", t0() + Duration::seconds(1)))
        .await
        .unwrap();
    let lease = Duration::seconds(30);
    let now = t0() + Duration::seconds(1);
    let (ca, cb) = tokio::join!(
        p.a.outbox_claim(now, lease, 12, 10),
        p.b.outbox_claim(now, lease, 12, 10)
    );
    let mut claimed: Vec<OutboxItem> = ca.unwrap().into_iter().chain(cb.unwrap()).collect();
    claimed.sort_by(|x, y| x.event_id.cmp(&y.event_id));
    let ids: Vec<&str> = claimed.iter().map(|i| i.event_id.as_str()).collect();
    assert_eq!(ids, vec!["e1", "e2"], "each event claimed once");
    p.a.outbox_delivered(&claimed[0], now).await.unwrap();
    p.a.outbox_failed(&claimed[1], now + Duration::seconds(60), "HTTP 500")
        .await
        .unwrap();
    assert!(p
        .b
        .outbox_claim(now + lease, lease, 12, 10)
        .await
        .unwrap()
        .is_empty());
    let again =
        p.b.outbox_claim(now + Duration::seconds(60), lease, 12, 10)
            .await
            .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, "e2");
    assert_eq!(again[0].attempts, 1);
    assert!(
        p.b.outbox_claim(now + Duration::days(1), lease, 1, 10)
            .await
            .unwrap()
            .is_empty(),
        "an event at its attempt limit is not claimed"
    );
}

pub async fn the_audit_lists_newest_first_with_outcomes(p: Pair) {
    let rec = |version, status| AuditRecord {
        run_id: "run-1",
        at: "2026-12-08T18:00:00Z",
        definition: "/g/def",
        version,
        action: "delete",
        status,
        reason: "older than the newest 5",
        policy: "{\"keepLatest\":5}",
    };
    let first = p.a.audit_insert(&rec("1.0.0", "planned")).await.unwrap();
    let second = p.b.audit_insert(&rec("1.0.1", "planned")).await.unwrap();
    assert_ne!(first, second);
    p.a.audit_finish(first, "done", None).await.unwrap();
    p.b.audit_finish(second, "failed", Some("HTTP 409"))
        .await
        .unwrap();
    let rows = p.a.audit(10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].version, "1.0.1", "newest first");
    assert_eq!(rows[0].status, "failed");
    assert!(
        rows[0].reason.ends_with("failed: HTTP 409"),
        "{}",
        rows[0].reason
    );
    assert_eq!(rows[1].status, "done");
    assert_eq!(rows[1].reason, "older than the newest 5");
    assert_eq!(rows[1].policy["keepLatest"], 5);
    assert_eq!(p.a.audit(1).await.unwrap().len(), 1);
}

pub async fn dead_letters_keep_body_and_reason_newest_first(p: Pair) {
    for (i, s) in [&p.a, &p.b].iter().enumerate() {
        s.record_dead_letter(&NewDeadLetter {
            queue: "build-requests",
            message_id: &format!("m{i}"),
            body: "garbage",
            reason: "not JSON",
            delivery_count: 1,
            now: t0() + Duration::seconds(i as i64),
        })
        .await
        .unwrap();
    }
    let dl = p.a.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(dl[0].message_id, "m1");
    assert_eq!(dl[0].body, "garbage");
    assert_eq!(dl[0].reason, "not JSON");
    assert!(dl[0].seq > dl[1].seq);
    assert_eq!(p.a.dead_letters(1).await.unwrap().len(), 1);
    assert_eq!(dl[0].replayed_at, None);
}

pub async fn a_dead_letter_is_marked_replayed_once(p: Pair) {
    p.a.record_dead_letter(&NewDeadLetter {
        queue: "build-requests",
        message_id: "m-replay",
        body: "{}",
        reason: "MaxDeliveryCountExceeded",
        delivery_count: 10,
        now: t0(),
    })
    .await
    .unwrap();
    let seq = p.a.dead_letters(1).await.unwrap()[0].seq;
    let at = t0() + Duration::seconds(5);
    // Two instances replay at once: one marks it, the other is told.
    let (ra, rb) = tokio::join!(p.a.mark_replayed(seq, at), p.b.mark_replayed(seq, at));
    let marks = [ra.unwrap(), rb.unwrap()];
    let marked: Vec<_> = marks
        .iter()
        .filter_map(|m| match m {
            ReplayMark::Marked(d) => Some(d.clone()),
            ReplayMark::Already(_) | ReplayMark::Missing => None,
        })
        .collect();
    assert_eq!(marked.len(), 1, "{marks:?}");
    assert_eq!(marked[0].message_id, "m-replay");
    assert_eq!(marked[0].queue, "build-requests");
    assert!(marks.contains(&ReplayMark::Already(at)), "{marks:?}");
    assert_eq!(p.b.dead_letters(1).await.unwrap()[0].replayed_at, Some(at));
    // A send that failed clears the mark: the next replay may try again.
    p.b.unmark_replayed(seq).await.unwrap();
    assert_eq!(p.a.dead_letters(1).await.unwrap()[0].replayed_at, None);
    assert!(matches!(
        p.a.mark_replayed(seq, at).await.unwrap(),
        ReplayMark::Marked(_)
    ));
    assert_eq!(
        p.a.mark_replayed(seq + 1_000_000, at).await.unwrap(),
        ReplayMark::Missing
    );
}

pub async fn a_lease_has_one_holder_until_it_expires(p: Pair) {
    let ttl = Duration::seconds(60);
    let (la, lb) = tokio::join!(
        p.a.try_lease("timer:sweeper", "host-a", t0(), ttl),
        p.b.try_lease("timer:sweeper", "host-b", t0(), ttl)
    );
    let (la, lb) = (la.unwrap(), lb.unwrap());
    assert!(la ^ lb, "exactly one holder: a={la} b={lb}");
    let (holder, other) = if la {
        ("host-a", "host-b")
    } else {
        ("host-b", "host-a")
    };
    let later = t0() + Duration::seconds(30);
    assert!(
        p.a.try_lease("timer:sweeper", holder, later, ttl)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(!p
        .b
        .try_lease("timer:sweeper", other, later + Duration::seconds(59), ttl)
        .await
        .unwrap());
    assert!(
        p.b.try_lease("timer:sweeper", other, later + ttl, ttl)
            .await
            .unwrap(),
        "expired"
    );
}

pub async fn timer_memory_is_shared(p: Pair) {
    assert_eq!(p.a.last_fire("patch_tuesday").await.unwrap(), None);
    p.a.record_fire("patch_tuesday", t0()).await.unwrap();
    p.b.record_fire("patch_tuesday", t0() + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        p.a.last_fire("patch_tuesday").await.unwrap(),
        Some(t0() + Duration::minutes(1))
    );
}

pub async fn long_texts_are_kept_whole(p: Pair) {
    // Past one Table Storage property (32 Ki UTF-16 units), with
    // multi-byte characters on the cut.
    let long = |n: usize| "é".repeat(n);
    let b = build("b1", "p", t0());
    admit(&*p.a, &b).await;
    let (read, v) = p.a.get("b1").await.unwrap().unwrap();
    let extras = Extras {
        outbox: Some(OutboxRow {
            event_id: "big".into(),
            body: long(60_000),
            at: t0(),
        }),
        ..Default::default()
    };
    let next = failed(&read);
    let cause = long(40_000);
    p.a.commit(&Transition {
        build: &next,
        expected: v,
        from: &read.state,
        cause: Some(&cause),
        next_poll_at: None,
        now: t0(),
        extras: &extras,
    })
    .await
    .unwrap();
    assert_eq!(p.b.history("b1").await.unwrap()[1].cause, cause);
    let claimed =
        p.b.outbox_claim(t0(), Duration::seconds(30), 12, 10)
            .await
            .unwrap();
    assert_eq!(claimed[0].body, long(60_000));
    p.a.record_dead_letter(&NewDeadLetter {
        queue: "build-requests",
        message_id: "m",
        body: &long(100_000),
        reason: "too big to parse",
        delivery_count: 1,
        now: t0(),
    })
    .await
    .unwrap();
    assert_eq!(p.b.dead_letters(1).await.unwrap()[0].body, long(100_000));
    p.a.update_memory("p", |m| m.warnings = vec![long(40_000)])
        .await
        .unwrap();
    assert_eq!(
        p.b.runtime("p").await.unwrap().memory.warnings,
        vec![long(40_000)]
    );
    // Back to short: the long form does not linger.
    p.b.update_memory("p", |m| m.warnings = vec!["short".into()])
        .await
        .unwrap();
    assert_eq!(
        p.a.runtime("p").await.unwrap().memory.warnings,
        vec!["short".to_string()]
    );
}

/// Runs every case against `$pair` (an async expression giving a fresh [`Pair`]).
#[macro_export]
macro_rules! conformance_suite {
    ($pair:expr) => {
        $crate::conformance_suite!(@cases $pair;
            a_write_from_a_stale_read_is_a_conflict_and_changes_nothing,
            two_writers_racing_on_one_build_leave_exactly_one_winner,
            a_final_transition_commits_its_event_breaker_count_and_cleanup_with_it,
            a_repeated_key_finds_the_first_build_and_creates_nothing,
            an_admission_storm_with_one_key_admits_one_build,
            concurrent_requests_of_one_pipeline_make_one_queued_build,
            a_new_build_takes_a_version_no_earlier_build_has,
            a_scheduled_request_coalesces_into_the_queued_build,
            an_open_breaker_pauses_automatic_requests_only,
            the_breaker_opens_at_the_threshold_and_closes_on_success,
            two_claimants_of_the_last_slot_get_one_slot,
            a_finished_build_gives_its_slot_to_the_next,
            a_pipeline_at_its_own_cap_waits_while_others_start,
            due_lists_active_builds_whose_poll_time_has_come,
            listings_filter_by_pipeline_and_state_newest_first,
            memory_updates_from_two_instances_are_both_kept,
            a_cleanup_job_is_due_until_done_and_later_moves_it_back,
            a_kept_log_is_read_back_whole_and_replaced_by_a_later_copy,
            a_claimed_event_is_hidden_from_other_deliverers_until_its_lease_ends,
            the_audit_lists_newest_first_with_outcomes,
            dead_letters_keep_body_and_reason_newest_first,
            a_dead_letter_is_marked_replayed_once,
            a_lease_has_one_holder_until_it_expires,
            timer_memory_is_shared,
            long_texts_are_kept_whole,
        );
    };
    (@cases $pair:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::store::conformance::$case($pair.await).await;
            }
        )*
    };
}
