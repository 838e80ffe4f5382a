use super::*;
use chrono::TimeZone as _;
use chrono_tz::Tz;
use proptest::prelude::*;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 instant")
}

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a YYYY-MM-DD date")
}

fn patch_spec(offset_days: i32, at: &str, tz: &str) -> ScheduleSpec {
    ScheduleSpec {
        patch_tuesday: Some(PatchTuesdaySpec {
            offset_days,
            at: at.into(),
            time_zone: tz.into(),
        }),
        ..ScheduleSpec::default()
    }
}

fn cron_spec(expr: &str, tz: Option<&str>) -> ScheduleSpec {
    ScheduleSpec {
        cron: Some(expr.into()),
        time_zone: tz.map(Into::into),
        ..ScheduleSpec::default()
    }
}

fn blackout(from: &str, to: Option<&str>) -> Blackout {
    Blackout {
        from: date(from),
        to: to.map(date),
        reason: None,
    }
}

fn build(spec: ScheduleSpec) -> Schedule {
    Schedule::from_spec(&spec).expect("a valid schedule")
}

fn error(spec: ScheduleSpec) -> String {
    Schedule::from_spec(&spec).expect_err("an invalid schedule")
}

fn fires(occurrences: &[Occurrence]) -> Vec<(String, DateTime<Utc>)> {
    occurrences
        .iter()
        .map(|o| (o.cycle.clone(), o.fires_at))
        .collect()
}

/// Patch Tuesday computed differently from the implementation: scan days
/// 8..=14 for the Tuesday, offset by day numbers, and insist the local
/// time is unambiguous (offsets 0, +1, +7, -1 never land on the Sundays
/// when Berlin and Los Angeles change clocks).
fn expected_fire(year: i32, month: u32, offset: i32, at: (u32, u32), tz: Tz) -> DateTime<Utc> {
    let tuesday = (8..=14)
        .filter_map(|d| NaiveDate::from_ymd_opt(year, month, d))
        .find(|d| d.weekday() == Weekday::Tue)
        .expect("days 8 to 14 hold one Tuesday");
    let day = NaiveDate::from_num_days_from_ce_opt(tuesday.num_days_from_ce() + offset)
        .expect("a representable date");
    let local = day.and_hms_opt(at.0, at.1, 0).expect("a valid time");
    tz.from_local_datetime(&local)
        .single()
        .expect("an unambiguous local time")
        .with_timezone(&Utc)
}

#[test]
fn patch_tuesday_fires_on_the_second_tuesday_plus_offset_in_every_month_of_2024_to_2030() {
    for tz in ["UTC", "America/Los_Angeles", "Europe/Berlin"] {
        for offset in [0, 1, 7, -1] {
            for at in [(2, 30), (23, 30)] {
                let s = build(patch_spec(offset, &format!("{:02}:{:02}", at.0, at.1), tz));
                let want: Vec<(String, DateTime<Utc>)> = (2024..=2030)
                    .flat_map(|y| (1..=12).map(move |m| (y, m)))
                    .map(|(y, m)| {
                        let tz: Tz = tz.parse().expect("a known zone");
                        (format!("{y}-{m:02}"), expected_fire(y, m, offset, at, tz))
                    })
                    .collect();
                let got = s.next(utc("2024-01-01T00:00:00Z"), 84);
                assert_eq!(fires(&got), want, "{tz} offset {offset} at {at:?}");
                assert!(got.iter().all(|o| !o.deferred && o.scheduled == o.fires_at));
            }
        }
    }
}

#[test]
fn the_second_tuesday_of_december_2026_is_the_8th() {
    let s = build(patch_spec(0, "00:00", "UTC"));
    let got = s.next(utc("2026-12-01T00:00:00Z"), 1);
    assert_eq!(
        fires(&got),
        [("2026-12".into(), utc("2026-12-08T00:00:00Z"))]
    );
}

#[test]
fn ten_days_after_the_december_2026_patch_tuesday_is_the_18th() {
    let s = build(patch_spec(10, "04:00", "UTC"));
    let got = s.next(utc("2026-12-01T00:00:00Z"), 1);
    assert_eq!(
        fires(&got),
        [("2026-12".into(), utc("2026-12-18T04:00:00Z"))]
    );
}

#[test]
fn a_positive_offset_can_land_in_the_next_month_and_keeps_its_cycle() {
    // April 2026's second Tuesday is the 14th; May's is the 12th.
    let s = build(patch_spec(20, "06:00", "UTC"));
    let got = s.next(utc("2026-04-15T00:00:00Z"), 2);
    assert_eq!(
        fires(&got),
        [
            ("2026-04".into(), utc("2026-05-04T06:00:00Z")),
            ("2026-05".into(), utc("2026-06-01T06:00:00Z")),
        ]
    );
}

#[test]
fn a_negative_offset_can_land_in_the_previous_month_and_keeps_its_cycle() {
    // December 2026's second Tuesday is the 8th; November's the 10th.
    let s = build(patch_spec(-10, "06:00", "UTC"));
    let got = s.next(utc("2026-10-15T00:00:00Z"), 2);
    assert_eq!(
        fires(&got),
        [
            ("2026-11".into(), utc("2026-10-31T06:00:00Z")),
            ("2026-12".into(), utc("2026-11-28T06:00:00Z")),
        ]
    );
}

#[test]
fn a_local_time_skipped_by_spring_forward_fires_when_the_clock_resumes() {
    // Berlin skips 02:00-03:00 on Sunday 2026-03-29, Patch Tuesday + 19.
    let s = build(patch_spec(19, "02:30", "Europe/Berlin"));
    let got = s.next(utc("2026-03-02T00:00:00Z"), 1);
    // 03:00 CEST, the first instant after the gap.
    assert_eq!(
        fires(&got),
        [("2026-03".into(), utc("2026-03-29T01:00:00Z"))]
    );
    assert_eq!(got[0].scheduled, got[0].fires_at);

    // Los Angeles skips 02:00-03:00 on Sunday 2026-03-08, Patch Tuesday - 2.
    let s = build(patch_spec(-2, "02:30", "America/Los_Angeles"));
    let got = s.next(utc("2026-03-01T00:00:00Z"), 1);
    assert_eq!(
        fires(&got),
        [("2026-03".into(), utc("2026-03-08T10:00:00Z"))]
    );
}

#[test]
fn a_local_time_repeated_by_fall_back_fires_the_first_time() {
    // Berlin repeats 02:00-03:00 on Sunday 2026-10-25, Patch Tuesday + 12.
    let s = build(patch_spec(12, "02:30", "Europe/Berlin"));
    let got = s.next(utc("2026-10-01T00:00:00Z"), 1);
    // 02:30 CEST (+02:00), not 02:30 CET.
    assert_eq!(
        fires(&got),
        [("2026-10".into(), utc("2026-10-25T00:30:00Z"))]
    );
}

#[test]
fn a_weekday_cron_fires_monday_to_friday_only_with_0_as_sunday() {
    let s = build(cron_spec("0 30 9 * * 1-5", None));
    // 2026-06-01 is a Monday.
    let got = s.next(utc("2026-06-01T00:00:00Z"), 10);
    let days: Vec<String> = got
        .iter()
        .map(|o| o.fires_at.date_naive().to_string())
        .collect();
    assert_eq!(
        days,
        [
            "2026-06-01",
            "2026-06-02",
            "2026-06-03",
            "2026-06-04",
            "2026-06-05",
            "2026-06-08",
            "2026-06-09",
            "2026-06-10",
            "2026-06-11",
            "2026-06-12",
        ]
    );
    assert!(got
        .iter()
        .all(|o| o.fires_at.time() == NaiveTime::from_hms_opt(9, 30, 0).unwrap()));
    assert_eq!(got[0].cycle, "2026-06-01T09:30");

    let sundays = build(cron_spec("0 0 9 * * 0", None)).next(utc("2026-06-01T00:00:00Z"), 3);
    assert!(sundays.iter().all(|o| o.fires_at.weekday() == Weekday::Sun));
}

#[test]
fn a_cron_with_day_and_day_of_week_needs_both_to_match_as_ncrontab_does() {
    let s = build(cron_spec("0 0 9 13 * 5", None));
    let got = s.next(utc("2026-01-01T00:00:00Z"), 3);
    let days: Vec<String> = got
        .iter()
        .map(|o| o.fires_at.date_naive().to_string())
        .collect();
    assert_eq!(days, ["2026-02-13", "2026-03-13", "2026-11-13"]);
}

#[test]
fn a_cron_runs_on_the_local_clock_of_its_time_zone() {
    let s = build(cron_spec("0 0 9 * * MON", Some("Europe/Berlin")));
    let winter = s.next(utc("2026-01-01T00:00:00Z"), 1);
    assert_eq!(
        fires(&winter),
        [("2026-01-05T09:00".into(), utc("2026-01-05T08:00:00Z"))]
    );
    let summer = s.next(utc("2026-07-01T00:00:00Z"), 1);
    assert_eq!(
        fires(&summer),
        [("2026-07-06T09:00".into(), utc("2026-07-06T07:00:00Z"))]
    );
}

#[test]
fn an_occurrence_in_a_blackout_is_deferred_to_the_day_after_at_the_same_local_time() {
    let mut spec = patch_spec(0, "09:00", "Europe/Berlin");
    spec.blackouts = vec![blackout("2026-12-07", Some("2026-12-09"))];
    let got = build(spec).next(utc("2026-12-01T00:00:00Z"), 2);
    assert_eq!(
        got[0],
        Occurrence {
            cycle: "2026-12".into(),
            scheduled: utc("2026-12-08T08:00:00Z"),
            fires_at: utc("2026-12-10T08:00:00Z"),
            deferred: true,
        }
    );
    assert_eq!(
        fires(&got[1..]),
        [("2027-01".into(), utc("2027-01-12T08:00:00Z"))]
    );
}

#[test]
fn a_single_day_blackout_defers_by_one_day() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.blackouts = vec![blackout("2026-12-08", None)];
    let got = build(spec).next(utc("2026-12-01T00:00:00Z"), 1);
    assert_eq!(got[0].fires_at, utc("2026-12-09T09:00:00Z"));
    assert!(got[0].deferred);
}

#[test]
fn deferral_continues_through_blackouts_that_touch_or_overlap() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.blackouts = vec![
        blackout("2026-12-11", Some("2026-12-12")),
        blackout("2026-12-07", Some("2026-12-09")),
        blackout("2026-12-10", None),
        blackout("2026-12-12", Some("2026-12-13")),
    ];
    let got = build(spec).next(utc("2026-12-01T00:00:00Z"), 1);
    assert_eq!(
        fires(&got),
        [("2026-12".into(), utc("2026-12-14T09:00:00Z"))]
    );
}

#[test]
fn blackout_dates_are_local_dates() {
    // 00:30 in Berlin on the 24th is 23:30 UTC on the 23rd.
    let mut spec = cron_spec("0 30 0 24 12 *", Some("Europe/Berlin"));
    spec.blackouts = vec![blackout("2026-12-24", None)];
    let got = build(spec).next(utc("2026-12-23T12:00:00Z"), 1);
    assert_eq!(got[0].cycle, "2026-12-24T00:30");
    assert_eq!(got[0].scheduled, utc("2026-12-23T23:30:00Z"));
    assert_eq!(got[0].fires_at, utc("2026-12-24T23:30:00Z"));
}

#[test]
fn cycles_held_back_by_one_blackout_fire_once_as_the_newest_cycle() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.blackouts = vec![blackout("2026-11-01", Some("2026-12-31"))];
    let got = build(spec).next(utc("2026-10-20T00:00:00Z"), 2);
    assert_eq!(
        fires(&got),
        [
            ("2026-12".into(), utc("2027-01-01T09:00:00Z")),
            ("2027-01".into(), utc("2027-01-12T09:00:00Z")),
        ]
    );
}

#[test]
fn a_daily_cron_simply_resumes_after_a_blackout() {
    let mut spec = cron_spec("0 0 0 * * *", None);
    spec.blackouts = vec![blackout("2026-12-24", Some("2026-12-26"))];
    let got = build(spec).next(utc("2026-12-23T10:00:00Z"), 2);
    // The deferred 24th-26th fall on the 27th's own firing, which stands for them.
    assert_eq!(
        fires(&got),
        [
            ("2026-12-27T00:00".into(), utc("2026-12-27T00:00:00Z")),
            ("2026-12-28T00:00".into(), utc("2026-12-28T00:00:00Z")),
        ]
    );
    assert!(!got[0].deferred);
}

#[test]
fn a_weekly_cron_blacked_out_on_its_day_fires_the_next_day() {
    let mut spec = cron_spec("0 0 9 * * 1", None);
    spec.blackouts = vec![blackout("2026-12-07", None)];
    let got = build(spec).next(utc("2026-12-01T00:00:00Z"), 2);
    assert_eq!(
        fires(&got),
        [
            ("2026-12-07T09:00".into(), utc("2026-12-08T09:00:00Z")),
            ("2026-12-14T09:00".into(), utc("2026-12-14T09:00:00Z")),
        ]
    );
    assert!(got[0].deferred && !got[1].deferred);
}

#[test]
fn next_lists_an_occurrence_deferred_from_before_after_if_it_fires_later() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.blackouts = vec![blackout("2026-12-01", Some("2026-12-20"))];
    let got = build(spec).next(utc("2026-12-15T00:00:00Z"), 1);
    assert_eq!(
        fires(&got),
        [("2026-12".into(), utc("2026-12-21T09:00:00Z"))]
    );
}

#[test]
fn latest_due_catches_up_once_after_a_long_outage() {
    let s = build(patch_spec(0, "09:00", "UTC"));
    let due = s.latest_due(utc("2026-01-01T00:00:00Z"), utc("2026-09-20T00:00:00Z"));
    assert_eq!(due.map(|o| o.cycle), Some("2026-09".into()));
    // The next check starts where this one ended.
    assert_eq!(
        s.latest_due(utc("2026-09-20T00:00:00Z"), utc("2026-09-21T00:00:00Z")),
        None
    );
}

#[test]
fn latest_due_is_none_when_nothing_fell_due() {
    let s = build(patch_spec(0, "09:00", "UTC"));
    assert_eq!(
        s.latest_due(utc("2026-09-09T00:00:00Z"), utc("2026-10-01T00:00:00Z")),
        None
    );
    assert_eq!(
        s.latest_due(utc("2026-09-20T00:00:00Z"), utc("2026-09-20T00:00:00Z")),
        None
    );
    assert_eq!(
        s.latest_due(utc("2026-09-21T00:00:00Z"), utc("2026-09-20T00:00:00Z")),
        None
    );
}

#[test]
fn latest_due_excludes_checked_until_and_includes_now() {
    let s = build(patch_spec(0, "09:00", "UTC"));
    let at = utc("2026-09-08T09:00:00Z");
    assert_eq!(
        s.latest_due(at - TimeDelta::seconds(1), at)
            .map(|o| o.fires_at),
        Some(at)
    );
    assert_eq!(s.latest_due(at, at + TimeDelta::seconds(1)), None);
}

#[test]
fn latest_due_of_a_frequent_cron_after_a_year_away_is_the_last_minute() {
    let s = build(cron_spec("0 * * * * *", None));
    let due = s.latest_due(utc("2025-06-01T00:00:00Z"), utc("2026-06-01T12:34:56Z"));
    assert_eq!(due.map(|o| o.cycle), Some("2026-06-01T12:34".into()));
}

#[test]
fn a_deferred_occurrence_falls_due_when_it_fires_not_when_it_was_scheduled() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.blackouts = vec![blackout("2026-09-08", Some("2026-09-10"))];
    let s = build(spec);
    assert_eq!(
        s.latest_due(utc("2026-09-01T00:00:00Z"), utc("2026-09-11T08:59:59Z")),
        None
    );
    let due = s.latest_due(utc("2026-09-11T08:59:59Z"), utc("2026-09-11T09:00:00Z"));
    assert_eq!(
        due.map(|o| (o.cycle, o.deferred)),
        Some(("2026-09".into(), true))
    );
}

#[test]
fn an_occurrence_serializes_with_camel_case_fields() {
    let o = Occurrence {
        cycle: "2026-12".into(),
        scheduled: utc("2026-12-08T08:00:00Z"),
        fires_at: utc("2026-12-10T08:00:00Z"),
        deferred: true,
    };
    assert_eq!(
        serde_json::to_value(&o).unwrap(),
        serde_json::json!({"cycle": "2026-12", "scheduled": "2026-12-08T08:00:00Z",
                           "firesAt": "2026-12-10T08:00:00Z", "deferred": true})
    );
}

#[test]
fn a_schedule_reads_from_pipeline_json() {
    let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
        "patchTuesday": {"offsetDays": 7, "at": "03:00", "timeZone": "Europe/Berlin"},
        "blackouts": [{"from": "2026-12-20", "to": "2027-01-03", "reason": "holidays"}]
    }))
    .unwrap();
    let s = build(spec);
    assert_eq!(s.time_zone(), "Europe/Berlin");
    let got = s.next(utc("2026-12-01T00:00:00Z"), 1);
    // December 2026: the 8th + 7 = the 15th, 03:00 CET.
    assert_eq!(
        fires(&got),
        [("2026-12".into(), utc("2026-12-15T02:00:00Z"))]
    );
}

#[test]
fn exactly_one_of_patch_tuesday_and_cron_is_required() {
    let mut both = patch_spec(0, "09:00", "UTC");
    both.cron = Some("0 0 9 * * *".into());
    assert_eq!(error(both), "set exactly one of patchTuesday and cron");
    assert_eq!(
        error(ScheduleSpec::default()),
        "set exactly one of patchTuesday and cron"
    );
}

#[test]
fn an_unknown_time_zone_is_named() {
    assert_eq!(
        error(patch_spec(0, "09:00", "Europe/Berln")),
        "timeZone `Europe/Berln` is not an IANA time zone name"
    );
    assert_eq!(
        error(cron_spec("0 0 9 * * *", Some("Eastern Standard Time"))),
        "timeZone `Eastern Standard Time` is not an IANA time zone name"
    );
    // The database's spelling, not any case of it.
    assert_eq!(
        error(patch_spec(0, "09:00", "europe/berlin")),
        "timeZone `europe/berlin`: expected `Europe/Berlin`, spelled as the IANA database spells it"
    );
    assert!(error(cron_spec("0 0 9 * * *", Some("utc"))).contains("expected `UTC`"));
}

#[test]
fn a_top_level_time_zone_with_patch_tuesday_is_refused_rather_than_ignored() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.time_zone = Some("Europe/Berlin".into());
    assert_eq!(
        error(spec),
        "timeZone applies to cron only; set patchTuesday.timeZone"
    );
}

#[test]
fn at_must_be_hh_mm() {
    for at in ["25:00", "9:30", "09:60", "0930", "09:30:00", ""] {
        assert_eq!(
            error(patch_spec(0, at, "UTC")),
            format!("at `{at}`: expected HH:MM")
        );
    }
}

#[test]
fn an_offset_beyond_four_weeks_is_refused() {
    assert!(Schedule::from_spec(&patch_spec(-28, "09:00", "UTC")).is_ok());
    assert_eq!(
        error(patch_spec(29, "09:00", "UTC")),
        "offsetDays 29: expected -28..=28, within four weeks of Patch Tuesday"
    );
}

#[test]
fn a_cron_needs_six_fields() {
    assert_eq!(
        error(cron_spec("30 9 * * 1-5", None)),
        "cron `30 9 * * 1-5`: expected 6 fields (second minute hour day month day-of-week)"
    );
}

#[test]
fn cron_syntax_outside_ncrontab_is_refused() {
    for (expr, field) in [
        ("0 0 9 L * *", "day field `L`"),
        ("0 0 9 15W * *", "day field `15W`"),
        ("0 0 9 * * 2#2", "day-of-week field `2#2`"),
        ("0 0 9 ? * 1", "day field `?`"),
        ("0 0 9 * * 5L", "day-of-week field `5L`"),
        ("0 0 9 * FOO *", "month field `FOO`"),
    ] {
        let e = error(cron_spec(expr, None));
        assert!(
            e.starts_with(&format!("cron `{expr}`: {field}: expected")),
            "{e}"
        );
    }
}

#[test]
fn a_cron_firing_more_than_once_a_minute_is_refused() {
    assert_eq!(
        error(cron_spec("*/10 * * * * *", None)),
        "cron `*/10 * * * * *`: second field `*/10`: expected a single second such as 0 (cycle ids name the minute)"
    );
}

#[test]
fn a_cron_that_never_fires_is_refused() {
    assert_eq!(
        error(cron_spec("0 0 9 30 2 *", None)),
        "cron `0 0 9 30 2 *`: never fires (no date matches its day, month and day-of-week together)"
    );
}

#[test]
fn an_out_of_range_cron_value_names_the_cron() {
    let e = error(cron_spec("0 60 9 * * *", None));
    assert!(e.starts_with("cron `0 60 9 * * *`: "), "{e}");
}

#[test]
fn a_blackout_ending_before_it_starts_is_refused() {
    let mut spec = patch_spec(0, "09:00", "UTC");
    spec.blackouts = vec![blackout("2026-02-01", Some("2026-01-01"))];
    assert_eq!(
        error(spec),
        "blackout to 2026-01-01 is before from 2026-02-01"
    );
}

#[test]
fn a_cycle_is_due_at_most_once_across_consecutive_checks() {
    let s = build(cron_spec("0 0 */6 * * *", Some("America/Los_Angeles")));
    let mut seen = std::collections::BTreeSet::new();
    let mut checked = utc("2026-03-01T00:00:00Z");
    // Checks every 5 hours across the March DST change.
    for _ in 0..200 {
        let now = checked + TimeDelta::hours(5);
        if let Some(o) = s.latest_due(checked, now) {
            assert!(seen.insert(o.cycle.clone()), "{} due twice", o.cycle);
        }
        checked = now;
    }
    assert!(seen.len() > 100);
}

/// The straightforward semantics the iterator implements efficiently:
/// defer every slot day by day through the blackouts as written, then
/// keep the newest cycle of each firing instant.
fn reference(
    s: &Schedule,
    blackouts: &[Blackout],
    days: (NaiveDate, NaiveDate),
) -> Vec<Occurrence> {
    let blacked_out = |d: NaiveDate| {
        blackouts
            .iter()
            .any(|b| b.from <= d && d <= b.to.unwrap_or(b.from))
    };
    let mut by_instant: BTreeMap<DateTime<Utc>, Occurrence> = BTreeMap::new();
    let mut day = days.0;
    while day <= days.1 {
        for slot in s.rule.slots_on(day) {
            let mut fires_day = day;
            while blacked_out(fires_day) {
                fires_day = fires_day.succ_opt().unwrap();
            }
            let o = Occurrence {
                scheduled: s.to_utc(slot.local),
                fires_at: s.to_utc(fires_day.and_time(slot.local.time())),
                deferred: fires_day != day,
                cycle: slot.cycle,
            };
            by_instant.insert(o.fires_at, o);
        }
        day = day.succ_opt().unwrap();
    }
    by_instant.into_values().collect()
}

fn any_spec() -> impl Strategy<Value = ScheduleSpec> {
    let zone = prop::sample::select(vec!["UTC", "Europe/Berlin", "America/Los_Angeles"]);
    let patch = (-28..=28i32, 0..24u32, 0..60u32, zone.clone())
        .prop_map(|(offset, h, m, tz)| patch_spec(offset, &format!("{h:02}:{m:02}"), tz));
    let cron = (
        prop::sample::select(vec![
            "0 0 9 * * 1",
            "0 30 8,17 * * *",
            "0 0 6 1,15 * *",
            "0 15 2 * * 2-4",
            "0 0 0 * * 0",
        ]),
        zone,
    )
        .prop_map(|(expr, tz)| cron_spec(expr, Some(tz)));
    prop_oneof![patch, cron]
}

fn any_blackouts() -> impl Strategy<Value = Vec<Blackout>> {
    prop::collection::vec((0..180u64, prop::option::of(0..40u64)), 0..4).prop_map(|ws| {
        ws.into_iter()
            .map(|(start, len)| {
                let from = date("2026-01-01") + chrono::Days::new(start);
                Blackout {
                    from,
                    to: len.map(|l| from + chrono::Days::new(l)),
                    reason: None,
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn next_is_strictly_increasing_and_lands_on_patch_tuesday_plus_offset(
        offset in -28..=28i32,
        h in 0..24u32,
        m in 0..60u32,
        tz in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/Los_Angeles", "Australia/Lord_Howe", "Asia/Kolkata"]),
        after in 946_684_800i64..4_102_444_800,
    ) {
        let s = build(patch_spec(offset, &format!("{h:02}:{m:02}"), tz));
        let after = DateTime::from_timestamp(after, 0).unwrap();
        let got = s.next(after, 14);
        prop_assert_eq!(got.len(), 14);
        prop_assert!(got[0].fires_at > after);
        for pair in got.windows(2) {
            prop_assert!(pair[0].fires_at < pair[1].fires_at);
        }
        for o in &got {
            let zone: Tz = s.time_zone().parse().unwrap();
            let local_day = o.scheduled.with_timezone(&zone).date_naive();
            let tuesday = NaiveDate::from_num_days_from_ce_opt(local_day.num_days_from_ce() - offset).unwrap();
            prop_assert_eq!(tuesday.weekday(), Weekday::Tue);
            prop_assert!((8..=14).contains(&tuesday.day()));
            prop_assert_eq!(&o.cycle, &tuesday.format("%Y-%m").to_string());
        }
    }

    #[test]
    fn next_and_latest_due_agree_with_deferring_every_slot_one_by_one(
        spec in any_spec(),
        blackouts in any_blackouts(),
        after_day in 0..200u64,
        outage_hours in 0..2400i64,
    ) {
        let mut spec = spec;
        spec.blackouts = blackouts.clone();
        let s = build(spec);
        let want = reference(&s, &blackouts, (date("2025-10-01"), date("2027-03-31")));
        let after = (date("2025-12-15") + chrono::Days::new(after_day)).and_hms_opt(7, 0, 0).unwrap().and_utc();

        let expected_next: Vec<Occurrence> = want.iter().filter(|o| o.fires_at > after).take(6).cloned().collect();
        prop_assert_eq!(s.next(after, 6), expected_next);

        let now = after + TimeDelta::hours(outage_hours);
        let expected_due = want.iter().rev().find(|o| after < o.fires_at && o.fires_at <= now).cloned();
        prop_assert_eq!(s.latest_due(after, now), expected_due);
    }
}

/// chrono-tz's reading of a local time, with the schedule's rules: the
/// earlier of two instants, and in a gap the first whole minute after it.
fn chrono_tz_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let earliest = |l: &NaiveDateTime| tz.from_local_datetime(l).earliest();
    (0..=48 * 60)
        .map(|m| match m {
            0 => local,
            m => local.with_second(0).unwrap() + TimeDelta::minutes(m),
        })
        .find_map(|l| earliest(&l))
        .expect("no gap is longer than a day")
        .with_timezone(&Utc)
}

const ZONES: [&str; 6] = [
    "Europe/Berlin",
    "America/Los_Angeles",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "America/Sao_Paulo",
    "Asia/Kolkata",
];

/// The schedule's time zones (jiff's bundled database) read every local
/// time on every day whose clock changes, 1990 to 2037, as chrono-tz (an
/// independent implementation) does: DST both ways, Lord Howe's half-hour
/// DST, Apia's skipped day in 2011, Brazil's DST at midnight until 2019.
#[test]
fn local_times_on_clock_change_days_are_read_as_chrono_tz_reads_them() {
    let mut checked = 0;
    for tz in ZONES {
        let s = build(cron_spec("0 0 9 * * *", Some(tz)));
        let zone: Tz = tz.parse().unwrap();
        let offset = |d: NaiveDate| {
            let t = chrono_tz_instant(zone, d.and_hms_opt(0, 0, 0).unwrap());
            t.with_timezone(&zone).naive_local() - t.naive_utc()
        };
        let mut day = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap();
        while day.year() < 2038 {
            let next = day.succ_opt().unwrap();
            if offset(day) != offset(next) {
                for quarter in 0..96 {
                    let local = day.and_hms_opt(quarter / 4, quarter % 4 * 15, 0).unwrap();
                    assert_eq!(
                        s.to_utc(local),
                        chrono_tz_instant(zone, local),
                        "{tz} {local}"
                    );
                    checked += 1;
                }
            }
            day = next;
        }
    }
    // Every zone but Kolkata changes clocks in these years.
    assert!(checked > 96 * 100, "only {checked} local times checked");
}

proptest! {
    /// Any instant's local date, and any local time's instant, as chrono-tz has them.
    #[test]
    fn local_times_are_read_as_chrono_tz_reads_them(
        tz in prop::sample::select(ZONES.to_vec()),
        at in 631_152_000i64..2_145_916_800,
    ) {
        let s = build(cron_spec("0 0 9 * * *", Some(tz)));
        let zone: Tz = tz.parse().unwrap();
        let instant = DateTime::from_timestamp(at, 0).unwrap();
        prop_assert_eq!(s.local_date(instant), instant.with_timezone(&zone).date_naive());
        let local = instant.naive_utc();
        prop_assert_eq!(s.to_utc(local), chrono_tz_instant(zone, local), "{} {}", tz, local);
    }
}
