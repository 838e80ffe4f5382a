//! What changed between two inventories: packages added, removed,
//! upgraded and downgraded. The "what did this Patch Tuesday change"
//! answer, for `kiln diff`, the API and the completion event.
//!
//! A package is its (name, arch): `libc6:amd64` and `libc6:i386` are two,
//! and a package whose architecture changed was removed and added.
//! Versions are ordered as dpkg orders them (epochs, `~`, revisions), by
//! the `debversion` crate.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::sbom::{Package, Sbom};

/// One package's change. `from` is absent for an added package, `to` for a
/// removed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageChange {
    pub name: String,
    pub arch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The changes from an old inventory to a new one, each list sorted by
/// (name, arch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageDiff {
    pub added: Vec<PackageChange>,
    pub removed: Vec<PackageChange>,
    pub upgraded: Vec<PackageChange>,
    pub downgraded: Vec<PackageChange>,
}

/// One kind of change, for an event: how many, and the first names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindSummary {
    pub count: usize,
    pub names: Vec<String>,
}

/// A diff small enough for a CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffSummary {
    pub added: KindSummary,
    pub removed: KindSummary,
    pub upgraded: KindSummary,
    pub downgraded: KindSummary,
}

/// What changed from `old` to `new`.
pub fn diff(old: &Sbom, new: &Sbom) -> PackageDiff {
    let index = |s: &Sbom| -> BTreeMap<(String, String), Package> {
        s.packages
            .iter()
            .map(|p| ((p.name.clone(), p.arch.clone()), p.clone()))
            .collect()
    };
    let (old, new) = (index(old), index(new));
    let mut d = PackageDiff::default();
    for ((name, arch), o) in &old {
        let change = |to: Option<&Package>| PackageChange {
            name: name.clone(),
            arch: arch.clone(),
            from: Some(o.version.clone()),
            to: to.map(|n| n.version.clone()),
        };
        match new.get(&(name.clone(), arch.clone())) {
            None => d.removed.push(change(None)),
            Some(n) => match compare_versions(&o.version, &n.version) {
                Ordering::Less => d.upgraded.push(change(Some(n))),
                Ordering::Greater => d.downgraded.push(change(Some(n))),
                Ordering::Equal => {}
            },
        }
    }
    for ((name, arch), n) in &new {
        if !old.contains_key(&(name.clone(), arch.clone())) {
            d.added.push(PackageChange {
                name: name.clone(),
                arch: arch.clone(),
                from: None,
                to: Some(n.version.clone()),
            });
        }
    }
    d
}

/// dpkg's order. A version dpkg could not have installed (it does not
/// parse even leniently) is compared as text, so that the diff still says
/// something rather than nothing.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let parse = |s: &str| {
        s.parse::<debversion::Version>()
            .or_else(|_| debversion::Version::parse_lenient(s))
    };
    match (parse(a), parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) | (Err(_), Ok(_)) | (Err(_), Err(_)) => a.cmp(b),
    }
}

impl PackageDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.upgraded.is_empty()
            && self.downgraded.is_empty()
    }

    /// Counts, and the first `limit` names of each kind.
    pub fn summary(&self, limit: usize) -> DiffSummary {
        let kind = |v: &[PackageChange]| KindSummary {
            count: v.len(),
            names: v.iter().take(limit).map(|c| c.name.clone()).collect(),
        };
        DiffSummary {
            added: kind(&self.added),
            removed: kind(&self.removed),
            upgraded: kind(&self.upgraded),
            downgraded: kind(&self.downgraded),
        }
    }
}

/// One line per change, in (name, arch) order across kinds:
/// `+ jq 1.6-2.1`, `- foo 1.0`, `~ curl 7.88.1-10 -> 7.88.1-10+deb12u5`,
/// and a downgrade as `~ … (downgrade)`. A name that appears in more than
/// one change (another architecture) is written `name:arch`.
impl fmt::Display for PackageDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Kind {
            Added,
            Removed,
            Upgraded,
            Downgraded,
        }
        let mut lines: Vec<(&PackageChange, Kind)> = Vec::new();
        lines.extend(self.added.iter().map(|c| (c, Kind::Added)));
        lines.extend(self.removed.iter().map(|c| (c, Kind::Removed)));
        lines.extend(self.upgraded.iter().map(|c| (c, Kind::Upgraded)));
        lines.extend(self.downgraded.iter().map(|c| (c, Kind::Downgraded)));
        // Removed before added for the same name: the old, then the new.
        lines.sort_by(|(a, ka), (b, kb)| {
            let key =
                |c: &PackageChange, k: &Kind| (c.name.clone(), *k == Kind::Added, c.arch.clone());
            key(a, ka).cmp(&key(b, kb)).then(ka.cmp(kb))
        });
        let twice = |name: &str| lines.iter().filter(|(c, _)| c.name == name).count() > 1;
        for (c, kind) in &lines {
            let who = if twice(&c.name) {
                format!("{}:{}", c.name, c.arch)
            } else {
                c.name.clone()
            };
            let from = c.from.as_deref().unwrap_or("");
            let to = c.to.as_deref().unwrap_or("");
            match kind {
                Kind::Added => writeln!(f, "+ {who} {to}")?,
                Kind::Removed => writeln!(f, "- {who} {from}")?,
                Kind::Upgraded => writeln!(f, "~ {who} {from} -> {to}")?,
                Kind::Downgraded => writeln!(f, "~ {who} {from} -> {to} (downgrade)")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::evidence::sbom::PackageManager;
    use chrono::DateTime;

    /// An SBOM of `(name, arch, version)` packages, each its own source.
    pub(crate) fn sbom(pkgs: &[(&str, &str, &str)]) -> Sbom {
        let mut s = Sbom {
            subject: "s".into(),
            os: None,
            packages: pkgs
                .iter()
                .map(|(name, arch, version)| Package {
                    name: name.to_string(),
                    version: version.to_string(),
                    arch: arch.to_string(),
                    source: name.to_string(),
                    source_version: version.to_string(),
                    license: None,
                    manager: PackageManager::Dpkg,
                })
                .collect(),
            files: vec![],
            created: DateTime::UNIX_EPOCH,
            tool: "kiln 0.1.0".into(),
        };
        s.normalize();
        s
    }

    fn names(v: &[PackageChange]) -> Vec<&str> {
        v.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn one_added_package_is_the_whole_diff() {
        let old = sbom(&[("curl", "amd64", "7.88.1-10"), ("unzip", "amd64", "6.0-28")]);
        let new = sbom(&[
            ("curl", "amd64", "7.88.1-10"),
            ("jq", "amd64", "1.6-2.1"),
            ("unzip", "amd64", "6.0-28"),
        ]);
        let d = diff(&old, &new);
        assert_eq!(
            d.added,
            [PackageChange {
                name: "jq".into(),
                arch: "amd64".into(),
                from: None,
                to: Some("1.6-2.1".into())
            }]
        );
        assert!(d.removed.is_empty() && d.upgraded.is_empty() && d.downgraded.is_empty());
        assert_eq!(d.to_string(), "+ jq 1.6-2.1\n");
        assert!(diff(&new, &new).is_empty());
        assert_eq!(diff(&new, &old).to_string(), "- jq 1.6-2.1\n");
    }

    #[test]
    fn versions_are_ordered_as_dpkg_orders_them() {
        let old = sbom(&[
            ("curl", "amd64", "7.88.1-10"),
            ("tilde", "amd64", "1.0"),
            ("epoch", "amd64", "1:0.9"),
            ("same", "amd64", "0:2.0"),
            ("num", "amd64", "1.9"),
        ]);
        let new = sbom(&[
            ("curl", "amd64", "7.88.1-10+deb12u5"),
            // `~` sorts before anything, even the end: a release candidate is older.
            ("tilde", "amd64", "1.0~rc1"),
            // An epoch outranks any upstream version.
            ("epoch", "amd64", "2.0"),
            // Epoch 0 is no epoch.
            ("same", "amd64", "2.0"),
            // Numerically, not as text: 1.10 > 1.9.
            ("num", "amd64", "1.10"),
        ]);
        let d = diff(&old, &new);
        assert_eq!(names(&d.upgraded), ["curl", "num"]);
        assert_eq!(names(&d.downgraded), ["epoch", "tilde"]);
        assert_eq!(
            d.to_string(),
            "~ curl 7.88.1-10 -> 7.88.1-10+deb12u5\n\
             ~ epoch 1:0.9 -> 2.0 (downgrade)\n\
             ~ num 1.9 -> 1.10\n\
             ~ tilde 1.0 -> 1.0~rc1 (downgrade)\n"
        );
    }

    #[test]
    fn an_architecture_change_is_a_removal_and_an_addition() {
        let old = sbom(&[("foo", "i386", "1.0"), ("libc6", "amd64", "2.36-9")]);
        let new = sbom(&[("foo", "amd64", "1.0"), ("libc6", "amd64", "2.36-9")]);
        let d = diff(&old, &new);
        assert_eq!(names(&d.removed), ["foo"]);
        assert_eq!(d.removed[0].arch, "i386");
        assert_eq!(names(&d.added), ["foo"]);
        assert_eq!(d.added[0].arch, "amd64");
        assert_eq!(d.to_string(), "- foo:i386 1.0\n+ foo:amd64 1.0\n");
    }

    #[test]
    fn the_summary_counts_and_names_the_first_few() {
        let old = sbom(&[("a", "all", "1"), ("b", "all", "1")]);
        let new = sbom(&[
            ("c", "all", "1"),
            ("d", "all", "1"),
            ("e", "all", "1"),
            ("a", "all", "2"),
        ]);
        let s = diff(&old, &new).summary(2);
        assert_eq!(s.added.count, 3);
        assert_eq!(s.added.names, ["c", "d"]);
        assert_eq!(
            (s.removed.count, s.upgraded.count, s.downgraded.count),
            (1, 1, 0)
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap()["upgraded"],
            serde_json::json!({"count": 1, "names": ["a"]})
        );
    }
}
