//! The image's inventory, independent of any SBOM format: its operating
//! system, the packages its package database says are installed, and the
//! files File customizers placed. SPDX and CycloneDX are renderings of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The operating system, from the image's `/etc/os-release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OsRelease {
    /// `ID`: `debian`, `ubuntu`, …
    pub id: String,
    /// `VERSION_ID`: `12`, `22.04`; absent on testing/unstable.
    pub version_id: Option<String>,
    /// `PRETTY_NAME`, for people.
    pub pretty_name: Option<String>,
}

/// Which package database a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Dpkg,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The source package it was built from (its own name when the database
    /// names none). Vulnerability feeds for Debian and Ubuntu name sources.
    pub source: String,
    /// The source package's version (the binary's own when not given).
    pub source_version: String,
    /// An SPDX license expression, when the package says so in a
    /// machine-readable way; `None` is SPDX's NOASSERTION.
    pub license: Option<String>,
    pub manager: PackageManager,
}

/// A file a File customizer placed, with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedFile {
    /// The absolute path inside the image.
    pub path: String,
    /// Lowercase hex sha256 of the file's content.
    pub sha256: String,
}

/// What an image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sbom {
    /// What it describes: the gallery version id, or the template's name.
    pub subject: String,
    pub os: Option<OsRelease>,
    /// Sorted by (name, arch): one order for every rendering and diff.
    pub packages: Vec<Package>,
    /// Sorted by path.
    pub files: Vec<PlacedFile>,
    /// When the inventory was taken (the build's time, or
    /// `SOURCE_DATE_EPOCH` for a reproducible build).
    pub created: DateTime<Utc>,
    /// The tool that took it: `kiln 0.1.0`.
    pub tool: String,
}

impl Sbom {
    /// Puts packages and files in their one order.
    pub fn normalize(&mut self) {
        self.packages
            .sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
        self.packages
            .dedup_by(|a, b| a.name == b.name && a.arch == b.arch);
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        self.files.dedup_by(|a, b| a.path == b.path);
    }

    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }
}
