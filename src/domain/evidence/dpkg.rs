//! What a Debian or Ubuntu image's own files say about it, parsed from text:
//! dpkg's database (`/var/lib/dpkg/status`), a package's machine-readable
//! `copyright` file (DEP-5) and `/etc/os-release`. Reading the files is the
//! local provider's job (`providers/local/inventory.rs`).

use thiserror::Error;

use super::sbom::{OsRelease, Package, PackageManager};

/// A dpkg status database that cannot be read as one.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("dpkg status, line {line}: the installed package {package:?} has no {field} field")]
    MissingField {
        line: usize,
        package: String,
        field: &'static str,
    },
    #[error("dpkg status, line {line}: a stanza without a Package field")]
    NoPackage { line: usize },
    #[error("dpkg status, line {line}: a continuation line before any field")]
    StrayContinuation { line: usize },
    #[error("dpkg status, line {line}: expected `Field: value`, found {text:?}")]
    NotAField { line: usize, text: String },
}

/// One deb822 paragraph: its fields in order (name, value with continuation
/// lines joined by `\n`) and the line it starts on (1-based).
struct Paragraph<'a> {
    line: usize,
    fields: Vec<(&'a str, String)>,
}

impl Paragraph<'_> {
    /// Field names are case-insensitive in deb822.
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first line of a field: for `License:` the short name, before
    /// the license text.
    fn first_line(&self, name: &str) -> Option<&str> {
        self.get(name)
            .map(|v| v.lines().next().unwrap_or("").trim())
    }
}

/// Splits deb822 text (control files, dpkg's status, DEP-5) into
/// paragraphs. `#` comment lines are skipped, as dpkg does.
fn paragraphs(text: &str) -> Result<Vec<Paragraph<'_>>, StatusError> {
    let mut out = Vec::new();
    let mut cur: Option<Paragraph> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            out.extend(cur.take());
            continue;
        }
        if raw.starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            let Some((_, value)) = cur.as_mut().and_then(|p| p.fields.last_mut()) else {
                return Err(StatusError::StrayContinuation { line });
            };
            value.push('\n');
            value.push_str(raw.trim());
            continue;
        }
        let Some((name, value)) = raw.split_once(':') else {
            return Err(StatusError::NotAField {
                line,
                text: raw.chars().take(80).collect(),
            });
        };
        cur.get_or_insert_with(|| Paragraph {
            line,
            fields: Vec::new(),
        })
        .fields
        .push((name.trim(), value.trim().to_string()));
    }
    out.extend(cur);
    Ok(out)
}

/// The packages dpkg's status database says are installed, sorted by
/// (name, arch). A package counts when its state (the third word of
/// `Status:`) is `installed`, whatever its selection: `install ok installed`
/// and also `hold ok installed` (a held package is on the disk all the
/// same); `deinstall ok config-files`, `purge ok not-installed` and
/// half-installed ones do not. The license is left to the copyright file.
pub fn parse_status(text: &str) -> Result<Vec<Package>, StatusError> {
    let mut packages = Vec::new();
    for p in paragraphs(text)? {
        let installed = p
            .get("Status")
            .and_then(|s| s.split_whitespace().nth(2))
            .is_some_and(|state| state == "installed");
        if !installed {
            continue;
        }
        let name = p
            .get("Package")
            .ok_or(StatusError::NoPackage { line: p.line })?
            .to_string();
        let field = |field: &'static str| {
            p.get(field)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| StatusError::MissingField {
                    line: p.line,
                    package: name.clone(),
                    field,
                })
        };
        let version = field("Version")?.to_string();
        let arch = field("Architecture")?.to_string();
        // `Source: glibc (2.36-9+deb12u4)` when the versions differ (binNMUs),
        // `Source: glibc` when they do not, nothing when the names agree.
        let (source, source_version) = match p.get("Source").map(str::trim) {
            None | Some("") => (name.clone(), version.clone()),
            Some(s) => match s.split_once('(') {
                Some((src, ver)) => (
                    src.trim().to_string(),
                    ver.trim_end_matches(')').trim().to_string(),
                ),
                None => (s.to_string(), version.clone()),
            },
        };
        packages.push(Package {
            name,
            version,
            arch,
            source,
            source_version,
            license: None,
            manager: PackageManager::Dpkg,
        });
    }
    packages.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    Ok(packages)
}

/// The SPDX license expression a DEP-5 machine-readable copyright file
/// declares: the `License:` short names of its `Files:` paragraphs, each
/// distinct term once, joined with AND. `None` when the file is not
/// machine-readable (no DEP-5 `Format:` header), names no license, or is
/// not deb822 at all: that is SPDX's NOASSERTION, not a guess.
pub fn parse_copyright(text: &str) -> Option<String> {
    let paras = paragraphs(text).ok()?;
    let format = paras.first()?.get("Format")?;
    // The released URL (http or https), and the draft's URL that older
    // packages still carry.
    if !(format.contains("copyright-format/1.0") || format.contains("dep.debian.net/deps/dep5")) {
        return None;
    }
    let mut terms: Vec<String> = Vec::new();
    for p in paras.iter().filter(|p| p.get("Files").is_some()) {
        let Some(short) = p.first_line("License").filter(|s| !s.is_empty()) else {
            continue;
        };
        for term in dep5_terms(short) {
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
    }
    match terms.len() {
        0 => None,
        1 => Some(strip_parens(&terms[0]).to_string()),
        _ => Some(terms.join(" AND ")),
    }
}

fn strip_parens(t: &str) -> &str {
    t.strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(t)
}

/// One DEP-5 license line as the terms of an SPDX AND. DEP-5 writes
/// `GPL-2+ or Artistic-2.0, and BSD-3-clause`: a comma separates groups
/// that all apply; within a group `and` binds tighter than `or`, as in
/// SPDX; `X with Y exception` attaches an exception.
fn dep5_terms(line: &str) -> Vec<String> {
    let mut terms = Vec::new();
    for group in line.split(',') {
        let words: Vec<&str> = group.split_whitespace().collect();
        let mut alternatives: Vec<Vec<String>> = vec![Vec::new()];
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            if w.eq_ignore_ascii_case("or") || w == "|" {
                alternatives.push(Vec::new());
            } else if w.eq_ignore_ascii_case("and") || w == "&" {
                // The next name joins the current alternative.
            } else if w.eq_ignore_ascii_case("with") {
                // `with NAME exception`: up to the word "exception".
                let end = words[i + 1..]
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case("exception"))
                    .map_or(words.len(), |p| i + 1 + p);
                let exception = words[i + 1..end].join("-");
                if let Some(last) = alternatives.last_mut().and_then(|a| a.pop()) {
                    let combined = with_exception(&last, &exception);
                    alternatives.last_mut().expect("one").push(combined);
                }
                i = end + 1;
                continue;
            } else {
                alternatives.last_mut().expect("one").push(spdx_id(w));
            }
            i += 1;
        }
        alternatives.retain(|a| !a.is_empty());
        match alternatives.len() {
            0 => {}
            1 => terms.extend(alternatives.remove(0)),
            _ => {
                let ors: Vec<String> = alternatives
                    .into_iter()
                    .map(|a| match a.len() {
                        1 => a.into_iter().next().expect("one"),
                        _ => format!("({})", a.join(" AND ")),
                    })
                    .collect();
                terms.push(format!("({})", ors.join(" OR ")));
            }
        }
    }
    terms
}

/// `GPL-2.0-or-later` with `OpenSSL` → the SPDX exception when the list
/// has one by that name (`Autoconf` → `Autoconf-exception-3.0` is not
/// guessed), else the whole as one LicenseRef: SPDX 2.3 has no reference
/// form for an exception off its list.
fn with_exception(license: &str, exception: &str) -> String {
    let candidate = format!("{exception}-exception");
    for name in [exception, candidate.as_str()] {
        if let Some(e) = spdx::exception_id(name) {
            if !license.starts_with("LicenseRef-") {
                return format!("{license} WITH {}", e.name);
            }
        }
    }
    let base = license.strip_prefix("LicenseRef-").unwrap_or(license);
    license_ref(&format!("{base}-with-{exception}-exception"))
}

/// A Debian short license name as an SPDX license id. Debian's names
/// differ from SPDX's for the GNU family (`GPL-2+`), the BSDs' case and a
/// few others; any other name stands when the SPDX list has it exactly,
/// and becomes `LicenseRef-<name>` when it does not.
pub fn spdx_id(debian: &str) -> String {
    let (base, or_later) = match debian.strip_suffix('+') {
        Some(b) => (b, true),
        None => (debian, false),
    };
    // GNU licenses: Debian's `GPL-2`, `LGPL-2.1+`, `GFDL-1.3`.
    for family in ["GPL", "LGPL", "AGPL", "GFDL"] {
        if let Some(v) = base
            .strip_prefix(family)
            .and_then(|r| r.strip_prefix('-'))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        {
            let v = if v.contains('.') {
                v.to_string()
            } else {
                format!("{v}.0")
            };
            if let Some(id) = spdx::gnu_license_id(&format!("{family}-{v}"), or_later) {
                return id.name.to_string();
            }
        }
    }
    let mapped = match base {
        "Expat" => Some("MIT"),
        "BSD-2-clause" => Some("BSD-2-Clause"),
        "BSD-3-clause" => Some("BSD-3-Clause"),
        "BSD-4-clause" => Some("BSD-4-Clause"),
        "PSF-2" => Some("PSF-2.0"),
        "Zope-2.1" => Some("ZPL-2.1"),
        "SIL-OFL-1.1" => Some("OFL-1.1"),
        "zlib" => Some("Zlib"),
        _ => None,
    };
    let name = mapped.unwrap_or(base);
    match spdx::license_id(name) {
        // `license_id` ignores a trailing `+`: ask with the exact name.
        Some(id) if id.name == name && !id.is_deprecated() => {
            if or_later && !id.is_gnu() {
                format!("{}+", id.name)
            } else {
                id.name.to_string()
            }
        }
        Some(_) | None => license_ref(debian),
    }
}

/// `LicenseRef-` and the name in the characters SPDX allows there
/// (letters, digits, `.` and `-`); `+` reads as `-or-later`.
fn license_ref(name: &str) -> String {
    let safe: String = name
        .replace('+', "-or-later")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("LicenseRef-{safe}")
}

/// `/etc/os-release` (or `/usr/lib/os-release`): shell-style `KEY=value`
/// lines, values optionally quoted. `None` without an `ID`.
pub fn parse_os_release(text: &str) -> Option<OsRelease> {
    let mut id = None;
    let mut version_id = None;
    let mut pretty_name = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        let slot = match key.trim() {
            "ID" => &mut id,
            "VERSION_ID" => &mut version_id,
            "PRETTY_NAME" => &mut pretty_name,
            _ => continue,
        };
        *slot = Some(value).filter(|v| !v.is_empty());
    }
    Some(OsRelease {
        id: id?,
        version_id,
        pretty_name,
    })
}

/// os-release(5): a value may be in double or single quotes, and inside
/// double quotes `\"`, `\\`, `\$` and `` \` `` are escapes.
fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out
    } else if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: jq
Status: install ok installed
Priority: optional
Section: utils
Installed-Size: 102
Maintainer: ChangZhuo Chen <czchen@debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 1.6-2.1
Depends: libc6 (>= 2.4), libjq1 (= 1.6-2.1)
Description: lightweight and flexible command-line JSON processor
 jq is like sed for JSON data
 .
 It is written in portable C.
Homepage: https://github.com/stedolan/jq

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4

Package: oldthing
Status: deinstall ok config-files
Architecture: amd64
Version: 0.9-1

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4

Package: libcurl4
Status: hold ok installed
Architecture: amd64
Source: curl (7.88.1-10+deb12u5)
Version: 7.88.1-10+deb12u5+b1

Package: gone
Status: purge ok not-installed
Architecture: amd64
";

    #[test]
    fn installed_packages_are_read_sorted_with_their_sources() {
        let pkgs = parse_status(STATUS).unwrap();
        let keys: Vec<(&str, &str)> = pkgs
            .iter()
            .map(|p| (p.name.as_str(), p.arch.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("jq", "amd64"),
                ("libc6", "amd64"),
                ("libc6", "i386"),
                ("libcurl4", "amd64")
            ]
        );
        let jq = &pkgs[0];
        assert_eq!(
            (
                jq.version.as_str(),
                jq.source.as_str(),
                jq.source_version.as_str()
            ),
            ("1.6-2.1", "jq", "1.6-2.1")
        );
        assert_eq!(
            (pkgs[1].source.as_str(), pkgs[1].source_version.as_str()),
            ("glibc", "2.36-9+deb12u4")
        );
        let curl = &pkgs[3];
        assert_eq!(curl.version, "7.88.1-10+deb12u5+b1");
        assert_eq!(
            (curl.source.as_str(), curl.source_version.as_str()),
            ("curl", "7.88.1-10+deb12u5")
        );
        assert!(pkgs.iter().all(|p| p.license.is_none()));
    }

    #[test]
    fn an_installed_package_without_a_version_is_an_error_naming_it() {
        let err = parse_status("Package: x\nStatus: install ok installed\nArchitecture: all\n")
            .unwrap_err();
        assert_eq!(
            err,
            StatusError::MissingField {
                line: 1,
                package: "x".into(),
                field: "Version"
            }
        );
        assert!(err.to_string().contains("has no Version field"));
        assert!(matches!(
            parse_status(" stray\n"),
            Err(StatusError::StrayContinuation { line: 1 })
        ));
    }

    #[test]
    fn an_empty_database_has_no_packages() {
        assert_eq!(parse_status("").unwrap(), []);
    }

    const DEP5: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: curl
Source: https://curl.se/

Files: *
Copyright: 1996-2023, Daniel Stenberg
License: curl

Files: lib/foo.c
Copyright: 2001 Someone
License: BSD-3-clause

Files: debian/*
Copyright: 2010 Debian
License: GPL-2+

Files: lib/bar.c
Copyright: 2001 Someone else
License: BSD-3-clause

Files: tests/*
Copyright: none
License: Expat or GPL-2+

License: curl
 COPYRIGHT AND PERMISSION NOTICE
 .
 Permission to use ...

License: GPL-2+
 This program is free software
";

    #[test]
    fn dep5_licenses_are_spdx_ids_once_each_joined_with_and() {
        assert_eq!(
            parse_copyright(DEP5).as_deref(),
            Some("curl AND BSD-3-Clause AND GPL-2.0-or-later AND (MIT OR GPL-2.0-or-later)")
        );
    }

    #[test]
    fn a_single_license_stands_alone() {
        let text = "Format: http://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
                    Files: *\nCopyright: x\nLicense: GPL-2+ or Artistic\n";
        assert_eq!(
            parse_copyright(text).as_deref(),
            Some("GPL-2.0-or-later OR LicenseRef-Artistic")
        );
    }

    #[test]
    fn a_free_text_copyright_file_is_no_assertion() {
        let text = "This package was debianized by Someone.\n\nIt is licensed under the GPL.\n";
        assert_eq!(parse_copyright(text), None);
        // Machine-readable but naming no license: still no assertion.
        let bare = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n";
        assert_eq!(parse_copyright(bare), None);
    }

    #[test]
    fn debian_short_names_map_to_spdx_ids() {
        for (debian, spdx) in [
            ("GPL-2", "GPL-2.0-only"),
            ("GPL-2+", "GPL-2.0-or-later"),
            ("GPL-3+", "GPL-3.0-or-later"),
            ("LGPL-2.1", "LGPL-2.1-only"),
            ("LGPL-2.1+", "LGPL-2.1-or-later"),
            ("LGPL-3+", "LGPL-3.0-or-later"),
            ("AGPL-3", "AGPL-3.0-only"),
            ("GFDL-1.3+", "GFDL-1.3-or-later"),
            ("BSD-2-clause", "BSD-2-Clause"),
            ("BSD-3-clause", "BSD-3-Clause"),
            ("Expat", "MIT"),
            ("Apache-2.0", "Apache-2.0"),
            ("MPL-2.0", "MPL-2.0"),
            ("Zlib", "Zlib"),
            ("ISC", "ISC"),
            ("CC0-1.0", "CC0-1.0"),
            ("Apache-2.0+", "Apache-2.0+"),
            ("public-domain", "LicenseRef-public-domain"),
            ("GPL", "LicenseRef-GPL"),
            ("other", "LicenseRef-other"),
            ("Perl", "LicenseRef-Perl"),
        ] {
            assert_eq!(spdx_id(debian), spdx, "{debian}");
        }
    }

    #[test]
    fn exceptions_use_spdx_names_when_listed() {
        assert_eq!(
            dep5_terms("GPL-2+ with Classpath-exception-2.0 exception"),
            ["GPL-2.0-or-later WITH Classpath-exception-2.0"]
        );
        assert_eq!(
            dep5_terms("GPL-3+ with Autoconf-data exception"),
            ["LicenseRef-GPL-3.0-or-later-with-Autoconf-data-exception"]
        );
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                    VERSION_ID=\"12\"\nID=debian\n# a comment\nHOME_URL='https://www.debian.org/'\n";
        assert_eq!(
            parse_os_release(text),
            Some(OsRelease {
                id: "debian".into(),
                version_id: Some("12".into()),
                pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            })
        );
        let sid = "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nID=debian\n";
        assert_eq!(parse_os_release(sid).unwrap().version_id, None);
        assert_eq!(parse_os_release("NAME=x\n"), None);
    }
}
