//! NCRONTAB timer schedules (six fields, UTC) for the local host, with the
//! Functions host's semantics: a firing missed while the host was down is
//! delivered once, marked past due.

use chrono::{DateTime, Utc};
use croner::Cron;

/// Parses a six-field NCRONTAB expression (`second minute hour day month day-of-week`).
pub fn parse_ncrontab(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "`{expr}`: expected 6 fields (second minute hour day month day-of-week)"
        ));
    }
    Cron::new(expr)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
        .map_err(|e| format!("`{expr}`: {e}"))
}

/// The first occurrence strictly after `t`.
pub fn next_after(cron: &Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t, false).ok()
}

/// Whether an occurrence fell between the last firing and `now` (the host was
/// down or busy): the next invocation is then past due.
pub fn missed_since(cron: &Cron, last: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    next_after(cron, last).is_some_and(|n| n < now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn six_field_schedules_fire_on_their_seconds() {
        let c = parse_ncrontab("0 */5 * * * *").unwrap();
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 10, 2, 30).unwrap();
        assert_eq!(
            next_after(&c, t).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 27, 10, 5, 0).unwrap()
        );
    }

    #[test]
    fn weekday_ranges_use_sunday_as_zero_like_ncrontab() {
        let c = parse_ncrontab("0 30 9 * * 1-5").unwrap();
        // 2026-11-28 is a Saturday: the next firing is Monday the 30th.
        let sat = Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap();
        assert_eq!(
            next_after(&c, sat).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 30, 9, 30, 0).unwrap()
        );
    }

    #[test]
    fn five_fields_are_refused() {
        assert!(parse_ncrontab("*/5 * * * *")
            .unwrap_err()
            .contains("6 fields"));
    }

    #[test]
    fn a_missed_occurrence_is_noticed() {
        let c = parse_ncrontab("0 0 * * * *").unwrap();
        let last = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        assert!(!missed_since(
            &c,
            last,
            last + chrono::Duration::minutes(59)
        ));
        assert!(missed_since(&c, last, last + chrono::Duration::minutes(61)));
    }
}
