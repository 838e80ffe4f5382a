use super::*;
use crate::domain::build::Trigger;
use chrono::TimeZone;

fn build(id: &str) -> Build {
    Build {
        id: id.into(),
        pipeline: "p".into(),
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
        created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    }
}

fn store_with(b: &Build) -> Store {
    let s = Store::new(Db::open_in_memory().unwrap());
    let created = s
        .admit(
            "p",
            &b.idempotency_key,
            &Trigger::Manual,
            b.created_at,
            &[],
            |_| Ok(b.clone()),
        )
        .unwrap();
    assert!(matches!(created, Admitted::Created(_)));
    s
}

#[test]
fn a_write_from_a_stale_read_is_a_conflict_and_changes_nothing() {
    let b = build("b1");
    let s = store_with(&b);
    let (read, v) = s.get("b1").unwrap().unwrap();
    let mut first = read.clone();
    first.state = BuildState::Submitting { not_before: None };
    let now = b.created_at;
    assert_eq!(
        s.update(
            &first,
            v,
            &read.state,
            Some("first"),
            None,
            now,
            &Extras::default()
        )
        .unwrap()
        .0,
        Write::Written { row_version: v + 1 }
    );
    let mut second = read.clone();
    second.state = BuildState::Failed {
        category: crate::domain::build::FailureCategory::Customizer,
        message: "late".into(),
    };
    // The loser's event and breaker count are not committed either.
    let extras = Extras {
        outbox: Some(("ev-late".into(), "{}".into(), now)),
        outcome: Some(Outcome {
            automatic: true,
            succeeded: false,
            threshold: 1,
        }),
        retire: vec![],
    };
    assert_eq!(
        s.update(&second, v, &read.state, Some("second"), None, now, &extras)
            .unwrap(),
        (Write::Conflict, None)
    );
    let outbox: i64 = s
        .db()
        .with(|c| c.query_row("SELECT COUNT(*) FROM event_outbox", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(outbox, 0);
    assert_eq!(s.runtime("p").unwrap().consecutive_failures, 0);
    assert_eq!(s.get("b1").unwrap().unwrap().0.state, first.state);
    assert_eq!(
        s.history("b1").unwrap().len(),
        2,
        "admission and the first write only"
    );
}

#[test]
fn a_final_transition_commits_its_event_and_breaker_count_with_it() {
    let b = build("b1");
    let s = store_with(&b);
    let (read, v) = s.get("b1").unwrap().unwrap();
    let mut failed = read.clone();
    failed.state = BuildState::Failed {
        category: crate::domain::build::FailureCategory::Customizer,
        message: "x".into(),
    };
    let now = b.created_at;
    let extras = Extras {
        outbox: Some(("ev-1".into(), "{}".into(), now)),
        outcome: Some(Outcome {
            automatic: true,
            succeeded: false,
            threshold: 1,
        }),
        retire: vec![],
    };
    let (w, change) = s
        .update(&failed, v, &read.state, Some("failed"), None, now, &extras)
        .unwrap();
    assert!(matches!(w, Write::Written { .. }));
    assert_eq!(change, Some(BreakerChange::Opened { failures: 1 }));
    let outbox: i64 = s
        .db()
        .with(|c| c.query_row("SELECT COUNT(*) FROM event_outbox", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(outbox, 1);
}

#[test]
fn a_repeated_key_finds_the_first_build_and_creates_nothing() {
    let b = build("b1");
    let s = store_with(&b);
    let again = s
        .admit(
            "p",
            &b.idempotency_key,
            &Trigger::Manual,
            b.created_at,
            &[],
            |_| Ok(build("b2")),
        )
        .unwrap();
    assert_eq!(again, Admitted::Existing("b1".into()));
    assert!(s.get("b2").unwrap().is_none());
}

#[test]
fn the_breaker_opens_at_the_threshold_and_closes_on_success() {
    let s = Store::new(Db::open_in_memory().unwrap());
    let now = Utc::now();
    assert_eq!(s.record_outcome("p", true, false, 2, now).unwrap(), None);
    assert_eq!(
        s.record_outcome("p", false, false, 2, now).unwrap(),
        None,
        "manual failures do not count"
    );
    assert_eq!(
        s.record_outcome("p", true, false, 2, now).unwrap(),
        Some(BreakerChange::Opened { failures: 2 })
    );
    assert!(s.runtime("p").unwrap().breaker_open_since.is_some());
    assert_eq!(
        s.record_outcome("p", false, true, 2, now).unwrap(),
        Some(BreakerChange::Closed)
    );
    assert_eq!(s.runtime("p").unwrap().consecutive_failures, 0);
}
