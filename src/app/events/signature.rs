//! The webhook signature, for kiln and for receivers: HMAC-SHA256 over
//! `"{timestamp}.{body}"`, the timestamp (Unix seconds) sent beside it.
//!
//! Signing the body alone let anyone who once saw a delivery replay it
//! forever; with the time inside the signed text, a receiver that refuses
//! deliveries older than a few minutes (and deduplicates by event id within
//! that window) refuses a replay. [`verify`] is what a receiver in Rust
//! calls; `docs/events-out.md` gives the recipe for others.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub const SIGNATURE_HEADER: &str = "x-kiln-signature-256";
/// The Unix time (seconds) the delivery was signed at, part of the signed text.
pub const TIMESTAMP_HEADER: &str = "x-kiln-timestamp";
/// How old (or how far ahead, for clock skew) a delivery may be: long
/// enough for a retry in flight and a few seconds of skew, short enough
/// that a captured delivery is soon useless.
pub const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for a delivery signed at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("{TIMESTAMP_HEADER}: expected Unix seconds, got {0:?}")]
    BadTimestamp(String),
    #[error("{SIGNATURE_HEADER}: expected sha256= and 64 hex digits")]
    BadSignature,
    #[error("signed {age_seconds} s ago, more than the {tolerance_seconds} s allowed (a replay, or a delivery held too long)")]
    TooOld {
        age_seconds: i64,
        tolerance_seconds: u64,
    },
    #[error("signed {ahead_seconds} s in the future, more than the {tolerance_seconds} s of clock skew allowed")]
    FromTheFuture {
        ahead_seconds: i64,
        tolerance_seconds: u64,
    },
    #[error("the signature does not match the body and timestamp under this secret")]
    Mismatch,
}

/// Checks a delivery as a receiver should: the signature over the raw body
/// and the timestamp (compared in constant time), and the timestamp within
/// `tolerance` of `now` (Unix seconds) either way. Parse the body only after this.
pub fn verify(
    secret: &str,
    signature: &str,
    timestamp: &str,
    body: &[u8],
    now: i64,
    tolerance: std::time::Duration,
) -> Result<(), Rejected> {
    // Canonical digits only: what is signed is the header's text, so
    // `+1000` or `01000` (which parse to the same number) are refused, as
    // the documented recipes refuse them.
    let canonical = !timestamp.is_empty()
        && timestamp.bytes().all(|b| b.is_ascii_digit())
        && (timestamp == "0" || !timestamp.starts_with('0'));
    let ts: i64 = timestamp
        .parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| Rejected::BadTimestamp(timestamp.chars().take(32).collect()))?;
    let given = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .filter(|b| b.len() == 32)
        .ok_or(Rejected::BadSignature)?;
    // The signature first: an attacker learns nothing about the window
    // from a forged delivery, and a genuine old one is told it is old.
    mac(secret, ts, body)
        .verify_slice(&given)
        .map_err(|_| Rejected::Mismatch)?;
    let tolerance_seconds = tolerance.as_secs();
    let age = now.saturating_sub(ts);
    let limit = i64::try_from(tolerance_seconds).unwrap_or(i64::MAX);
    if age > limit {
        return Err(Rejected::TooOld {
            age_seconds: age,
            tolerance_seconds,
        });
    }
    if -age > limit {
        return Err(Rejected::FromTheFuture {
            ahead_seconds: -age,
            tolerance_seconds,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: std::time::Duration = DEFAULT_TOLERANCE;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // The primitive, against RFC 4231 test case 2; then `sign` is that
        // primitive over the joined text "{timestamp}.{body}".
        let mut whole = HmacSha256::new_from_slice(b"Jefe").unwrap();
        whole.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(whole.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut joined = HmacSha256::new_from_slice(b"s").unwrap();
        joined.update(b"1700000000.{\"a\":1}");
        assert_eq!(
            sign("s", 1_700_000_000, b"{\"a\":1}"),
            format!("sha256={}", hex::encode(joined.finalize().into_bytes()))
        );
    }

    #[test]
    fn a_fresh_genuine_delivery_verifies() {
        let sig = sign("k", 1_000, b"body");
        assert_eq!(verify("k", &sig, "1000", b"body", 1_000, TOL), Ok(()));
        assert_eq!(verify("k", &sig, "1000", b"body", 1_300, TOL), Ok(()));
        assert_eq!(verify("k", &sig, "1000", b"body", 700, TOL), Ok(()));
    }

    #[test]
    fn tampering_with_body_timestamp_or_secret_is_a_mismatch() {
        let sig = sign("k", 1_000, b"body");
        assert_eq!(
            verify("k", &sig, "1000", b"bodY", 1_000, TOL),
            Err(Rejected::Mismatch)
        );
        // A replay with a fresh timestamp does not carry a valid signature.
        assert_eq!(
            verify("k", &sig, "2000", b"body", 2_000, TOL),
            Err(Rejected::Mismatch)
        );
        assert_eq!(
            verify("other", &sig, "1000", b"body", 1_000, TOL),
            Err(Rejected::Mismatch)
        );
        // The old body-only signature is refused too.
        let mut old = HmacSha256::new_from_slice(b"k").unwrap();
        old.update(b"body");
        let old = format!("sha256={}", hex::encode(old.finalize().into_bytes()));
        assert_eq!(
            verify("k", &old, "1000", b"body", 1_000, TOL),
            Err(Rejected::Mismatch)
        );
    }

    #[test]
    fn an_old_or_future_delivery_is_refused_even_when_genuine() {
        let sig = sign("k", 1_000, b"body");
        assert_eq!(
            verify("k", &sig, "1000", b"body", 1_301, TOL),
            Err(Rejected::TooOld {
                age_seconds: 301,
                tolerance_seconds: 300
            })
        );
        assert_eq!(
            verify("k", &sig, "1000", b"body", 699, TOL),
            Err(Rejected::FromTheFuture {
                ahead_seconds: 301,
                tolerance_seconds: 300
            })
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let sig = sign("k", 1_000, b"body");
        // Not the header's canonical text, though some parse to 1000.
        for ts in ["soon", "+1000", " 1000", "01000", "1000 ", ""] {
            assert!(
                matches!(
                    verify("k", &sig, ts, b"body", 1_000, TOL),
                    Err(Rejected::BadTimestamp(_))
                ),
                "{ts:?}"
            );
        }
        for bad in [
            "",
            "sha256=",
            "sha1=00",
            &sig[..20],
            &sig.replace("sha256=", ""),
        ] {
            assert_eq!(
                verify("k", bad, "1000", b"body", 1_000, TOL),
                Err(Rejected::BadSignature),
                "{bad}"
            );
        }
        assert!(verify("k", &sig, &i64::MIN.to_string(), b"body", i64::MAX, TOL).is_err());
    }
}
