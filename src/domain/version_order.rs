//! Ordering of source image versions as catalogs print them
//! (`22.04.202611010`, `1.0.9`): dot-separated parts compared as numbers
//! when both are numbers, as text otherwise.

use std::cmp::Ordering;

pub fn compare(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_as_numbers() {
        assert_eq!(compare("1.0.10", "1.0.9"), Ordering::Greater);
        assert_eq!(
            compare("22.04.202611010", "22.04.202610150"),
            Ordering::Greater
        );
        assert_eq!(compare("1.0", "1.0.0"), Ordering::Less);
        assert_eq!(compare("1.0.0", "1.0.0"), Ordering::Equal);
    }
}
