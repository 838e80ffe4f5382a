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

    /// The package URL (purl spec, type `deb`):
    /// `pkg:deb/debian/jq@1.6-2.1?arch=amd64&distro=debian-12`, qualifiers
    /// in key order, the source as `upstream=` when its name or version
    /// differs (`upstream=glibc`, `upstream=curl%407.88.1-10`). Without an
    /// os-release the namespace is `debian`, dpkg's home, and there is no
    /// `distro`.
    pub fn purl(&self, p: &Package) -> String {
        let namespace = self.os.as_ref().map_or("debian", |o| o.id.as_str());
        let mut purl = format!(
            "pkg:deb/{}/{}@{}?arch={}",
            purl_encode(namespace),
            purl_encode(&p.name),
            purl_encode(&p.version),
            purl_encode(&p.arch)
        );
        if let Some(os) = &self.os {
            let distro = match &os.version_id {
                Some(v) => format!("{}-{v}", os.id),
                None => os.id.clone(),
            };
            purl.push_str("&distro=");
            purl.push_str(&purl_encode(&distro));
        }
        if p.source != p.name || p.source_version != p.version {
            let upstream = if p.source_version == p.version {
                p.source.clone()
            } else {
                format!("{}@{}", p.source, p.source_version)
            };
            purl.push_str("&upstream=");
            purl.push_str(&purl_encode(&upstream));
        }
        purl
    }
}

/// Percent-encodes all but the purl spec's unreserved characters (and `:`,
/// which Debian epochs use and the spec leaves as is): `+` is `%2B`.
pub fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`purl_encode`]; `None` for a broken escape.
pub fn purl_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, source: &str, source_version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            source: source.into(),
            source_version: source_version.into(),
            license: None,
            manager: PackageManager::Dpkg,
        }
    }

    fn sbom(os: Option<OsRelease>) -> Sbom {
        Sbom {
            subject: "s".into(),
            os,
            packages: vec![],
            files: vec![],
            created: DateTime::UNIX_EPOCH,
            tool: "kiln 0.1.0".into(),
        }
    }

    #[test]
    fn purls_name_the_distro_and_a_differing_source() {
        let s = sbom(Some(OsRelease {
            id: "debian".into(),
            version_id: Some("12".into()),
            pretty_name: None,
        }));
        assert_eq!(
            s.purl(&pkg("jq", "1.6-2.1", "jq", "1.6-2.1")),
            "pkg:deb/debian/jq@1.6-2.1?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            s.purl(&pkg("libc6", "2.36-9+deb12u4", "glibc", "2.36-9+deb12u4")),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
        );
        assert_eq!(
            s.purl(&pkg("libcurl4", "7.88.1-10+b1", "curl", "7.88.1-10")),
            "pkg:deb/debian/libcurl4@7.88.1-10%2Bb1?arch=amd64&distro=debian-12&upstream=curl%407.88.1-10"
        );
        assert_eq!(
            sbom(None).purl(&pkg("attr", "1:2.4.47-2", "attr", "1:2.4.47-2")),
            "pkg:deb/debian/attr@1:2.4.47-2?arch=amd64"
        );
    }

    #[test]
    fn purl_escapes_round_trip() {
        for s in ["1:2.4+b1~rc", "glibc@2.36", "a b%c"] {
            assert_eq!(purl_decode(&purl_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(purl_decode("%2"), None);
    }
}
