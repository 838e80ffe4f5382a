//! The one format kiln stores instants in, and its one reader: RFC 3339,
//! microseconds, UTC (`2026-12-08T18:00:00.000000Z`). The fixed width makes
//! text comparison agree with time order, which both stores rely on (SQL
//! `<=` on text columns, `$filter` `le` on string properties).

use chrono::{DateTime, SecondsFormat, Utc};

/// How an instant is written to a store.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads a stored instant (any RFC 3339 offset is accepted and made UTC).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    #[test]
    fn stored_instants_sort_as_text_in_time_order_and_read_back_exactly() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 8, 18, 0, 0).unwrap();
        let times = [t0, t0 + Duration::microseconds(1), t0 + Duration::days(400)];
        let texts: Vec<String> = times.iter().map(|t| format(*t)).collect();
        assert_eq!(texts[0], "2026-12-08T18:00:00.000000Z");
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(sorted, texts);
        for (t, s) in times.iter().zip(&texts) {
            assert_eq!(parse(s), Some(*t));
        }
        assert_eq!(
            parse("2026-12-08T19:00:00+01:00"),
            Some(t0),
            "an offset is made UTC"
        );
        assert_eq!(parse("yesterday"), None);
    }
}
