//! When a floating source's new version becomes a build request.
//!
//! Two things report new versions: the base-image watcher, which lists the
//! source's versions on a timer, and inbound events (kiln's own, or Resource
//! Manager's `ResourceWriteSuccess` on a parent gallery version). Both go
//! through [`sight`] on the same pipeline memory and request the build under
//! the same key (`base:<pipeline>:<version>`), so whichever comes first
//! builds, the other finds the version already requested, and neither can
//! hold the other back.
//!
//! A `ResourceWriteSuccess` is only a hint: Resource Manager sends one for
//! every PUT and PATCH of a version, including kiln's own retention PATCHes
//! (`excludeFromLatest`, `endOfLifeDate`), for versions still `Creating`, and
//! for old versions. [`hint`] decides from the version as the catalog lists
//! it *after* the event, never from the event itself.

use chrono::{DateTime, Duration, Utc};

use super::version_order;

/// The part of a pipeline's memory the watch decision reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchMemory {
    /// Source version of the last build requested (the watcher's baseline
    /// after its first look).
    pub requested: Option<String>,
    /// Newest version seen that is not yet requested, and since when: the
    /// debounce runs from there.
    pub seen: Option<String>,
    pub seen_at: Option<DateTime<Utc>>,
}

/// What a sighting of a version means for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// Nothing was requested yet: the version is recorded as the baseline,
    /// not built (deploying kiln must not rebuild every image at once).
    Baseline,
    /// Not newer than the version last requested.
    UpToDate { requested: String },
    /// Newer, first seen at `since`; a build is due at `due`.
    Debouncing {
        since: DateTime<Utc>,
        due: DateTime<Utc>,
    },
    /// Newer and seen for the whole debounce window: request the build, then
    /// [`record_requested`] once the request is durable.
    Build,
}

/// Sees `version` (the newest one the caller knows of) at `now`.
pub fn sight(
    memory: &mut WatchMemory,
    version: &str,
    now: DateTime<Utc>,
    debounce: Duration,
) -> Sighting {
    let Some(requested) = &memory.requested else {
        memory.requested = Some(version.to_string());
        return Sighting::Baseline;
    };
    if version_order::compare(version, requested).is_le() {
        return Sighting::UpToDate {
            requested: requested.clone(),
        };
    }
    // A newer sighting than the one debouncing restarts the window only if
    // the version changed: the same version seen again keeps its start.
    if memory.seen.as_deref() != Some(version) {
        memory.seen = Some(version.to_string());
        memory.seen_at = Some(now);
    }
    let since = memory.seen_at.unwrap_or(now);
    let due = since + debounce;
    if now >= due {
        Sighting::Build
    } else {
        Sighting::Debouncing { since, due }
    }
}

/// Records that a build of `version` was requested; an older record never
/// replaces a newer one (a late request must not re-arm an older version).
pub fn record_requested(memory: &mut WatchMemory, version: &str) {
    let newer = memory
        .requested
        .as_deref()
        .is_none_or(|r| version_order::compare(version, r).is_gt());
    if newer {
        memory.requested = Some(version.to_string());
    }
}

/// One version as the source's catalog lists it: for a gallery source, the
/// versions `latest` can resolve to (provisioned); `deprecated` when it is
/// excluded from latest or past its end of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<'a> {
    pub version: &'a str,
    pub deprecated: bool,
}

/// The version the watcher goes by: the newest listed. For a gallery
/// source only what `latest` resolves to counts, so a version excluded from
/// latest (which a catalog may list as deprecated) is passed over; a
/// deprecated marketplace version still counts (the watcher warns).
pub fn newest<'a>(listed: &'a [Listed<'a>], gallery_source: bool) -> Option<&'a Listed<'a>> {
    listed
        .iter()
        .filter(|l| !(gallery_source && l.deprecated))
        .max_by(|a, b| version_order::compare(a.version, b.version))
}

/// What an event about `version` is worth, once the catalog was read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The catalog does not list the version: still `Creating` (or
    /// `Updating`, `Failed`), excluded by a catalog that leaves excluded
    /// versions out, or deleted since.
    NotProvisioned,
    /// Listed, but excluded from latest or past its end of life: `latest`
    /// does not resolve to it (kiln's own retention PATCHes end here).
    NotEligible,
    /// A newer usable version is listed: the write was an update of an older
    /// version.
    Superseded { newest: String },
    /// The version is the source's newest usable one: the watch decision.
    Sighted(Sighting),
}

/// Decides on an event about `version` from the catalog's list read after
/// the event.
pub fn hint(
    memory: &mut WatchMemory,
    version: &str,
    listed: &[Listed<'_>],
    now: DateTime<Utc>,
    debounce: Duration,
) -> Hint {
    let same = |l: &&Listed<'_>| version_order::compare(l.version, version).is_eq();
    match listed.iter().find(same) {
        None => return Hint::NotProvisioned,
        Some(l) if l.deprecated => return Hint::NotEligible,
        Some(_) => {}
    }
    let newest = listed
        .iter()
        .filter(|l| !l.deprecated)
        .max_by(|a, b| version_order::compare(a.version, b.version));
    if let Some(n) = newest.filter(|n| version_order::compare(n.version, version).is_gt()) {
        return Hint::Superseded {
            newest: n.version.to_string(),
        };
    }
    Hint::Sighted(sight(memory, version, now, debounce))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 10, minute, 0).unwrap()
    }

    fn after(requested: &str) -> WatchMemory {
        WatchMemory {
            requested: Some(requested.into()),
            ..WatchMemory::default()
        }
    }

    fn usable(version: &str) -> Listed<'_> {
        Listed {
            version,
            deprecated: false,
        }
    }

    const DEBOUNCE: Duration = Duration::minutes(30);

    #[test]
    fn the_first_sighting_is_a_baseline_not_a_build() {
        let mut m = WatchMemory::default();
        assert_eq!(sight(&mut m, "1.0.0", t(0), DEBOUNCE), Sighting::Baseline);
        assert_eq!(m.requested.as_deref(), Some("1.0.0"));
    }

    #[test]
    fn a_newer_version_builds_once_the_debounce_has_passed() {
        let mut m = after("1.0.0");
        assert_eq!(
            sight(&mut m, "1.0.1", t(0), DEBOUNCE),
            Sighting::Debouncing {
                since: t(0),
                due: t(30)
            }
        );
        assert!(matches!(
            sight(&mut m, "1.0.1", t(29), DEBOUNCE),
            Sighting::Debouncing { .. }
        ));
        assert_eq!(sight(&mut m, "1.0.1", t(30), DEBOUNCE), Sighting::Build);
        record_requested(&mut m, "1.0.1");
        assert_eq!(
            sight(&mut m, "1.0.1", t(31), DEBOUNCE),
            Sighting::UpToDate {
                requested: "1.0.1".into()
            }
        );
    }

    #[test]
    fn a_still_newer_version_restarts_the_debounce() {
        let mut m = after("1.0.0");
        sight(&mut m, "1.0.1", t(0), DEBOUNCE);
        assert_eq!(
            sight(&mut m, "1.0.2", t(20), DEBOUNCE),
            Sighting::Debouncing {
                since: t(20),
                due: t(50)
            }
        );
    }

    #[test]
    fn an_older_request_never_replaces_a_newer_one() {
        let mut m = after("1.0.10");
        record_requested(&mut m, "1.0.9");
        assert_eq!(m.requested.as_deref(), Some("1.0.10"));
    }

    #[test]
    fn the_watcher_passes_over_a_gallery_version_excluded_from_latest() {
        let listed = [
            usable("1.0.9"),
            Listed {
                version: "1.0.10",
                deprecated: true,
            },
        ];
        assert_eq!(newest(&listed, true).map(|l| l.version), Some("1.0.9"));
        assert_eq!(newest(&listed, false).map(|l| l.version), Some("1.0.10"));
        assert_eq!(newest(&[], true), None);
    }

    #[test]
    fn an_event_for_a_version_not_listed_yet_is_not_provisioned() {
        let mut m = after("1.0.0");
        let listed = [usable("1.0.0")];
        assert_eq!(
            hint(&mut m, "1.0.1", &listed, t(0), Duration::zero()),
            Hint::NotProvisioned
        );
        assert_eq!(m, after("1.0.0"), "the memory is left alone");
    }

    #[test]
    fn an_event_for_an_excluded_version_is_not_eligible() {
        let mut m = after("1.0.0");
        let listed = [
            usable("1.0.0"),
            Listed {
                version: "1.0.1",
                deprecated: true,
            },
        ];
        assert_eq!(
            hint(&mut m, "1.0.1", &listed, t(0), Duration::zero()),
            Hint::NotEligible
        );
        assert_eq!(m, after("1.0.0"));
    }

    #[test]
    fn an_event_for_an_older_version_is_superseded_even_without_a_baseline() {
        let mut m = WatchMemory::default();
        let listed = [usable("1.0.9"), usable("1.0.10")];
        assert_eq!(
            hint(&mut m, "1.0.9", &listed, t(0), Duration::zero()),
            Hint::Superseded {
                newest: "1.0.10".into()
            }
        );
        assert_eq!(m, WatchMemory::default());
    }

    #[test]
    fn an_event_for_the_newest_usable_version_is_a_sighting() {
        let mut m = after("1.0.0");
        let listed = [usable("1.0.0"), usable("1.0.1")];
        assert_eq!(
            hint(&mut m, "1.0.1", &listed, t(0), Duration::zero()),
            Hint::Sighted(Sighting::Build)
        );
        assert_eq!(
            hint(&mut m, "1.0.1", &listed, t(0), DEBOUNCE),
            Hint::Sighted(Sighting::Debouncing {
                since: t(0),
                due: t(30)
            })
        );
    }

    #[test]
    fn a_repeated_event_for_a_requested_version_is_up_to_date() {
        let mut m = after("1.0.1");
        let listed = [usable("1.0.0"), usable("1.0.1")];
        assert_eq!(
            hint(&mut m, "1.0.1", &listed, t(0), Duration::zero()),
            Hint::Sighted(Sighting::UpToDate {
                requested: "1.0.1".into()
            })
        );
    }
}
