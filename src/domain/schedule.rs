//! Schedules: Patch Tuesday plus an offset, or a six-field NCRONTAB cron, in
//! an IANA time zone, with blackout windows that defer a build, never drop it.
//!
//! A rule is a statement about the local calendar ("the second Tuesday at
//! 02:30 in Berlin"), so everything is computed on local dates and times and
//! converted to UTC last. A local time that does not exist (spring forward)
//! fires at the first instant after the gap; one that exists twice (fall
//! back) fires at the earlier one.
//!
//! The timer wakes up periodically, remembers how far it has checked, and
//! asks [`Schedule::latest_due`] what fell due since: a firing missed during
//! an outage happens late, once, instead of never.

use std::collections::BTreeMap;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone,
    Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::Serialize;

use super::pipeline::{Blackout, PatchTuesdaySpec, ScheduleSpec};

/// One firing of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Occurrence {
    /// What this firing builds: `YYYY-MM` (the month of the second Tuesday)
    /// for Patch Tuesday, `YYYY-MM-DDTHH:MM` (the local scheduled time) for
    /// cron. The idempotency key `schedule:<pipeline>:<cycle>` is made from it.
    pub cycle: String,
    /// When the rule alone says to fire.
    pub scheduled: DateTime<Utc>,
    /// When it fires: `scheduled`, or later when a blackout deferred it.
    pub fires_at: DateTime<Utc>,
    /// Whether a blackout moved it.
    pub deferred: bool,
}

/// A validated schedule. Build it with [`Schedule::from_spec`].
#[derive(Debug, Clone)]
pub struct Schedule {
    rule: Rule,
    tz: Tz,
    /// Inclusive local date ranges, sorted, with overlapping and adjacent
    /// windows merged: a build deferred to the day after one window must keep
    /// deferring when the next window starts that very day.
    blackouts: Vec<(NaiveDate, NaiveDate)>,
}

/// When a rule fires, as local dates ("slot days") and times of day.
///
/// Every slot day of a rule has the same times of day (Patch Tuesday: `at`;
/// cron: whatever its second, minute and hour fields match). The blackout
/// handling below relies on this.
#[derive(Debug, Clone)]
enum Rule {
    PatchTuesday {
        offset_days: i32,
        at: NaiveTime,
    },
    Cron {
        // Boxed: a parsed cron dwarfs the Patch Tuesday variant.
        pattern: Box<croner::Cron>,
        times: Vec<NaiveTime>,
    },
}

/// A firing of the rule before blackouts are applied.
struct Slot {
    cycle: String,
    local: NaiveDateTime,
}

/// Offsets beyond four weeks would reach past the next month's Patch Tuesday,
/// building one month's patches after the following month's are out.
const MAX_OFFSET_DAYS: i32 = 28;

/// Days in the 400-year Gregorian cycle; also a whole number of weeks, so a
/// cron that matches any date matches one within every span this long.
const GREGORIAN_CYCLE_DAYS: u64 = 146_097;

impl Schedule {
    /// Validates a schedule. The error is one sentence naming the offending
    /// field and value, shown to the user under `kiln.triggers.schedule`.
    pub fn from_spec(spec: &ScheduleSpec) -> Result<Schedule, String> {
        let (rule, tz) = match (&spec.patch_tuesday, &spec.cron) {
            (Some(pt), None) => {
                if spec.time_zone.is_some() {
                    return Err("timeZone applies to cron only; set patchTuesday.timeZone".into());
                }
                (patch_tuesday_rule(pt)?, parse_time_zone(&pt.time_zone)?)
            }
            (None, Some(expr)) => (
                cron_rule(expr)?,
                parse_time_zone(spec.time_zone.as_deref().unwrap_or("UTC"))?,
            ),
            (Some(_), Some(_)) | (None, None) => {
                return Err("set exactly one of patchTuesday and cron".into())
            }
        };
        Ok(Schedule {
            rule,
            tz,
            blackouts: merge_blackouts(&spec.blackouts)?,
        })
    }

    /// The time zone the rule and the blackout dates are read in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The next `count` occurrences whose `fires_at` is strictly after
    /// `after`, in `fires_at` order (strictly increasing: occurrences that
    /// would fire at the same instant are one occurrence, see
    /// [`Schedule::latest_due`]). Used by `kiln schedule next`.
    pub fn next(&self, after: DateTime<Utc>, count: usize) -> Vec<Occurrence> {
        self.occurrences_after(after, NaiveDate::MAX)
            .take(count)
            .collect()
    }

    /// The latest occurrence with `checked_until < fires_at <= now`, if any.
    ///
    /// The timer passes the `now` of its previous check as `checked_until`,
    /// so each firing is seen by exactly one check, and a check after a long
    /// outage yields only the most recent missed occurrence: one build of
    /// the current state, not one per missed cycle. Instances racing on the
    /// same window agree on the answer and dedupe on its cycle.
    ///
    /// Occurrences deferred into the same instant (several cycles held back
    /// by one blackout, or two local times folded together by a DST gap) are
    /// one occurrence, carrying the newest cycle, for the same reason.
    pub fn latest_due(
        &self,
        checked_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Occurrence> {
        if now <= checked_until {
            return None;
        }
        let last_day = self.local_date(now).succ_opt().unwrap_or(NaiveDate::MAX);
        // Look back a day, then two, four…: the latest due occurrence is
        // usually recent, and walking every slot of a months-long outage of a
        // frequent cron would be wasted work.
        let mut lookback = TimeDelta::days(1);
        loop {
            let from = now
                .checked_sub_signed(lookback)
                .filter(|from| *from > checked_until)
                .unwrap_or(checked_until);
            let due = self
                .occurrences_after(from, last_day)
                .take_while(|o| o.fires_at <= now)
                .last();
            if due.is_some() || from == checked_until {
                return due;
            }
            lookback = lookback.checked_mul(2).unwrap_or(TimeDelta::MAX);
        }
    }

    /// Occurrences with `fires_at > after`, looking at slot days up to `last_day`.
    fn occurrences_after(
        &self,
        after: DateTime<Utc>,
        last_day: NaiveDate,
    ) -> impl Iterator<Item = Occurrence> + '_ {
        // A day of margin: around a fall-back the local date of `after` can
        // be a day past that of an occurrence firing after it.
        let day = self.local_date(after);
        let start = self.chain_start(day.pred_opt().unwrap_or(day));
        Occurrences {
            schedule: self,
            cursor: Some(start),
            last_day,
            pending: BTreeMap::new(),
        }
        .filter(move |o| o.fires_at > after)
    }

    /// Where to start looking at slot days so that everything firing on or
    /// after `day` is seen: slots inside a blackout that ends just before
    /// `day` fire on `day`.
    fn chain_start(&self, day: NaiveDate) -> NaiveDate {
        day.pred_opt()
            .and_then(|before| self.blackout_containing(before))
            .map_or(day, |(from, _)| from)
    }

    fn blackout_containing(&self, day: NaiveDate) -> Option<(NaiveDate, NaiveDate)> {
        let i = self.blackouts.partition_point(|(_, to)| *to < day);
        self.blackouts
            .get(i)
            .copied()
            .filter(|(from, _)| *from <= day)
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The instant a local time denotes. A local time in a spring-forward gap
    /// means the first instant after the gap; a repeated one the earlier.
    fn to_utc(&self, local: NaiveDateTime) -> DateTime<Utc> {
        fn earliest(r: LocalResult<DateTime<Tz>>) -> Option<DateTime<Utc>> {
            match r {
                LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
                LocalResult::None => None,
            }
        }
        if let Some(t) = earliest(self.tz.from_local_datetime(&local)) {
            return t;
        }
        // Gaps start and end on whole minutes in every zone since 1972; the
        // widest (a skipped day, Samoa 2011) is 24 hours.
        let minute = local.with_second(0).unwrap_or(local);
        (1..=48 * 60)
            .filter_map(|m| minute.checked_add_signed(TimeDelta::minutes(m)))
            .find_map(|probe| earliest(self.tz.from_local_datetime(&probe)))
            .unwrap_or_else(|| local.and_utc())
    }

    fn occurrence(&self, slot: Slot, fires_local: NaiveDateTime) -> Occurrence {
        Occurrence {
            scheduled: self.to_utc(slot.local),
            fires_at: self.to_utc(fires_local),
            deferred: fires_local != slot.local,
            cycle: slot.cycle,
        }
    }
}

/// Occurrences in `fires_at` order, from the slot day `cursor` on.
struct Occurrences<'a> {
    schedule: &'a Schedule,
    /// The first slot day not looked at yet; `None` once past `last_day`.
    cursor: Option<NaiveDate>,
    last_day: NaiveDate,
    /// Occurrences not final yet: a later slot may still fire at the same
    /// instant and replace one (the newer cycle wins).
    pending: BTreeMap<DateTime<Utc>, Occurrence>,
}

impl Occurrences<'_> {
    /// Looks at the next slot day from the cursor on.
    fn advance(&mut self, cursor: NaiveDate) {
        let s = self.schedule;
        let Some(day) = s.rule.first_day(cursor, self.last_day) else {
            self.cursor = None;
            return;
        };
        match s.blackout_containing(day) {
            None => {
                for slot in s.rule.slots_on(day) {
                    let local = slot.local;
                    let o = s.occurrence(slot, local);
                    self.pending.insert(o.fires_at, o);
                }
                self.cursor = day.succ_opt();
            }
            Some((_, to)) => {
                // Every slot from `day` to the end of the window fires on the
                // day after it at its own time of day. Slots of one time of
                // day collapse into one occurrence carrying the newest cycle,
                // and since all slot days share their times of day, the
                // newest are exactly the last slot day's slots.
                let Some(resume) = to.succ_opt() else {
                    self.cursor = None;
                    return;
                };
                let last = s.rule.last_day(day, to).unwrap_or(day);
                for slot in s.rule.slots_on(last) {
                    let fires = resume.and_time(slot.local.time());
                    let o = s.occurrence(slot, fires);
                    self.pending.insert(o.fires_at, o);
                }
                self.cursor = Some(resume);
            }
        }
    }
}

impl Iterator for Occurrences<'_> {
    type Item = Occurrence;

    fn next(&mut self) -> Option<Occurrence> {
        loop {
            // Slots not looked at yet fire at or after midnight of the cursor
            // day, so anything pending before that is final.
            let horizon = self
                .cursor
                .map(|day| self.schedule.to_utc(day.and_time(NaiveTime::MIN)));
            if let Some(first) = self.pending.first_entry() {
                if horizon.is_none_or(|h| *first.key() < h) {
                    return Some(first.remove());
                }
            }
            let cursor = self.cursor?;
            self.advance(cursor);
        }
    }
}

impl Rule {
    /// The first slot day in `from..=until`.
    fn first_day(&self, from: NaiveDate, until: NaiveDate) -> Option<NaiveDate> {
        match self {
            Rule::PatchTuesday { offset_days, .. } => {
                // The slot of the month holding `from - offset` is on or after
                // `from` unless `from` is past it; then next month's is.
                let m =
                    month_index(from.checked_sub_signed(TimeDelta::days((*offset_days).into()))?);
                [m, m + 1]
                    .into_iter()
                    .filter_map(|m| patch_day(m, *offset_days))
                    .find(|d| *d >= from)
                    .filter(|d| *d <= until)
            }
            Rule::Cron { pattern, .. } => first_cron_day(pattern, from, until),
        }
    }

    /// The last slot day in `from..=until`.
    fn last_day(&self, from: NaiveDate, until: NaiveDate) -> Option<NaiveDate> {
        match self {
            Rule::PatchTuesday { offset_days, .. } => {
                let m =
                    month_index(until.checked_sub_signed(TimeDelta::days((*offset_days).into()))?);
                [m, m - 1]
                    .into_iter()
                    .filter_map(|m| patch_day(m, *offset_days))
                    .find(|d| *d <= until)
                    .filter(|d| *d >= from)
            }
            Rule::Cron { pattern, .. } => std::iter::successors(Some(until), NaiveDate::pred_opt)
                .take_while(|d| *d >= from)
                .find(|d| cron_day(pattern, *d)),
        }
    }

    /// The rule's firings on `day`, in time order; empty if it is no slot day.
    fn slots_on(&self, day: NaiveDate) -> Vec<Slot> {
        match self {
            Rule::PatchTuesday { offset_days, at } => {
                let Some(m) = day
                    .checked_sub_signed(TimeDelta::days((*offset_days).into()))
                    .map(month_index)
                else {
                    return Vec::new();
                };
                if patch_day(m, *offset_days) != Some(day) {
                    return Vec::new();
                }
                let (year, month) = from_month_index(m);
                vec![Slot {
                    cycle: format!("{year:04}-{month:02}"),
                    local: day.and_time(*at),
                }]
            }
            Rule::Cron { pattern, times } => {
                if !cron_day(pattern, day) {
                    return Vec::new();
                }
                times
                    .iter()
                    .map(|t| {
                        let local = day.and_time(*t);
                        Slot {
                            cycle: local.format("%Y-%m-%dT%H:%M").to_string(),
                            local,
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Whether a cron's day, month and day-of-week fields match `day`.
fn cron_day(pattern: &croner::Cron, day: NaiveDate) -> bool {
    let p = &pattern.pattern;
    p.month_match(day.month()).unwrap_or(false)
        && p.day_match(day.year(), day.month(), day.day())
            .unwrap_or(false)
}

/// The first day in `from..=until` a cron matches, looking one Gregorian
/// cycle ahead at most.
fn first_cron_day(pattern: &croner::Cron, from: NaiveDate, until: NaiveDate) -> Option<NaiveDate> {
    let horizon = from
        .checked_add_days(chrono::Days::new(GREGORIAN_CYCLE_DAYS))
        .map_or(until, |h| h.min(until));
    std::iter::successors(Some(from), NaiveDate::succ_opt)
        .take_while(|d| *d <= horizon)
        .find(|d| cron_day(pattern, *d))
}

/// Months counted from year 0, so month arithmetic is integer arithmetic.
fn month_index(day: NaiveDate) -> i32 {
    day.year() * 12 + day.month0() as i32
}

fn from_month_index(m: i32) -> (i32, u32) {
    (m.div_euclid(12), m.rem_euclid(12) as u32 + 1)
}

/// The slot day of month `m`: its second Tuesday plus the offset.
fn patch_day(m: i32, offset_days: i32) -> Option<NaiveDate> {
    let (year, month) = from_month_index(m);
    NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Tue, 2)?
        .checked_add_signed(TimeDelta::days(offset_days.into()))
}

fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("timeZone `{name}` is not an IANA time zone name"))
}

fn patch_tuesday_rule(spec: &PatchTuesdaySpec) -> Result<Rule, String> {
    if spec.offset_days.abs() > MAX_OFFSET_DAYS {
        return Err(format!(
            "offsetDays {}: expected -{MAX_OFFSET_DAYS}..={MAX_OFFSET_DAYS}, within four weeks of Patch Tuesday",
            spec.offset_days
        ));
    }
    Ok(Rule::PatchTuesday {
        offset_days: spec.offset_days,
        at: parse_hh_mm(&spec.at).ok_or_else(|| format!("at `{}`: expected HH:MM", spec.at))?,
    })
}

/// Exactly `HH:MM`, 00:00 to 23:59.
fn parse_hh_mm(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.split_once(':')?;
    let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

const FIELDS: [&str; 6] = ["second", "minute", "hour", "day", "month", "day-of-week"];
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn cron_rule(expr: &str) -> Result<Rule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return Err(format!(
            "cron `{expr}`: expected 6 fields (second minute hour day month day-of-week)"
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        let names: &[&str] = match i {
            4 => &MONTH_NAMES,
            5 => &DAY_NAMES,
            _ => &[],
        };
        if !ncrontab_field(field, names) {
            return Err(format!(
                "cron `{expr}`: {} field `{field}`: expected numbers{}, `*`, `,`, `-` and `/` (NCRONTAB has no L, W, # or ?)",
                FIELDS[i],
                match i {
                    4 => " or JAN-DEC",
                    5 => " or SUN-SAT",
                    _ => "",
                }
            ));
        }
    }
    // The cycle id names the minute, and one build per second is no schedule.
    let Ok(second) = fields[0].parse::<u32>() else {
        return Err(format!(
            "cron `{expr}`: second field `{}`: expected a single second such as 0 (cycle ids name the minute)",
            fields[0]
        ));
    };
    // croner's day-of-week numbering is NCRONTAB's (0 = Sunday), but it ORs
    // day and day-of-week like Vixie cron; NCRONTAB requires both to match.
    let pattern = croner::Cron::new(expr)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
        .map_err(|e| format!("cron `{expr}`: {e}"))?;
    let p = &pattern.pattern;
    let times: Vec<NaiveTime> = (0..24)
        .filter(|h| p.hour_match(*h).unwrap_or(false))
        .flat_map(|h| {
            (0..60)
                .filter(|m| p.minute_match(*m).unwrap_or(false))
                .filter_map(move |m| NaiveTime::from_hms_opt(h, m, second))
        })
        .collect();
    let some_day = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
    if times.is_empty() || first_cron_day(&pattern, some_day, NaiveDate::MAX).is_none() {
        return Err(format!(
            "cron `{expr}`: never fires (no date matches its day, month and day-of-week together)"
        ));
    }
    Ok(Rule::Cron {
        pattern: Box::new(pattern),
        times,
    })
}

/// Whether a field uses only NCRONTAB syntax: numbers, `* , - /`, and the
/// given three-letter names.
fn ncrontab_field(field: &str, names: &[&str]) -> bool {
    field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/'))
        && field
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|word| !word.is_empty())
            .all(|word| names.iter().any(|n| n.eq_ignore_ascii_case(word)))
}

fn merge_blackouts(list: &[Blackout]) -> Result<Vec<(NaiveDate, NaiveDate)>, String> {
    let mut windows = list
        .iter()
        .map(|b| match b.to {
            Some(to) if to < b.from => Err(format!("blackout to {to} is before from {}", b.from)),
            Some(to) => Ok((b.from, to)),
            None => Ok((b.from, b.from)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    windows.sort();
    let mut merged: Vec<(NaiveDate, NaiveDate)> = Vec::with_capacity(windows.len());
    for (from, to) in windows {
        match merged.last_mut() {
            Some(last) if last.1.succ_opt().is_none_or(|next| from <= next) => {
                last.1 = last.1.max(to)
            }
            _ => merged.push((from, to)),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(s.time_zone(), chrono_tz::Europe::Berlin);
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
                let local_day = o.scheduled.with_timezone(&s.time_zone()).date_naive();
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
}
