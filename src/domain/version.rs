//! Gallery image versions: `Major.Minor.Patch`, each an int32, ordered numerically.
//!
//! Compute Gallery rejects anything else, and string ordering is the classic
//! cleanup-script bug (`"1.0.10" < "1.0.9"`), so every comparison in kiln goes
//! through this type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a gallery image version: expected Major.Minor.Patch with each part an integer from 0 to 2147483647")]
pub struct VersionParseError {
    pub input: String,
}

impl ImageVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// The version after `self` under AIB's `Latest` scheme: same major and minor, next patch.
    pub fn next_patch(self) -> Self {
        Self::new(self.major, self.minor, self.patch + 1)
    }

    /// A sortable key, used where millions of versions are sorted.
    pub fn key(self) -> u128 {
        ((self.major as u128) << 64) | ((self.minor as u128) << 32) | self.patch as u128
    }
}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for ImageVersion {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionParseError {
            input: s.to_string(),
        };
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, VersionParseError> {
            let p = parts.next().ok_or_else(err)?;
            // Reject signs and empty parts that `parse` would otherwise let through or mis-read.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            let n: u32 = p.parse().map_err(|_| err())?;
            if n > i32::MAX as u32 {
                return Err(err());
            }
            Ok(n)
        };
        let v = ImageVersion::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(v)
    }
}

impl Serialize for ImageVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_numerically_not_as_text() {
        let a: ImageVersion = "1.0.10".parse().unwrap();
        let b: ImageVersion = "1.0.9".parse().unwrap();
        assert!(a > b);
        assert!("2.0.0".parse::<ImageVersion>().unwrap() > "1.99.99".parse().unwrap());
    }

    #[test]
    fn rejects_what_the_gallery_rejects() {
        for bad in [
            "1.0",
            "1.0.0.0",
            "a.b.c",
            "1..0",
            "-1.0.0",
            "+1.0.0",
            "1.0.2147483648",
            "",
        ] {
            assert!(
                bad.parse::<ImageVersion>().is_err(),
                "{bad} should be rejected"
            );
        }
        assert_eq!(
            "0.0.2147483647".parse::<ImageVersion>().unwrap().patch,
            2147483647
        );
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(a in 0u32..=i32::MAX as u32, b in 0u32..=i32::MAX as u32, c in 0u32..=i32::MAX as u32) {
            let v = ImageVersion::new(a, b, c);
            prop_assert_eq!(v.to_string().parse::<ImageVersion>().unwrap(), v);
        }

        #[test]
        fn key_order_matches_version_order(a: (u16, u16, u16), b: (u16, u16, u16)) {
            let va = ImageVersion::new(a.0.into(), a.1.into(), a.2.into());
            let vb = ImageVersion::new(b.0.into(), b.1.into(), b.2.into());
            prop_assert_eq!(va.cmp(&vb), va.key().cmp(&vb.key()));
        }
    }
}
