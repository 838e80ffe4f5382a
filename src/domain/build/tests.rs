use super::*;
use crate::domain::run::{RunState, RunStatus, RunSubState};
use chrono::TimeZone;
use proptest::prelude::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 8, 3, 0, 0).unwrap()
}

fn queued() -> Build {
    Build {
        id: "b1".into(),
        pipeline: "tiny".into(),
        trigger: Trigger::Manual,
        reason: "test".into(),
        requested_by: "tester".into(),
        idempotency_key: "k1".into(),
        version: ImageVersion::new(1, 0, 0),
        source_version: None,
        template_hash: "h".into(),
        attempt: 1,
        max_attempts: 3,
        timeout_minutes: 60,
        state: BuildState::Queued,
        created_at: t0(),
        attempt_started_at: None,
        quiet_polls: 0,
        last_seen: None,
    }
}

fn run(state: RunState, sub: Option<RunSubState>, msg: &str) -> Observation {
    Observation::Provider {
        status: TemplateStatus::Run(RunStatus {
            run_state: state,
            run_sub_state: sub,
            message: msg.into(),
            start_time: None,
            end_time: None,
        }),
        outputs: vec![],
        replication: None,
        leftover_version: None,
    }
}

fn output() -> RunOutput {
    RunOutput {
        name: "tiny".into(),
        artifact_id: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/tiny/versions/1.0.0".into()),
        artifact_uri: None,
        provisioning_state: "Succeeded".into(),
    }
}

fn succeeded_obs() -> Observation {
    Observation::Provider {
        status: TemplateStatus::Run(RunStatus {
            run_state: RunState::Succeeded,
            run_sub_state: Some(RunSubState::Distributing),
            message: String::new(),
            start_time: None,
            end_time: None,
        }),
        outputs: vec![output()],
        replication: None,
        leftover_version: None,
    }
}

/// The attempt's template does not exist; `leftover` is the gallery's answer
/// to "did an earlier attempt leave this build's version behind?".
fn template_missing(leftover: Option<bool>) -> Observation {
    Observation::Provider {
        status: TemplateStatus::Missing,
        outputs: vec![],
        replication: None,
        leftover_version: leftover,
    }
}

fn template(status: TemplateStatus) -> Observation {
    Observation::Provider {
        status,
        outputs: vec![],
        replication: None,
        leftover_version: None,
    }
}

/// A gallery answer: every region replicated, or one still copying.
fn replicated_to(done: bool) -> Replication {
    if done {
        Replication {
            completed: vec!["westeurope".into(), "northeurope".into()],
            ..Replication::default()
        }
    } else {
        Replication {
            completed: vec!["westeurope".into()],
            pending: vec!["northeurope".into()],
            ..Replication::default()
        }
    }
}

fn apply(b: &Build, obs: &Observation, now: DateTime<Utc>) -> Decision {
    transition(b, obs, now, &Tuning::local())
}

#[test]
fn a_granted_slot_submits_the_first_attempt() {
    let d = apply(&queued(), &Observation::SlotGranted, t0());
    assert_eq!(d.build.state, BuildState::Submitting { not_before: None });
    assert!(d.effects.contains(&Effect::Submit {
        template: "kiln-b1-a1".into()
    }));
    assert!(d.cause.is_some());
}

#[test]
fn the_happy_path_walks_the_provider_phases_to_succeeded() {
    let mut b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let phases = [
        (RunSubState::Customizing, "running"),
        (RunSubState::Validating, "validating"),
        (RunSubState::Distributing, "publishing"),
    ];
    for (sub, name) in phases {
        b = apply(&b, &run(RunState::Running, Some(sub), ""), t0()).build;
        assert_eq!(b.state.name(), name);
    }
    let d = apply(&b, &succeeded_obs(), t0());
    assert_eq!(
        d.build.state,
        BuildState::Succeeded {
            artifacts: vec![output()],
            failed_regions: vec![],
        }
    );
    assert!(d.effects.contains(&Effect::AdmitQueued));
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::SchedulePoll { .. })));
}

#[test]
fn a_transient_failure_retries_with_backoff_and_the_same_version() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let d = apply(
        &b,
        &run(RunState::Failed, None, "network: mirror unreachable"),
        t0(),
    );
    assert_eq!(d.build.attempt, 2);
    assert_eq!(d.build.version, b.version);
    let BuildState::Submitting {
        not_before: Some(at),
    } = d.build.state
    else {
        panic!("expected a delayed resubmit, got {:?}", d.build.state)
    };
    assert!(at > t0());
    assert!(d.effects.contains(&Effect::DeleteTemplate {
        template: "kiln-b1-a1".into()
    }));
    // Before the backoff ends nothing is submitted; after it, attempt 2 is.
    let early = apply(&d.build, &Observation::Tick, t0());
    assert!(!early
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Submit { .. })));
    let late = apply(&d.build, &Observation::Tick, at);
    assert!(
        !late
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Submit { .. })),
        "a tick learns nothing, so it submits nothing"
    );
    let late = apply(&d.build, &template_missing(Some(false)), at);
    assert!(late.effects.contains(&Effect::Submit {
        template: "kiln-b1-a2".into()
    }));
}

#[test]
fn transient_failures_stop_at_the_attempt_limit() {
    let mut b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let mut now = t0();
    for _ in 0..3 {
        b = apply(&b, &run(RunState::Failed, None, "transient: blip"), now).build;
        now += chrono::Duration::hours(1);
        b = apply(&b, &template_missing(Some(false)), now).build;
    }
    match &b.state {
        BuildState::Failed { category, message } => {
            assert_eq!(*category, FailureCategory::Transient);
            assert!(message.contains("after 3 attempts"), "{message}");
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert_eq!(b.attempt, 3);
}

#[test]
fn a_permanent_failure_fails_at_once_with_its_category_and_step() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let msg = "customizer: step 'install-agent' exited with 1: E: Unable to locate package";
    let d = apply(
        &b,
        &run(RunState::Failed, Some(RunSubState::Customizing), msg),
        t0(),
    );
    assert_eq!(
        d.build.state,
        BuildState::Failed {
            category: FailureCategory::Customizer,
            message: msg.into()
        }
    );
    assert_eq!(d.build.attempt, 1);
}

#[test]
fn a_hung_build_is_canceled_and_fails_as_timeout() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let later = t0() + chrono::Duration::minutes(62);
    let d = apply(
        &b,
        &run(RunState::Running, Some(RunSubState::Customizing), ""),
        later,
    );
    assert!(matches!(
        d.build.state,
        BuildState::Canceling {
            timed_out: true,
            ..
        }
    ));
    assert!(d.effects.contains(&Effect::CancelRun {
        template: "kiln-b1-a1".into()
    }));
    let end = apply(&d.build, &run(RunState::Canceled, None, ""), later);
    assert!(matches!(
        end.build.state,
        BuildState::Failed {
            category: FailureCategory::Timeout,
            ..
        }
    ));
}

#[test]
fn partial_success_waits_for_replication_instead_of_failing() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let partial = |replicated: Option<bool>| Observation::Provider {
        status: TemplateStatus::Run(RunStatus {
            run_state: RunState::PartiallySucceeded,
            run_sub_state: Some(RunSubState::Distributing),
            message: "Failed in distributing 1 images out of total 1: context deadline exceeded"
                .into(),
            start_time: None,
            end_time: None,
        }),
        outputs: vec![output()],
        replication: replicated.map(replicated_to),
        leftover_version: None,
    };
    let waiting = apply(&b, &partial(Some(false)), t0()).build;
    assert_eq!(waiting.state, BuildState::Publishing { replicating: true });
    let done = apply(&waiting, &partial(Some(true)), t0()).build;
    assert!(matches!(done.state, BuildState::Succeeded { .. }));
}

#[test]
fn cancel_of_a_queued_build_needs_no_provider() {
    let d = apply(
        &queued(),
        &Observation::CancelRequested {
            reason: "by alice".into(),
        },
        t0(),
    );
    assert_eq!(
        d.build.state,
        BuildState::Canceled {
            reason: "by alice".into()
        }
    );
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelRun { .. })));
}

#[test]
fn cancel_of_a_running_build_goes_through_canceling() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let c = apply(
        &b,
        &Observation::CancelRequested {
            reason: "by bob".into(),
        },
        t0(),
    )
    .build;
    assert_eq!(c.state.name(), "canceling");
    let still = apply(&c, &run(RunState::Canceling, None, ""), t0()).build;
    assert_eq!(still.state.name(), "canceling");
    let end = apply(&still, &run(RunState::Canceled, None, ""), t0()).build;
    assert_eq!(
        end.state,
        BuildState::Canceled {
            reason: "by bob".into()
        }
    );
}

#[test]
fn an_orphaned_run_is_a_transient_failure_that_retries() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let d = apply(
        &b,
        &run(
            RunState::Failed,
            None,
            "orphaned: the process running this build exited",
        ),
        t0(),
    );
    assert_eq!(d.build.attempt, 2);
}

#[test]
fn a_repeated_observation_records_no_new_history() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let obs = run(RunState::Running, Some(RunSubState::Building), "");
    let once = apply(&b, &obs, t0());
    assert!(once.cause.is_some());
    let twice = apply(&once.build, &obs, t0());
    assert!(twice.cause.is_none());
    assert!(twice
        .effects
        .iter()
        .any(|e| matches!(e, Effect::SchedulePoll { .. })));
}

#[test]
fn poll_delays_start_short_and_back_off_to_the_cap() {
    let t = Tuning::azure();
    assert_eq!(t.poll_delay(0, false), Duration::from_secs(30));
    assert!(t.poll_delay(4, false) > t.poll_delay(1, false));
    assert_eq!(t.poll_delay(100, false), Duration::from_secs(300));
    // Near the end of a run the cap is lower, so the end is seen soon.
    assert_eq!(t.poll_delay(100, true), Duration::from_secs(60));
}

// ---- properties over random observation sequences ----

fn arb_run_state() -> impl Strategy<Value = RunState> {
    prop_oneof![
        Just(RunState::Running),
        Just(RunState::Canceling),
        Just(RunState::Succeeded),
        Just(RunState::PartiallySucceeded),
        Just(RunState::Failed),
        Just(RunState::Canceled),
        Just(RunState::Unknown("Weird".into())),
    ]
}

fn arb_sub() -> impl Strategy<Value = Option<RunSubState>> {
    prop_oneof![
        Just(None),
        Just(Some(RunSubState::Queued)),
        Just(Some(RunSubState::Building)),
        Just(Some(RunSubState::Customizing)),
        Just(Some(RunSubState::Validating)),
        Just(Some(RunSubState::Distributing)),
    ]
}

fn arb_message() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("network: blip".to_string()),
        Just("customizer: step 'x' exited with 1".to_string()),
        Just("orphaned: process exited".to_string()),
        Just("AuthorizationFailed".to_string()),
        Just("".to_string()),
    ]
}

fn arb_obs() -> impl Strategy<Value = Observation> {
    prop_oneof![
        Just(Observation::SlotGranted),
        Just(Observation::Tick),
        Just(Observation::CancelRequested { reason: "r".into() }),
        Just(Observation::Provider {
            status: TemplateStatus::Missing,
            outputs: vec![],
            replication: None,
            leftover_version: None
        }),
        Just(Observation::Provider {
            status: TemplateStatus::NotRun,
            outputs: vec![],
            replication: None,
            leftover_version: None
        }),
        (
            arb_run_state(),
            arb_sub(),
            arb_message(),
            proptest::option::of(any::<bool>())
        )
            .prop_map(|(s, sub, m, replicated)| Observation::Provider {
                status: TemplateStatus::Run(RunStatus {
                    run_state: s,
                    run_sub_state: sub,
                    message: m,
                    start_time: None,
                    end_time: None,
                }),
                outputs: vec![],
                replication: replicated.map(replicated_to),
                leftover_version: None,
            }),
        arb_message().prop_map(|m| Observation::SubmitFailed {
            category: classify(&m),
            message: m
        }),
    ]
}

/// Drives a build to an end the way the world eventually does: a permanent
/// provider failure, repeated.
fn drive_to_end(mut b: Build, mut now: DateTime<Utc>) -> (Build, usize) {
    let fail = run(RunState::Failed, None, "customizer: step exited with 1");
    for i in 0..20 {
        if b.state.is_terminal() {
            return (b, i);
        }
        let obs = match b.state {
            BuildState::Queued => Observation::SlotGranted,
            _ => fail.clone(),
        };
        b = apply(&b, &obs, now).build;
        now += chrono::Duration::minutes(1);
    }
    (b, 20)
}

proptest! {
    #[test]
    fn terminal_states_are_final(seq in proptest::collection::vec(arb_obs(), 0..40), more in proptest::collection::vec(arb_obs(), 1..10)) {
        let mut b = queued();
        let mut now = t0();
        for o in &seq {
            b = apply(&b, o, now).build;
            now += chrono::Duration::seconds(30);
        }
        if b.state.is_terminal() {
            for o in &more {
                let d = apply(&b, o, now);
                prop_assert_eq!(&d.build, &b);
                prop_assert!(d.effects.is_empty());
            }
        }
    }

    #[test]
    fn attempts_are_bounded_and_versions_never_change(seq in proptest::collection::vec(arb_obs(), 0..80)) {
        let mut b = queued();
        let mut now = t0();
        for o in &seq {
            let d = apply(&b, o, now);
            prop_assert!(d.build.attempt <= d.build.max_attempts);
            prop_assert!(d.build.attempt >= b.attempt);
            prop_assert_eq!(d.build.version, b.version);
            b = d.build;
            now += chrono::Duration::minutes(7);
        }
    }

    #[test]
    fn every_non_terminal_state_can_reach_a_terminal_one(seq in proptest::collection::vec(arb_obs(), 0..40)) {
        let mut b = queued();
        let mut now = t0();
        for o in &seq {
            b = apply(&b, o, now).build;
            now += chrono::Duration::seconds(45);
        }
        // By permanent failure…
        let (end, steps) = drive_to_end(b.clone(), now);
        prop_assert!(end.state.is_terminal(), "stuck in {:?} after {} steps", end.state, steps);
        // …by cancel…
        let c = apply(&b, &Observation::CancelRequested { reason: "r".into() }, now).build;
        let c = apply(&c, &Observation::Provider { status: TemplateStatus::Missing, outputs: vec![], replication: None, leftover_version: None }, now).build;
        prop_assert!(c.state.is_terminal(), "cancel left {:?}", c.state);
        // …and by time alone, whatever the provider says (running forever).
        if !b.state.is_terminal() && b.state != BuildState::Queued {
            let forever = run(RunState::Running, Some(RunSubState::Customizing), "");
            let mut x = b.clone();
            let mut t = now;
            for _ in 0..6 {
                t += chrono::Duration::hours(3);
                x = apply(&x, &forever, t).build;
                x = apply(&x, &Observation::Provider { status: TemplateStatus::Missing, outputs: vec![], replication: None, leftover_version: None }, t).build;
            }
            prop_assert!(x.state.is_terminal(), "time left {:?}", x.state);
        }
    }

    #[test]
    fn a_state_change_always_has_a_cause(seq in proptest::collection::vec(arb_obs(), 0..40)) {
        let mut b = queued();
        let mut now = t0();
        for o in &seq {
            let d = apply(&b, o, now);
            if d.build.state != b.state || d.build.attempt != b.attempt {
                prop_assert!(d.cause.is_some());
            }
            b = d.build;
            now += chrono::Duration::seconds(20);
        }
    }
}

#[test]
fn a_canceling_build_ends_when_the_run_ends_partially_succeeded() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let c = apply(
        &b,
        &Observation::CancelRequested { reason: "r".into() },
        t0(),
    )
    .build;
    let partial = |replicated: Option<bool>| Observation::Provider {
        status: TemplateStatus::Run(RunStatus {
            run_state: RunState::PartiallySucceeded,
            run_sub_state: Some(RunSubState::Distributing),
            message: "replication failed in one region".into(),
            start_time: None,
            end_time: None,
        }),
        outputs: vec![output()],
        replication: replicated.map(replicated_to),
        leftover_version: None,
    };
    // Still copying somewhere: wait for it.
    assert_eq!(
        apply(&c, &partial(Some(false)), t0()).build.state.name(),
        "canceling"
    );
    assert_eq!(
        apply(&c, &partial(Some(true)), t0()).build.state.name(),
        "succeeded"
    );
    let ended = |replication: Replication| match partial(None) {
        Observation::Provider {
            status, outputs, ..
        } => Observation::Provider {
            status,
            outputs,
            replication: Some(replication),
            leftover_version: None,
        },
        other => other,
    };
    // Live in one region: the build says so instead of hiding it.
    let live = apply(
        &c,
        &ended(Replication {
            completed: vec!["westeurope".into()],
            failed: vec!["northeurope".into()],
            ..Replication::default()
        }),
        t0(),
    );
    assert_eq!(
        live.build.state,
        BuildState::Succeeded {
            artifacts: vec![output()],
            failed_regions: vec!["northeurope".into()],
        }
    );
    // Published nowhere: the cancel stands.
    let nowhere = apply(
        &c,
        &ended(Replication {
            failed: vec!["westeurope".into()],
            ..Replication::default()
        }),
        t0(),
    );
    assert_eq!(nowhere.build.state.name(), "canceled");
}

#[test]
fn a_cancel_the_provider_ignores_is_sent_again_and_then_given_up() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let c = apply(
        &b,
        &Observation::CancelRequested { reason: "r".into() },
        t0(),
    )
    .build;
    let running = run(RunState::Running, Some(RunSubState::Customizing), "");
    let again = apply(&c, &running, t0() + chrono::Duration::minutes(1));
    assert!(again.effects.contains(&Effect::CancelRun {
        template: "kiln-b1-a1".into()
    }));
    assert_eq!(again.build.state.name(), "canceling");
    // Past the timeout plus twice the margin the build stops waiting.
    let late = t0() + chrono::Duration::minutes(63);
    let d = apply(&again.build, &running, late);
    match &d.build.state {
        BuildState::Failed { category, message } => {
            assert_eq!(*category, FailureCategory::Timeout);
            assert!(message.contains("did not confirm the cancel"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retry_after_a_long_attempt_gets_its_own_clock() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    // The first attempt fails transiently after 59 of its 60 minutes.
    let failed_at = t0() + chrono::Duration::minutes(59);
    let d = apply(&b, &run(RunState::Failed, None, "network: blip"), failed_at);
    let BuildState::Submitting {
        not_before: Some(at),
    } = d.build.state
    else {
        panic!("{:?}", d.build.state)
    };
    let resubmitted = apply(
        &d.build,
        &template_missing(Some(false)),
        at + chrono::Duration::minutes(5),
    );
    assert_eq!(
        resubmitted.build.state,
        BuildState::Submitting { not_before: None }
    );
    assert!(resubmitted.effects.contains(&Effect::Submit {
        template: "kiln-b1-a2".into()
    }));
}

// ---- the Azure contract: long operations are followed, never waited on ----

#[test]
fn a_template_still_provisioning_is_waited_for_and_not_submitted_again() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let d = apply(&b, &template(TemplateStatus::Provisioning), t0());
    assert_eq!(d.build.state, BuildState::Submitting { not_before: None });
    assert_eq!(d.effects.len(), 1, "{:?}", d.effects);
    assert!(matches!(d.effects[0], Effect::SchedulePoll { .. }));
}

#[test]
fn a_provisioned_template_that_has_not_run_is_run_not_created_again() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let d = apply(&b, &template(TemplateStatus::NotRun), t0());
    assert!(d.effects.contains(&Effect::Run {
        template: "kiln-b1-a1".into()
    }));
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Submit { .. } | Effect::DeleteTemplate { .. })));
}

#[test]
fn an_unconfirmed_run_is_read_back_never_resubmitted_on_a_tick() {
    // The run request got no answer: the driver observes nothing new (Tick)
    // or the template as it is; neither starts a second run or a new attempt.
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let tick = apply(&b, &Observation::Tick, t0() + chrono::Duration::seconds(30));
    assert_eq!(tick.build.attempt, 1);
    assert!(!tick.effects.iter().any(|e| matches!(
        e,
        Effect::Submit { .. } | Effect::Run { .. } | Effect::DeleteTemplate { .. }
    )));
    // lastRunStatus says the run did start: the build follows it.
    let running = apply(
        &b,
        &run(RunState::Running, Some(RunSubState::Building), ""),
        t0(),
    );
    assert_eq!(running.build.state.name(), "running");
    assert_eq!(running.build.attempt, 1);
}

#[test]
fn a_template_aib_refuses_fails_with_its_code_and_is_retired() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let d = apply(
        &b,
        &template(TemplateStatus::ProvisioningFailed {
            code: "BadStagingResourceGroup".into(),
            message: "the staging resource group is not empty".into(),
        }),
        t0(),
    );
    match &d.build.state {
        BuildState::Failed { category, message } => {
            assert_eq!(*category, FailureCategory::Validation);
            assert!(message.contains("BadStagingResourceGroup"), "{message}");
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(d.effects.contains(&Effect::DeleteTemplate {
        template: "kiln-b1-a1".into()
    }));
    // A server error while provisioning is worth another attempt.
    let d = apply(
        &b,
        &template(TemplateStatus::ProvisioningFailed {
            code: "ServerError".into(),
            message: "try again".into(),
        }),
        t0(),
    );
    assert_eq!(d.build.attempt, 2);
}

#[test]
fn a_retry_first_removes_the_version_an_earlier_attempt_left() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let failed = apply(
        &b,
        &run(
            RunState::Failed,
            Some(RunSubState::Distributing),
            "network: replication timed out",
        ),
        t0(),
    )
    .build;
    let BuildState::Submitting {
        not_before: Some(at),
    } = failed.state
    else {
        panic!("{:?}", failed.state)
    };
    // Not asked yet: ask before anything is submitted.
    let unasked = apply(&failed, &template_missing(None), at);
    assert!(!unasked
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Submit { .. })));
    // The gallery still has version 1.0.0 from attempt 1: it goes first.
    let removing = apply(&failed, &template_missing(Some(true)), at);
    assert!(removing.effects.contains(&Effect::RemoveLeftoverVersion));
    assert!(!removing
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Submit { .. })));
    // Once it is gone, attempt 2 is submitted, to the same version.
    let submitted = apply(&removing.build, &template_missing(Some(false)), at);
    assert!(submitted.effects.contains(&Effect::Submit {
        template: "kiln-b1-a2".into()
    }));
    assert_eq!(submitted.build.version, b.version);
}

#[test]
fn a_partial_success_ends_with_the_regions_that_failed_once_none_is_copying() {
    let b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let partial = |replication: Replication| Observation::Provider {
        status: TemplateStatus::Run(RunStatus {
            run_state: RunState::PartiallySucceeded,
            run_sub_state: Some(RunSubState::Distributing),
            message: "Failed in distributing 1 images out of total 1".into(),
            start_time: None,
            end_time: None,
        }),
        outputs: vec![output()],
        replication: Some(replication),
        leftover_version: None,
    };
    let d = apply(
        &b,
        &partial(Replication {
            completed: vec!["westeurope".into()],
            failed: vec!["eastus".into()],
            pending: vec![],
            unpublished: vec![],
        }),
        t0(),
    );
    assert_eq!(
        d.build.state,
        BuildState::Succeeded {
            artifacts: vec![output()],
            failed_regions: vec!["eastus".into()],
        }
    );
    assert!(d.cause.unwrap().contains("replication failed in eastus"));
    // No region holds it: the attempt failed to publish, and is retried.
    let d = apply(
        &b,
        &partial(Replication {
            completed: vec![],
            failed: vec!["eastus".into(), "westeurope".into()],
            pending: vec![],
            unpublished: vec![],
        }),
        t0(),
    );
    assert_eq!(d.build.attempt, 2);
    assert!(d.cause.unwrap().contains("replication"));
    // Two outputs, one published and one that reached no region: the build
    // did not publish what it was asked to.
    let d = apply(
        &b,
        &partial(Replication {
            completed: vec!["westeurope".into()],
            failed: vec!["westeurope".into()],
            pending: vec![],
            unpublished: vec!["/subscriptions/s/.../images/other".into()],
        }),
        t0(),
    );
    assert_eq!(d.build.attempt, 2, "{:?}", d.build.state);
}

#[test]
fn polls_near_the_end_of_a_run_are_capped_lower_than_in_its_middle() {
    let mut b = apply(&queued(), &Observation::SlotGranted, t0()).build;
    let t = Tuning::azure();
    let delay = |d: &Decision| {
        d.effects
            .iter()
            .find_map(|e| match e {
                Effect::SchedulePoll { after } => Some(*after),
                _ => None,
            })
            .unwrap()
    };
    b.quiet_polls = 20;
    b.state = BuildState::Running {
        phase: Phase::Customizing,
    };
    b.last_seen = Some(format!(
        "{:?}/{:?}/",
        RunState::Running,
        Some(RunSubState::Customizing)
    ));
    let customizing = transition(
        &b,
        &run(RunState::Running, Some(RunSubState::Customizing), ""),
        t0(),
        &t,
    );
    assert_eq!(delay(&customizing), t.poll_max);
    b.state = BuildState::Publishing { replicating: false };
    b.last_seen = Some(format!(
        "{:?}/{:?}/",
        RunState::Running,
        Some(RunSubState::Distributing)
    ));
    let distributing = transition(
        &b,
        &run(RunState::Running, Some(RunSubState::Distributing), ""),
        t0(),
        &t,
    );
    assert_eq!(delay(&distributing), t.poll_max_finishing);
}
