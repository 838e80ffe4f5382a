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
    DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike, Utc, Weekday,
};
use jiff::tz::{AmbiguousOffset, TimeZone};
use serde::{Deserialize, Serialize};

// ---- The schedule as a pipeline file writes it (`kiln.triggers.schedule`) ----

/// When a pipeline builds on its own. Exactly one of `patchTuesday` and `cron`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub patch_tuesday: Option<PatchTuesdaySpec>,
    /// Six fields: second minute hour day month day-of-week (NCRONTAB order).
    #[serde(default)]
    pub cron: Option<String>,
    /// IANA time zone of `cron`; `patchTuesday` carries its own.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Windows in which an automatic build is deferred to the first day after the window.
    #[serde(default)]
    pub blackouts: Vec<Blackout>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchTuesdaySpec {
    /// Days after the second Tuesday of the month; may be negative.
    #[serde(default)]
    pub offset_days: i32,
    /// Local time of day, `HH:MM`.
    #[serde(default = "default_at")]
    pub at: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

fn default_at() -> String {
    "00:00".into()
}
fn default_tz() -> String {
    "UTC".into()
}

/// A single date (`from` only) or an inclusive range of local dates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Blackout {
    pub from: NaiveDate,
    #[serde(default)]
    pub to: Option<NaiveDate>,
    #[serde(default)]
    pub reason: Option<String>,
}

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
    tz: TimeZone,
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

    /// The IANA name of the time zone the rule and the blackout dates are read in.
    pub fn time_zone(&self) -> &str {
        self.tz.iana_name().unwrap_or("UTC")
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
        let local = jiff::Timestamp::new(t.timestamp(), 0).map(|ts| self.tz.to_datetime(ts));
        match local {
            Ok(d) => NaiveDate::from_ymd_opt(d.year().into(), d.month() as u32, d.day() as u32)
                .unwrap_or_else(|| t.date_naive()),
            // Beyond jiff's years (±9999): no schedule reaches them.
            Err(_) => t.date_naive(),
        }
    }

    /// The instant a local time denotes. A local time in a spring-forward gap
    /// means the first instant after the gap; a repeated one the earlier.
    fn to_utc(&self, local: NaiveDateTime) -> DateTime<Utc> {
        if let Some(t) = self.earliest(local) {
            return t;
        }
        // Gaps start and end on whole minutes in every zone since 1972; the
        // widest (a skipped day, Samoa 2011) is 24 hours.
        let minute = local.with_second(0).unwrap_or(local);
        (1..=48 * 60)
            .filter_map(|m| minute.checked_add_signed(TimeDelta::minutes(m)))
            .find_map(|probe| self.earliest(probe))
            .unwrap_or_else(|| local.and_utc())
    }

    /// The earlier instant a local time denotes; `None` in a gap (or
    /// beyond jiff's years).
    fn earliest(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let civil = jiff::civil::DateTime::new(
            i16::try_from(local.year()).ok()?,
            local.month() as i8,
            local.day() as i8,
            local.hour() as i8,
            local.minute() as i8,
            local.second() as i8,
            0,
        )
        .ok()?;
        let instant = |offset: jiff::tz::Offset| {
            let ts = offset.to_timestamp(civil).ok()?;
            DateTime::from_timestamp(ts.as_second(), 0)
        };
        match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => instant(offset),
            AmbiguousOffset::Fold { before, after } => instant(before)?.min(instant(after)?).into(),
            AmbiguousOffset::Gap { .. } => None,
        }
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

fn parse_time_zone(name: &str) -> Result<TimeZone, String> {
    let unknown = || format!("timeZone `{name}` is not an IANA time zone name");
    let tz = TimeZone::get(name).map_err(|_| unknown())?;
    // jiff finds a name in any case; the file spells it as the database
    // does, as every other reader of it (ARM, Linux, cron) expects.
    match tz.iana_name() {
        Some(known) if known == name => Ok(tz),
        Some(known) => Err(format!(
            "timeZone `{name}`: expected `{known}`, spelled as the IANA database spells it"
        )),
        None => Err(unknown()),
    }
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
mod tests;
