//! OData `$filter` expressions, built so that a value can never change the
//! expression around it.
//!
//! A value is always written as an OData literal of its type: strings in
//! single quotes with each `'` doubled (`'o''clock'`), 64-bit integers with
//! the `L` suffix, dates as `datetime'…'`, GUIDs as `guid'…'`, binary as
//! `X'…'`. Property names are `&'static str`, so they come from kiln's code,
//! not from data. The service allows at most 15 comparisons in one filter;
//! [`Filter::check`] counts them before a query is sent. The expression is
//! percent-encoded when the query URL is built, not here.

use chrono::{DateTime, SecondsFormat, Utc};

use super::entity::Property;
use super::TableError;

/// The service's limit on comparisons in one `$filter`.
pub const MAX_COMPARISONS: usize = 15;

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: String,
    comparisons: usize,
}

impl Filter {
    /// No filter: every entity of the table.
    pub fn all() -> Self {
        Self {
            expr: String::new(),
            comparisons: 0,
        }
    }

    pub fn eq(property: &'static str, value: impl Into<Property>) -> Self {
        Self::compare(property, "eq", value.into())
    }
    pub fn ne(property: &'static str, value: impl Into<Property>) -> Self {
        Self::compare(property, "ne", value.into())
    }
    pub fn gt(property: &'static str, value: impl Into<Property>) -> Self {
        Self::compare(property, "gt", value.into())
    }
    pub fn ge(property: &'static str, value: impl Into<Property>) -> Self {
        Self::compare(property, "ge", value.into())
    }
    pub fn lt(property: &'static str, value: impl Into<Property>) -> Self {
        Self::compare(property, "lt", value.into())
    }
    pub fn le(property: &'static str, value: impl Into<Property>) -> Self {
        Self::compare(property, "le", value.into())
    }

    /// Keys starting with `prefix`: `ge prefix and lt prefix-with-its-last-char-incremented`.
    /// The service has no `startswith`; this is its documented range idiom.
    pub fn starts_with(property: &'static str, prefix: &str) -> Self {
        let mut upper: Vec<char> = prefix.chars().collect();
        match upper.pop() {
            None => Filter::all(),
            Some(last) => {
                let next = char::from_u32(last as u32 + 1).unwrap_or(char::MAX);
                upper.push(next);
                let upper: String = upper.into_iter().collect();
                Filter::ge(property, prefix).and(Filter::lt(property, upper))
            }
        }
    }

    pub fn and(self, other: Filter) -> Self {
        self.join("and", other)
    }

    pub fn or(self, other: Filter) -> Self {
        self.join("or", other)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Self {
        if self.expr.is_empty() {
            return self;
        }
        Self {
            expr: format!("not ({})", self.expr),
            comparisons: self.comparisons,
        }
    }

    /// The expression, unencoded (empty for [`Filter::all`]).
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// Refuses a filter the service would refuse for its size.
    pub fn check(&self) -> Result<(), TableError> {
        if self.comparisons > MAX_COMPARISONS {
            return Err(TableError::Invalid(format!(
                "filter has {} comparisons; Table Storage allows {MAX_COMPARISONS}: {}",
                self.comparisons,
                self.expr.chars().take(200).collect::<String>()
            )));
        }
        Ok(())
    }

    fn compare(property: &'static str, op: &str, value: Property) -> Self {
        Self {
            expr: format!("{property} {op} {}", literal(&value)),
            comparisons: 1,
        }
    }

    fn join(self, op: &str, other: Filter) -> Self {
        match (self.expr.is_empty(), other.expr.is_empty()) {
            (true, _) => other,
            (_, true) => self,
            _ => Self {
                expr: format!("({}) {op} ({})", self.expr, other.expr),
                comparisons: self.comparisons + other.comparisons,
            },
        }
    }
}

/// A value as an OData literal.
pub fn literal(value: &Property) -> String {
    match value {
        Property::String(s) => quote(s),
        Property::Bool(b) => b.to_string(),
        Property::Int32(i) => i.to_string(),
        Property::Int64(i) => format!("{i}L"),
        Property::Double(d) => {
            // A literal without a decimal point would be read as an integer.
            let s = d.to_string();
            if s.contains(['.', 'e', 'E']) || !d.is_finite() {
                s
            } else {
                format!("{s}.0")
            }
        }
        Property::DateTime(t) => format!("datetime'{}'", datetime(t)),
        Property::Binary(b) => format!("X'{}'", hex::encode(b)),
        Property::Guid(g) => format!("guid'{g}'"),
    }
}

/// A string literal: single quotes, each `'` inside doubled.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn datetime(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_quote_in_a_value_is_doubled_and_cannot_end_the_literal() {
        let f = Filter::eq("RowKey", "x' or RowKey ne 'y");
        assert_eq!(f.as_str(), "RowKey eq 'x'' or RowKey ne ''y'");
        assert_eq!(quote("o'clock"), "'o''clock'");
    }

    #[test]
    fn each_type_is_written_as_its_odata_literal() {
        let at = Utc.with_ymd_and_hms(2008, 7, 10, 0, 0, 0).unwrap();
        let f = Filter::eq("PartitionKey", "p")
            .and(Filter::gt("Count", 5_i64))
            .and(Filter::le("Small", 3))
            .and(Filter::lt("At", at))
            .and(Filter::ne("Ok", false))
            .and(Filter::ge("Ratio", 2.0));
        assert_eq!(
            f.as_str(),
            "(((((PartitionKey eq 'p') and (Count gt 5L)) and (Small le 3)) and (At lt datetime'2008-07-10T00:00:00.000000Z')) and (Ok ne false)) and (Ratio ge 2.0)"
        );
        assert_eq!(literal(&Property::Binary(vec![0xab, 1])), "X'ab01'");
    }

    #[test]
    fn all_is_the_identity_of_and_and_or() {
        assert_eq!(Filter::all().and(Filter::eq("A", 1)).as_str(), "A eq 1");
        assert_eq!(Filter::eq("A", 1).or(Filter::all()).as_str(), "A eq 1");
        assert_eq!(Filter::all().not().as_str(), "");
        assert_eq!(Filter::eq("A", 1).not().as_str(), "not (A eq 1)");
    }

    #[test]
    fn a_prefix_becomes_a_half_open_range() {
        assert_eq!(
            Filter::starts_with("RowKey", "b-").as_str(),
            "(RowKey ge 'b-') and (RowKey lt 'b.')"
        );
    }

    #[test]
    fn more_than_15_comparisons_are_refused_before_sending() {
        let mut f = Filter::all();
        for i in 0..15 {
            f = f.or(Filter::eq("N", i));
        }
        f.check().unwrap();
        let f = f.or(Filter::eq("N", 15));
        assert!(f
            .check()
            .unwrap_err()
            .to_string()
            .contains("16 comparisons"));
    }
}
