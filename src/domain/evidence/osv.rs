//! Vulnerability advisories in the OSV format (<https://ossf.github.io/osv-schema/>)
//! and a [`Feed`] of them: one `.json` advisory, a JSON array of advisories,
//! a directory of `*.json`, or a `.zip` of them (OSV publishes
//! `<ecosystem>/all.zip`).
//!
//! Typed serde structs of the fields kiln reads, not the `osv` crate: that
//! crate's ecosystem, reference and credit types are closed enums, so a
//! record naming an ecosystem or reference type added to the schema after its
//! release (the schema lists `CleanStart`, `FreeBSD`, `Root`, … that it does
//! not know) fails to parse, and one such record would make a whole
//! `all.zip` unreadable. Here strings stay strings, unknown fields are
//! ignored, and only the structure kiln relies on is checked.
//!
//! Parsing is pure (bytes in); [`load`] is the thin function that reads disk.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::path::Path;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// One OSV record, the fields kiln uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub aliases: Vec<String>,
    /// Upstream ids (the CVEs a distribution's advisory is about); Debian's
    /// `DEBIAN-CVE-…` records name their CVE here rather than in `aliases`.
    #[serde(default, deserialize_with = "nullable")]
    pub upstream: Vec<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default, deserialize_with = "instant")]
    pub published: Option<DateTime<Utc>>,
    pub modified: DateTime<Utc>,
    #[serde(default, deserialize_with = "instant")]
    pub withdrawn: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "nullable")]
    pub affected: Vec<Affected>,
    #[serde(default, deserialize_with = "nullable")]
    pub severity: Vec<SeverityScore>,
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
}

/// One affected package of an advisory and the versions of it affected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    /// Optional in the schema (an advisory may describe a service); such an
    /// entry matches no package.
    #[serde(default)]
    pub package: Option<AffectedPackage>,
    /// Per-package severity; the schema forbids the top-level one then.
    #[serde(default, deserialize_with = "nullable")]
    pub severity: Vec<SeverityScore>,
    #[serde(default, deserialize_with = "nullable")]
    pub ranges: Vec<Range>,
    /// Affected versions listed one by one.
    #[serde(default, deserialize_with = "nullable")]
    pub versions: Vec<String>,
    /// Debian puts its `urgency` here.
    #[serde(default)]
    pub ecosystem_specific: Option<serde_json::Value>,
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedPackage {
    /// `Debian:12`, `Ubuntu:22.04:LTS`, `Ubuntu:Pro:18.04:LTS`, `PyPI`, …
    pub ecosystem: String,
    /// For Debian and Ubuntu, the *source* package.
    pub name: String,
    #[serde(default)]
    pub purl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: RangeType,
    #[serde(default)]
    pub repo: Option<String>,
    pub events: Vec<Event>,
}

/// How a range's versions are ordered. Only `ECOSYSTEM` ranges are compared
/// by kiln (Debian and Ubuntu use them); `GIT` needs the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RangeType {
    Ecosystem,
    Semver,
    Git,
    /// A type added to the schema later: kept, and never matched.
    Other(String),
}

impl From<String> for RangeType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "ECOSYSTEM" => RangeType::Ecosystem,
            "SEMVER" => RangeType::Semver,
            "GIT" => RangeType::Git,
            _ => RangeType::Other(s),
        }
    }
}

impl From<RangeType> for String {
    fn from(t: RangeType) -> Self {
        match t {
            RangeType::Ecosystem => "ECOSYSTEM".into(),
            RangeType::Semver => "SEMVER".into(),
            RangeType::Git => "GIT".into(),
            RangeType::Other(s) => s,
        }
    }
}

/// One status change on a range's timeline. The schema allows exactly one
/// of the four keys in an event object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEvent", into = "RawEvent")]
pub enum Event {
    /// `"0"` stands for a version before every other.
    Introduced(String),
    Fixed(String),
    LastAffected(String),
    Limit(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    introduced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_affected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
}

impl TryFrom<RawEvent> for Event {
    type Error = String;
    fn try_from(raw: RawEvent) -> Result<Self, String> {
        match (raw.introduced, raw.fixed, raw.last_affected, raw.limit) {
            (Some(v), None, None, None) => Ok(Event::Introduced(v)),
            (None, Some(v), None, None) => Ok(Event::Fixed(v)),
            (None, None, Some(v), None) => Ok(Event::LastAffected(v)),
            (None, None, None, Some(v)) => Ok(Event::Limit(v)),
            _ => Err("expected exactly one of `introduced`, `fixed`, `last_affected`, `limit` in an event".into()),
        }
    }
}

impl From<Event> for RawEvent {
    fn from(e: Event) -> Self {
        match e {
            Event::Introduced(v) => RawEvent {
                introduced: Some(v),
                ..RawEvent::default()
            },
            Event::Fixed(v) => RawEvent {
                fixed: Some(v),
                ..RawEvent::default()
            },
            Event::LastAffected(v) => RawEvent {
                last_affected: Some(v),
                ..RawEvent::default()
            },
            Event::Limit(v) => RawEvent {
                limit: Some(v),
                ..RawEvent::default()
            },
        }
    }
}

/// A `severity[]` entry: `CVSS_V3`, `CVSS_V4`, `Ubuntu`, … and its score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverityScore {
    /// Absent in some records; then empty, and only a CVSS vector in the
    /// score is recognised.
    #[serde(rename = "type", default)]
    pub kind: String,
    pub score: String,
}

/// `null` reads as the empty list, as an absent key does (some exporters write it).
fn nullable<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// An RFC 3339 time, where Debian's converter writes the zero time of the
/// language it is written in (`0001-01-01T00:00:00Z`) for "no time": that
/// reads as absent, or every Debian advisory would look withdrawn.
fn instant<'de, D>(d: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<DateTime<Utc>>::deserialize(d)?.filter(|t| t.year() > 1))
}

/// A file (or an entry of a zip) that could not be read as OSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedError {
    /// The file, as named to [`Feed::parse_file`] or found by [`load`].
    pub file: String,
    /// The entry inside a zip.
    pub entry: Option<String>,
    /// The JSON path of the failing field (`affected[0].ranges[0].events[1]`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OSV feed `{}`", self.file)?;
        if let Some(e) = &self.entry {
            write!(f, ", entry `{e}`")?;
        }
        if let Some(p) = &self.field {
            write!(f, ", field `{p}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FeedError {}

impl FeedError {
    fn new(file: &str, entry: Option<&str>, message: impl Into<String>) -> Self {
        FeedError {
            file: file.to_string(),
            entry: entry.map(str::to_string),
            field: None,
            message: message.into(),
        }
    }
}

/// A set of advisories, withdrawn ones left out, one per id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Feed {
    /// Keyed by id: one order whatever order the files came in.
    advisories: BTreeMap<String, Advisory>,
    /// Withdrawn ids and the `modified` time of their withdrawal: a
    /// withdrawal read in one file removes the same record read in another.
    withdrawn: BTreeMap<String, DateTime<Utc>>,
}

/// A zip's local file header: what `all.zip` starts with, whatever it is named.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

impl Feed {
    /// Reads one file's content: a zip of `*.json` (by its content, so a
    /// download saved under any name reads), else one advisory or an array
    /// of them. `name` is for errors.
    pub fn parse_file(name: &str, bytes: &[u8]) -> Result<Feed, FeedError> {
        let mut feed = Feed::default();
        if bytes.starts_with(ZIP_MAGIC) {
            feed.add_zip(name, bytes)?;
        } else {
            feed.add_json(name, None, bytes)?;
        }
        Ok(feed)
    }

    /// Builds a feed from records, leaving withdrawn ones out.
    pub fn from_advisories(advisories: impl IntoIterator<Item = Advisory>) -> Feed {
        let mut feed = Feed::default();
        advisories.into_iter().for_each(|a| feed.insert(a));
        feed
    }

    /// Adds another feed's advisories (a directory's files one by one).
    pub fn merge(&mut self, other: Feed) {
        for (id, at) in other.withdrawn {
            self.withdraw(id, at);
        }
        other.advisories.into_values().for_each(|a| self.insert(a));
    }

    fn withdraw(&mut self, id: String, at: DateTime<Utc>) {
        if self
            .advisories
            .get(&id)
            .is_some_and(|old| old.modified <= at)
        {
            self.advisories.remove(&id);
        }
        let latest = self.withdrawn.entry(id).or_insert(at);
        *latest = (*latest).max(at);
    }

    fn insert(&mut self, a: Advisory) {
        if a.withdrawn.is_some() {
            return self.withdraw(a.id, a.modified);
        }
        // Re-published after its withdrawal: the newer record counts.
        if self
            .withdrawn
            .get(&a.id)
            .is_some_and(|at| *at >= a.modified)
        {
            return;
        }
        // The same id twice (a directory and a zip of it): the newer record.
        match self.advisories.get(&a.id) {
            Some(old) if old.modified >= a.modified => {}
            Some(_) | None => {
                self.advisories.insert(a.id.clone(), a);
            }
        }
    }

    fn add_json(&mut self, file: &str, entry: Option<&str>, bytes: &[u8]) -> Result<(), FeedError> {
        let located = |e: serde_path_to_error::Error<serde_json::Error>| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            FeedError {
                file: file.to_string(),
                entry: entry.map(str::to_string),
                field: (path != ".").then_some(path),
                message: inner.to_string(),
            }
        };
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
        match first {
            Some(b'[') => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let list: Vec<Advisory> =
                    serde_path_to_error::deserialize(&mut de).map_err(located)?;
                list.into_iter().for_each(|a| self.insert(a));
            }
            Some(b'{') => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let one: Advisory = serde_path_to_error::deserialize(&mut de).map_err(located)?;
                self.insert(one);
            }
            Some(_) | None => {
                return Err(FeedError::new(
                    file,
                    entry,
                    "expected an OSV advisory (a JSON object), a JSON array of them, or a zip of `*.json`",
                ))
            }
        }
        Ok(())
    }

    fn add_zip(&mut self, file: &str, bytes: &[u8]) -> Result<(), FeedError> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| FeedError::new(file, None, format!("not a readable zip: {e}")))?;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| FeedError::new(file, None, format!("zip entry {i}: {e}")))?;
            let name = entry.name().to_string();
            if entry.is_dir() || !name.ends_with(".json") {
                continue;
            }
            let mut content = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut content)
                .map_err(|e| FeedError::new(file, Some(&name), format!("cannot unpack: {e}")))?;
            self.add_json(file, Some(&name), &content)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.advisories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.advisories.is_empty()
    }

    /// Withdrawn advisories that were read and left out.
    pub fn withdrawn(&self) -> usize {
        self.withdrawn.len()
    }

    /// The advisories, ordered by id.
    pub fn advisories(&self) -> impl Iterator<Item = &Advisory> {
        self.advisories.values()
    }

    pub fn get(&self, id: &str) -> Option<&Advisory> {
        self.advisories.get(id)
    }

    /// Lowercase hex sha256 over each advisory's id and `modified` time: the
    /// same set gives the same digest whatever order or files it came in, and
    /// an advisory added, changed (OSV bumps `modified`) or withdrawn changes it.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for a in self.advisories.values() {
            h.update(a.id.as_bytes());
            h.update(b"\0");
            h.update(
                a.modified
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true)
                    .as_bytes(),
            );
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }
}

/// Reads a feed from disk: one file (`.json` or `.zip`), or a directory whose
/// `*.json` and `*.zip` files (not its subdirectories) are read in name order.
pub fn load(path: &Path) -> Result<Feed, FeedError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| FeedError::new(&shown, None, format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        let bytes = std::fs::read(path)
            .map_err(|e| FeedError::new(&shown, None, format!("cannot read: {e}")))?;
        return Feed::parse_file(&shown, &bytes);
    }
    let mut files = Vec::new();
    let listing = std::fs::read_dir(path)
        .map_err(|e| FeedError::new(&shown, None, format!("cannot list: {e}")))?;
    for item in listing {
        let item = item.map_err(|e| FeedError::new(&shown, None, format!("cannot list: {e}")))?;
        let p = item.path();
        let wanted = p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| x == "json" || x == "zip");
        if wanted && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    let mut feed = Feed::default();
    for p in files {
        let name = p.display().to_string();
        let bytes = std::fs::read(&p)
            .map_err(|e| FeedError::new(&name, None, format!("cannot read: {e}")))?;
        feed.merge(Feed::parse_file(&name, &bytes)?);
    }
    Ok(feed)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The shape of a Debian security tracker record as OSV exports it.
    const DEBIAN: &str = r#"{
      "schema_version": "1.7.0",
      "id": "DEBIAN-CVE-2099-0101",
      "published": "2026-10-01T12:00:00Z",
      "modified": "2026-10-02T08:30:00.123456789Z",
      "upstream": ["CVE-2099-0101"],
      "details": "not read by kiln",
      "affected": [{
        "package": {"name": "jq", "ecosystem": "Debian:12", "purl": "pkg:deb/debian/jq?arch=source"},
        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.6-2.1+deb12u9"}]}],
        "versions": ["1.6-2.1", "1.6-2.1+deb12u1"],
        "ecosystem_specific": {"urgency": "medium"},
        "database_specific": {"source": "https://example.invalid/DEBIAN-CVE-2099-0101.json"}
      }],
      "references": [{"type": "ADVISORY", "url": "https://example.invalid/"}],
      "futureField": {"ignored": true}
    }"#;

    fn record(id: &str, modified: &str) -> String {
        format!(r#"{{"id": "{id}", "modified": "{modified}", "affected": []}}"#)
    }

    fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(body.as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_debian_record_reads_with_its_ranges_versions_and_urgency() {
        let feed = Feed::parse_file("one.json", DEBIAN.as_bytes()).unwrap();
        assert_eq!(feed.len(), 1);
        let a = feed.get("DEBIAN-CVE-2099-0101").unwrap();
        assert_eq!(a.upstream, ["CVE-2099-0101"]);
        let affected = &a.affected[0];
        let pkg = affected.package.as_ref().unwrap();
        assert_eq!(
            (pkg.ecosystem.as_str(), pkg.name.as_str()),
            ("Debian:12", "jq")
        );
        assert_eq!(affected.ranges[0].kind, RangeType::Ecosystem);
        assert_eq!(
            affected.ranges[0].events,
            [
                Event::Introduced("0".into()),
                Event::Fixed("1.6-2.1+deb12u9".into())
            ]
        );
        assert_eq!(affected.versions.len(), 2);
        assert_eq!(
            affected.ecosystem_specific.as_ref().unwrap()["urgency"],
            "medium"
        );
    }

    #[test]
    fn an_array_of_advisories_reads_as_a_feed() {
        let text = format!(
            "[{}, {}]",
            record("DSA-1-1", "2026-01-01T00:00:00Z"),
            record("DSA-2-1", "2026-01-01T00:00:00Z")
        );
        assert_eq!(
            Feed::parse_file("list.json", text.as_bytes())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_zip_of_json_files_reads_whatever_its_name_and_skips_other_entries() {
        let bytes = zip_of(&[
            ("DEBIAN-CVE-2099-0101.json", DEBIAN),
            ("DSA-2-1.json", &record("DSA-2-1", "2026-01-01T00:00:00Z")),
            ("README", "not an advisory"),
        ]);
        let feed = Feed::parse_file("download.tmp", &bytes).unwrap();
        assert_eq!(feed.len(), 2);
    }

    #[test]
    fn withdrawn_advisories_are_left_out_and_counted() {
        let withdrawn = r#"{"id": "DSA-3-1", "modified": "2026-02-01T00:00:00Z",
            "withdrawn": "2026-02-01T00:00:00Z", "affected": []}"#;
        let feed = Feed::parse_file("w.json", withdrawn.as_bytes()).unwrap();
        assert!(feed.is_empty());
        assert_eq!(feed.withdrawn(), 1);
    }

    #[test]
    fn the_zero_time_debian_writes_is_no_time_not_a_withdrawal() {
        let text = r#"{"id": "DEBIAN-CVE-2099-0102", "modified": "2026-02-01T00:00:00Z",
            "published": "0001-01-01T00:00:00Z", "withdrawn": "0001-01-01T00:00:00Z"}"#;
        let feed = Feed::parse_file("z.json", text.as_bytes()).unwrap();
        let a = feed.get("DEBIAN-CVE-2099-0102").unwrap();
        assert_eq!((a.published, a.withdrawn), (None, None));
    }

    #[test]
    fn a_later_withdrawal_removes_what_an_earlier_file_published() {
        let mut feed = Feed::parse_file(
            "a.json",
            record("DSA-4-1", "2026-01-01T00:00:00Z").as_bytes(),
        )
        .unwrap();
        let w = r#"{"id": "DSA-4-1", "modified": "2026-03-01T00:00:00Z", "withdrawn": "2026-03-01T00:00:00Z"}"#;
        feed.merge(Feed::parse_file("b.json", w.as_bytes()).unwrap());
        assert!(feed.is_empty());
    }

    #[test]
    fn the_digest_ignores_order_and_changes_with_a_modification() {
        let a = record("DSA-1-1", "2026-01-01T00:00:00Z");
        let b = record("DSA-2-1", "2026-01-01T00:00:00Z");
        let one = Feed::parse_file("x.json", format!("[{a}, {b}]").as_bytes()).unwrap();
        let other = Feed::parse_file("y.zip", &zip_of(&[("2.json", &b), ("1.json", &a)])).unwrap();
        assert_eq!(one.digest(), other.digest());
        let changed = record("DSA-2-1", "2026-01-02T00:00:00Z");
        let newer = Feed::parse_file("z.json", format!("[{a}, {changed}]").as_bytes()).unwrap();
        assert_ne!(one.digest(), newer.digest());
        assert_eq!(one.digest().len(), 64);
    }

    #[test]
    fn the_newer_of_two_records_with_one_id_is_kept() {
        let old = record("DSA-1-1", "2026-01-01T00:00:00Z");
        let new = r#"{"id": "DSA-1-1", "modified": "2026-05-01T00:00:00Z", "summary": "newer"}"#;
        let feed = Feed::parse_file("x.json", format!("[{new}, {old}]").as_bytes()).unwrap();
        assert_eq!(
            feed.get("DSA-1-1").unwrap().summary.as_deref(),
            Some("newer")
        );
    }

    #[test]
    fn an_error_names_the_file_the_zip_entry_and_the_field() {
        let bad = DEBIAN.replace(
            r#"{"fixed": "1.6-2.1+deb12u9"}"#,
            r#"{"fixed": "1.6-2.1+deb12u9", "introduced": "1.5"}"#,
        );
        let bytes = zip_of(&[
            ("ok.json", &record("DSA-1-1", "2026-01-01T00:00:00Z")),
            ("bad.json", &bad),
        ]);
        let e = Feed::parse_file("all.zip", &bytes).unwrap_err();
        assert_eq!(e.file, "all.zip");
        assert_eq!(e.entry.as_deref(), Some("bad.json"));
        assert_eq!(e.field.as_deref(), Some("affected[0].ranges[0].events[1]"));
        assert!(e.message.contains("exactly one of"), "{e}");
        let shown = e.to_string();
        assert!(
            shown.contains("all.zip") && shown.contains("bad.json"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_modified_time_is_an_error_naming_it() {
        let e = Feed::parse_file("m.json", br#"{"id": "DSA-1-1"}"#).unwrap_err();
        assert!(e.message.contains("modified"), "{e}");
        assert_eq!(e.entry, None);
    }

    #[test]
    fn bytes_that_are_neither_json_nor_zip_are_refused() {
        let e = Feed::parse_file("page.html", b"<html>502 Bad Gateway</html>").unwrap_err();
        assert!(e.message.contains("expected an OSV advisory"), "{e}");
    }

    #[test]
    fn a_directory_reads_its_json_and_zip_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), DEBIAN).unwrap();
        std::fs::write(
            dir.path().join("b.zip"),
            zip_of(&[("DSA-2-1.json", &record("DSA-2-1", "2026-01-01T00:00:00Z"))]),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not read").unwrap();
        let feed = load(dir.path()).unwrap();
        assert_eq!(feed.len(), 2);
        let e = load(&dir.path().join("absent.json")).unwrap_err();
        assert!(e.file.ends_with("absent.json"), "{e}");
    }
}
