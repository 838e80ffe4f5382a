//! A run's life beyond one clean build: time limits, cancel, a dead
//! instance's orphaned run, idempotent templates without twin runs, and
//! injected faults that persist across restarts.

use super::*;

#[tokio::test]
async fn a_step_over_its_time_limit_fails_as_timeout() {
    let e = env().await;
    let mut body = template("app", json!([shell("slow", &["echo started", "sleep 30"])]));
    set(&mut body, "/tags/kiln.stepTimeoutSeconds", json!("1"));
    let t0 = std::time::Instant::now();
    let s = build(&e.p, "t-timeout", &body).await;
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(
        s.message
            .starts_with("timeout: step 'slow' exceeded its 1 s limit"),
        "{}",
        s.message
    );
    assert!(s.message.contains("started"));
    assert_eq!(classify(&s.message), FailureCategory::Timeout);

    // The whole-build limit (buildTimeoutInMinutes; seconds through a local
    // tag). Its clock includes staging the base, so the limit leaves a
    // loaded machine room to reach step b.
    let mut body = template(
        "app",
        json!([shell("a", &["true"]), shell("b", &["sleep 60"])]),
    );
    set(&mut body, "/tags/kiln.buildTimeoutSeconds", json!("6"));
    let s = build(&e.p, "t-build-timeout", &body).await;
    assert!(
        s.message.starts_with(
            "timeout: the build exceeded its 6 s limit (buildTimeoutInMinutes) during step 'b'"
        ),
        "{}",
        s.message
    );
}

fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c)
                .replace('\0', " ")
                .contains(marker)
        })
        .count()
}

#[tokio::test]
async fn cancel_kills_the_sandbox_and_cleans_up() {
    let e = env().await;
    let body = template(
        "app",
        json!([shell("long", &["echo long-running", "sleep 4242"])]),
    );
    e.p.put_template("t-cancel", &body).await.unwrap();
    e.p.run("t-cancel").await.unwrap();
    let start = std::time::Instant::now();
    while processes_with("sleep 4242") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the step never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match e.p.status("t-cancel").await.unwrap() {
        TemplateStatus::Run(s) => {
            assert_eq!(s.run_state, RunState::Running);
            assert_eq!(s.run_sub_state, Some(RunSubState::Customizing));
        }
        other => panic!("{other:?}"),
    }
    e.p.cancel("t-cancel").await.unwrap();
    let s = wait(&e.p, "t-cancel").await;
    assert_eq!(s.run_state, RunState::Canceled);
    assert_eq!(processes_with("sleep 4242"), 0);
    assert!(!e.data().join("staging/t-cancel").exists());
    // Canceling a finished run changes nothing.
    e.p.cancel("t-cancel").await.unwrap();
    let ok = build(&e.p, "t-done", &template("app", json!([]))).await;
    assert_eq!(ok.run_state, RunState::Succeeded);
    e.p.cancel("t-done").await.unwrap();
    assert!(
        matches!(e.p.status("t-done").await.unwrap(), TemplateStatus::Run(s) if s.run_state == RunState::Succeeded)
    );
}

#[tokio::test]
async fn a_run_of_a_dead_instance_is_reported_orphaned_not_running_forever() {
    let e = env().await;
    let body = template("app", json!([shell("nap", &["sleep 2"])]));
    e.p.put_template("t-orphan", &body).await.unwrap();
    e.p.run("t-orphan").await.unwrap();
    // Same store and data, new instance: the old process is "gone".
    let p2 = e.restart("after-restart", Faults::none());
    let s = match p2.status("t-orphan").await.unwrap() {
        TemplateStatus::Run(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.run_state, RunState::Failed);
    assert!(
        s.message
            .starts_with("orphaned: the process running this build exited"),
        "{}",
        s.message
    );
    assert_eq!(classify(&s.message), FailureCategory::Transient);
    // Persisted: the first instance finds it failed too, and its task cannot overwrite it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match e.p.status("t-orphan").await.unwrap() {
        TemplateStatus::Run(s) => assert!(s.message.starts_with("orphaned:"), "{}", s.message),
        other => panic!("{other:?}"),
    }
    // run() does not start a twin.
    p2.run("t-orphan").await.unwrap();
    assert!(
        matches!(p2.status("t-orphan").await.unwrap(), TemplateStatus::Run(s) if s.run_state == RunState::Failed)
    );
}

#[tokio::test]
async fn templates_are_idempotent_and_runs_have_no_twins() {
    let e = env().await;
    let body = template("app", json!([shell("one", &["echo once >> /etc/count"])]));
    assert!(matches!(
        e.p.status("t-idem").await.unwrap(),
        TemplateStatus::Missing
    ));
    e.p.put_template("t-idem", &body).await.unwrap();
    e.p.put_template("t-idem", &body).await.unwrap();
    assert!(matches!(
        e.p.status("t-idem").await.unwrap(),
        TemplateStatus::NotRun
    ));
    // Changed before it ran: an update.
    let body2 = template("app", json!([shell("two", &["echo twice >> /etc/count"])]));
    e.p.put_template("t-idem", &body2).await.unwrap();
    e.p.run("t-idem").await.unwrap();
    e.p.run("t-idem").await.unwrap();
    let s = wait(&e.p, "t-idem").await;
    assert_eq!(s.run_state, RunState::Succeeded);
    e.p.run("t-idem").await.unwrap();
    assert!(
        matches!(e.p.status("t-idem").await.unwrap(), TemplateStatus::Run(s) if s.run_state == RunState::Succeeded)
    );
    let log = std::fs::read_to_string(e.p.log_path("t-idem")).unwrap();
    assert_eq!(log.matches("kiln local build of template").count(), 1);
    assert!(log.contains("'two'"));
    // The same body again is fine; another body after the run is refused.
    e.p.put_template("t-idem", &body2).await.unwrap();
    assert!(e.p.put_template("t-idem", &body).await.is_err());
    // Delete removes the record, not the outputs.
    e.p.delete_template("t-idem").await.unwrap();
    assert!(matches!(
        e.p.status("t-idem").await.unwrap(),
        TemplateStatus::Missing
    ));
    assert_eq!(e.p.list_versions(&def_id("app")).await.unwrap().len(), 1);
    e.p.delete_template("t-idem").await.unwrap();
}

#[tokio::test]
async fn injected_faults_fail_transiently_then_let_builds_through_across_restarts() {
    let faults = Faults::parse(r#"[{"pipeline":"tiny","kind":"fail-transient","times":2},{"pipeline":"other","kind":"fail"}]"#).unwrap();
    let e = env_with(faults.clone()).await;
    let body = template("app", json!([]));
    let s = build(&e.p, "t-f1", &body).await;
    assert!(s.message.starts_with("network: step 'kiln-fault-fail-transient' exited with 75: injected transient failure (fault use 1 of 2)"), "{}", s.message);
    assert!(classify(&s.message).is_transient());
    // The count is durable: a restarted process sees the second use, then none.
    let p2 = e.restart("second", faults);
    let s = build(&p2, "t-f2", &body).await;
    assert!(s.message.contains("fault use 2 of 2"), "{}", s.message);
    let s = build(&p2, "t-f3", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let mut other = body.clone();
    set(&mut other, "/tags/kiln.pipeline", json!("other"));
    let s = build(&p2, "t-f4", &other).await;
    assert!(
        s.message
            .starts_with("customizer: step 'kiln-fault-fail' exited with 1"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn hang_and_slow_faults_meet_the_step_limit() {
    let faults = Faults::parse(r#"[{"pipeline":"hang","kind":"hang","times":1},{"pipeline":"slow","kind":"slow","seconds":1}]"#).unwrap();
    let e = env_with(faults).await;
    let mut body = template("app", json!([]));
    set(&mut body, "/tags/kiln.pipeline", json!("hang"));
    set(&mut body, "/tags/kiln.stepTimeoutSeconds", json!("1"));
    let s = build(&e.p, "t-hang", &body).await;
    assert!(
        s.message
            .starts_with("timeout: step 'kiln-fault-hang' exceeded"),
        "{}",
        s.message
    );
    set(&mut body, "/tags/kiln.pipeline", json!("slow"));
    set(&mut body, "/tags/kiln.stepTimeoutSeconds", json!("20"));
    let t0 = std::time::Instant::now();
    let s = build(&e.p, "t-slow", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    assert!(t0.elapsed() >= Duration::from_secs(1));
}
