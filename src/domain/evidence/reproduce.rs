//! Whether a version reproduces: a second build of its template on the same
//! source, compared with what was signed. The package set is compared with
//! the stored SBOM (by name, architecture and version), the disks with the
//! signed provenance's subjects (by sha256). A package set that matches
//! while the disk differs is reported as such: the image holds the same
//! software, but something in it is not yet deterministic.

use serde::Serialize;

use super::diff::{diff, PackageDiff};
use super::facts::RunFacts;
use super::provenance::Statement;
use super::sbom::Sbom;

/// One rebuilt disk next to the digest the provenance signed for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskCheck {
    pub name: String,
    /// The signed sha256; `None` when the provenance names no such subject.
    pub signed: Option<String>,
    pub rebuilt: String,
}

impl DiskCheck {
    pub fn identical(&self) -> bool {
        self.signed
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&self.rebuilt))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reproduction {
    /// From the published version's SBOM to the rebuild's: empty when the
    /// package sets are the same.
    pub packages: PackageDiff,
    pub package_count: usize,
    pub disks: Vec<DiskCheck>,
}

impl Reproduction {
    pub fn same_packages(&self) -> bool {
        self.packages.is_empty()
    }

    /// Every rebuilt disk is byte for byte a signed one (and there is one).
    pub fn same_disks(&self) -> bool {
        !self.disks.is_empty() && self.disks.iter().all(DiskCheck::identical)
    }

    pub fn reproduces(&self) -> bool {
        self.same_packages() && self.same_disks()
    }
}

/// The rebuild's facts against the signed statement and the stored SBOM.
pub fn compare(signed: &Statement, published: &Sbom, rebuilt: &RunFacts) -> Reproduction {
    let disks = rebuilt
        .disks
        .iter()
        .map(|d| DiskCheck {
            name: d.name.clone(),
            signed: signed
                .subject
                .iter()
                .find(|s| s.name.as_deref() == Some(d.name.as_str()))
                .and_then(|s| s.sha256())
                .map(str::to_ascii_lowercase),
            rebuilt: d.sha256.to_ascii_lowercase(),
        })
        .collect();
    Reproduction {
        packages: diff(published, &rebuilt.sbom),
        package_count: rebuilt.sbom.packages.len(),
        disks,
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::domain::evidence::facts::Digest;
    use crate::domain::evidence::provenance::{image_provenance, tests::input};

    fn sbom_of(pkgs: &[(&str, &str)]) -> Sbom {
        let with_arch: Vec<(&str, &str, &str)> =
            pkgs.iter().map(|(n, v)| (*n, "amd64", *v)).collect();
        crate::domain::evidence::diff::tests::sbom(&with_arch)
    }

    fn facts(sbom: Sbom, disk_sha: &str) -> RunFacts {
        RunFacts {
            sbom,
            base_sbom: None,
            disks: vec![Digest {
                name: "disk.qcow2".into(),
                sha256: disk_sha.into(),
            }],
            template_sha256: "ab".repeat(32),
            source: "local:debian/12".into(),
            source_exact: "2026.11.28".into(),
            customizers: vec![],
            started: DateTime::UNIX_EPOCH,
            finished: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_rebuild_reproduces_only_with_the_same_packages_and_the_same_disk() {
        let statement = image_provenance(&input());
        let signed_disk = statement
            .subject
            .iter()
            .find(|s| s.name.as_deref() == Some("disk.qcow2"))
            .and_then(|s| s.sha256())
            .expect("the fixture signs a disk.qcow2")
            .to_string();
        let published = sbom_of(&[("jq", "1.6-2.1"), ("curl", "7.88.1-10")]);

        let same = compare(
            &statement,
            &published,
            &facts(published.clone(), &signed_disk.to_uppercase()),
        );
        assert!(same.reproduces(), "{same:?}");
        assert_eq!(same.package_count, 2);

        let other_disk = compare(
            &statement,
            &published,
            &facts(published.clone(), &"0".repeat(64)),
        );
        assert!(other_disk.same_packages());
        assert!(!other_disk.same_disks());
        assert!(!other_disk.reproduces());

        let newer = sbom_of(&[("jq", "1.6-2.2"), ("curl", "7.88.1-10")]);
        let upgraded = compare(&statement, &published, &facts(newer, &signed_disk));
        assert!(!upgraded.reproduces());
        assert_eq!(upgraded.packages.upgraded.len(), 1);
        assert_eq!(upgraded.packages.upgraded[0].name, "jq");

        // A disk the provenance never signed is not a reproduction of it.
        let mut unsigned = facts(published.clone(), &signed_disk);
        unsigned.disks[0].name = "disk.vhd".into();
        let r = compare(&statement, &published, &unsigned);
        assert_eq!(r.disks[0].signed, None);
        assert!(!r.reproduces());
        let mut none = facts(published.clone(), &signed_disk);
        none.disks.clear();
        assert!(!compare(&statement, &published, &none).reproduces());
    }
}
