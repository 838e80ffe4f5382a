//! The SBOM as an SPDX 2.3 JSON document, and back.
//!
//! Typed serde structs rather than the `spdx-rs` crate: spdx-rs models SPDX
//! 2.2.1 (no `primaryPackagePurpose`, and it serializes fields of its own),
//! and kiln writes a small, fixed subset.
//!
//! The document: `SPDXRef-DOCUMENT` DESCRIBES one package for the image
//! (named after the subject), which CONTAINS the operating system
//! (`primaryPackagePurpose: OPERATING-SYSTEM`), every installed package
//! (with its purl) and every placed file. Placed files are packages with
//! purpose `FILE` rather than SPDX File elements, because SPDX 2.3 requires
//! a SHA1 checksum on every File (clause 8.4, and the SPDX tools reject one
//! without) and kiln records only sha256.
//!
//! Deterministic: the same [`Sbom`] gives the same bytes. SPDXIDs are made
//! from names (with a short hash when a name needs escaping), and the
//! `documentNamespace` is the subject plus the sha256 of the document as it
//! reads without its namespace.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::sbom::{purl_decode, purl_encode, OsRelease, Package, PackageManager, PlacedFile, Sbom};

const NOASSERTION: &str = "NOASSERTION";
const IMAGE_ID: &str = "SPDXRef-Image";
const OS_ID: &str = "SPDXRef-OperatingSystem";
/// Where kiln's document namespaces live (a name, never fetched).
const NAMESPACE_BASE: &str = "https://kiln.dev/spdx/";

/// A document that is not an SBOM kiln can read.
#[derive(Debug, Error)]
pub enum SpdxError {
    #[error("SPDX document: {0}")]
    Shape(String),
    #[error("SPDX document: spdxVersion is {found:?}; expected SPDX-2.3 (or SPDX-2.2)")]
    Version { found: String },
    #[error("SPDX document: creationInfo.created is {found:?}; expected YYYY-MM-DDThh:mm:ssZ")]
    Created { found: String },
    #[error("SPDX document: package {spdx_id}: purl {purl:?} {why}")]
    Purl {
        spdx_id: String,
        purl: String,
        why: &'static str,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: String,
    data_license: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    #[serde(default)]
    packages: Vec<SpdxPackage>,
    /// Only read: other tools' File elements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<SpdxFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicense>,
    #[serde(default)]
    relationships: Vec<Relationship>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    package_file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    supplier: Option<String>,
    #[serde(default = "noassertion")]
    download_location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files_analyzed: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    license_concluded: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    license_declared: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copyright_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
}

fn noassertion() -> String {
    NOASSERTION.to_string()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxFile {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    file_name: String,
    #[serde(default)]
    checksums: Vec<Checksum>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: String,
    checksum_value: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: String,
    reference_type: String,
    reference_locator: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicense {
    license_id: String,
    extracted_text: String,
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: String,
    related_spdx_element: String,
}

/// The SBOM as an SPDX 2.3 document.
pub fn to_spdx_json(sbom: &Sbom) -> serde_json::Value {
    let mut doc = document(sbom);
    // The namespace names this content: hash the document without it.
    let unnamed = serde_json::to_vec(&doc).expect("serializable");
    let digest = hex::encode(Sha256::digest(&unnamed));
    doc.document_namespace = format!("{NAMESPACE_BASE}{}-{digest}", purl_encode(&sbom.subject));
    serde_json::to_value(&doc).expect("serializable")
}

/// The bytes kiln stores and whose sha256 it tags: pretty JSON and a
/// trailing newline.
pub fn to_spdx_bytes(sbom: &Sbom) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(&to_spdx_json(sbom)).expect("serializable");
    bytes.push(b'\n');
    bytes
}

fn document(sbom: &Sbom) -> Document {
    let mut packages = vec![SpdxPackage {
        description: Some("The image this document describes".into()),
        primary_package_purpose: Some("OTHER".into()),
        ..bare_package(IMAGE_ID.into(), sbom.subject.clone())
    }];
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    if let Some(os) = &sbom.os {
        packages.push(SpdxPackage {
            version_info: os.version_id.clone(),
            description: os.pretty_name.clone(),
            primary_package_purpose: Some("OPERATING-SYSTEM".into()),
            ..bare_package(OS_ID.into(), os.id.clone())
        });
        relationships.push(relationship(IMAGE_ID, "CONTAINS", OS_ID));
    }
    let mut refs: Vec<String> = Vec::new();
    for p in &sbom.packages {
        let id = package_id(p);
        let license = p.license.as_deref().filter(|l| valid_expression(l));
        for r in license.into_iter().flat_map(license_refs) {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        packages.push(SpdxPackage {
            version_info: Some(p.version.clone()),
            license_declared: Some(license.unwrap_or(NOASSERTION).to_string()),
            primary_package_purpose: Some(match p.manager {
                PackageManager::Dpkg => "LIBRARY".into(),
            }),
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER".into(),
                reference_type: "purl".into(),
                reference_locator: sbom.purl(p),
            }],
            ..bare_package(id.clone(), p.name.clone())
        });
        relationships.push(relationship(IMAGE_ID, "CONTAINS", &id));
    }
    for f in &sbom.files {
        let id = format!(
            "SPDXRef-File-{}-{}",
            safe_id(f.path.trim_start_matches('/')),
            &hex::encode(Sha256::digest(f.path.as_bytes()))[..8]
        );
        packages.push(SpdxPackage {
            package_file_name: Some(f.path.clone()),
            checksums: vec![Checksum {
                algorithm: "SHA256".into(),
                checksum_value: f.sha256.clone(),
            }],
            description: Some("A file a File customizer placed".into()),
            primary_package_purpose: Some("FILE".into()),
            ..bare_package(id.clone(), f.path.clone())
        });
        relationships.push(relationship(IMAGE_ID, "CONTAINS", &id));
    }
    refs.sort();
    Document {
        spdx_version: "SPDX-2.3".into(),
        data_license: "CC0-1.0".into(),
        spdx_id: "SPDXRef-DOCUMENT".into(),
        name: sbom.subject.clone(),
        document_namespace: String::new(),
        creation_info: CreationInfo {
            created: sbom.created.to_rfc3339_opts(SecondsFormat::Secs, true),
            creators: vec![format!("Tool: {}", sbom.tool)],
        },
        packages,
        files: Vec::new(),
        has_extracted_licensing_infos: refs
            .into_iter()
            .map(|id| ExtractedLicense {
                name: id.trim_start_matches("LicenseRef-").to_string(),
                extracted_text: format!(
                    "A license a package's Debian copyright file names `{}`, which is not on \
                     the SPDX License List; its text is in that package's \
                     /usr/share/doc/<package>/copyright in the image.",
                    id.trim_start_matches("LicenseRef-")
                ),
                license_id: id,
            })
            .collect(),
        relationships,
    }
}

fn bare_package(spdx_id: String, name: String) -> SpdxPackage {
    SpdxPackage {
        spdx_id,
        name,
        version_info: None,
        package_file_name: None,
        supplier: Some(NOASSERTION.into()),
        download_location: NOASSERTION.into(),
        files_analyzed: Some(false),
        checksums: Vec::new(),
        // kiln reads what packages declare; it concludes nothing itself.
        license_concluded: Some(NOASSERTION.into()),
        license_declared: Some(NOASSERTION.into()),
        copyright_text: Some(NOASSERTION.into()),
        description: None,
        primary_package_purpose: None,
        external_refs: Vec::new(),
    }
}

fn relationship(from: &str, kind: &str, to: &str) -> Relationship {
    Relationship {
        spdx_element_id: from.into(),
        relationship_type: kind.into(),
        related_spdx_element: to.into(),
    }
}

/// `SPDXRef-Package-deb-<name>-<arch>`; a name with characters an SPDXID
/// cannot hold (`libstdc++6`) gets a short hash of the original so that two
/// names that escape alike stay apart.
fn package_id(p: &Package) -> String {
    let raw = format!("{}-{}", p.name, p.arch);
    let safe = safe_id(&raw);
    if safe == raw {
        format!("SPDXRef-Package-deb-{safe}")
    } else {
        let h = hex::encode(Sha256::digest(raw.as_bytes()));
        format!("SPDXRef-Package-deb-{safe}-{}", &h[..8])
    }
}

/// SPDXIDs are `SPDXRef-` and letters, digits, `.` and `-`.
fn safe_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// An expression the SPDX tools will accept; anything else is written as
/// NOASSERTION rather than as an invalid document.
fn valid_expression(e: &str) -> bool {
    spdx::Expression::parse(e).is_ok()
}

fn license_refs(e: &str) -> impl Iterator<Item = String> + '_ {
    e.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|t| t.starts_with("LicenseRef-"))
        .map(str::to_string)
}

/// Reads an SBOM back from an SPDX 2.3 (or 2.2) document: kiln's own, or
/// another tool's whose packages carry `pkg:deb` purls. Packages without
/// one are not part of the inventory (they are the image, the OS, or
/// things kiln cannot compare).
pub fn from_spdx_json(value: &serde_json::Value) -> Result<Sbom, SpdxError> {
    let doc: Document = serde_path_to_error::deserialize(value)
        .map_err(|e| SpdxError::Shape(format!("{}: {}", e.path(), e.inner())))?;
    if doc.spdx_version != "SPDX-2.3" && doc.spdx_version != "SPDX-2.2" {
        return Err(SpdxError::Version {
            found: doc.spdx_version,
        });
    }
    let created = DateTime::parse_from_rfc3339(&doc.creation_info.created)
        .map_err(|_| SpdxError::Created {
            found: doc.creation_info.created.clone(),
        })?
        .with_timezone(&Utc);
    let tool = doc
        .creation_info
        .creators
        .iter()
        .find_map(|c| c.strip_prefix("Tool:"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let mut os = doc
        .packages
        .iter()
        .find(|p| p.primary_package_purpose.as_deref() == Some("OPERATING-SYSTEM"))
        .map(|p| OsRelease {
            id: p.name.clone(),
            version_id: p.version_info.clone(),
            pretty_name: p.description.clone(),
        });
    let mut packages = Vec::new();
    let mut files = Vec::new();
    for p in &doc.packages {
        let purl = p.external_refs.iter().find(|r| {
            r.reference_category.eq_ignore_ascii_case("PACKAGE-MANAGER")
                && r.reference_type == "purl"
                && r.reference_locator.starts_with("pkg:deb/")
        });
        if let Some(r) = purl {
            let deb = parse_deb_purl(&r.reference_locator).map_err(|why| SpdxError::Purl {
                spdx_id: p.spdx_id.clone(),
                purl: r.reference_locator.clone(),
                why,
            })?;
            if os.is_none() {
                os = deb.os.clone();
            }
            let license = [&p.license_declared, &p.license_concluded]
                .into_iter()
                .flatten()
                .find(|l| l.as_str() != NOASSERTION && l.as_str() != "NONE")
                .cloned();
            packages.push(Package {
                name: deb.name,
                source: deb.source.unwrap_or_else(|| p.name.clone()),
                source_version: deb.source_version.unwrap_or_else(|| deb.version.clone()),
                version: deb.version,
                arch: deb.arch,
                license,
                manager: PackageManager::Dpkg,
            });
        } else if p.primary_package_purpose.as_deref() == Some("FILE") {
            if let (Some(path), Some(sha)) = (&p.package_file_name, sha256_of(&p.checksums)) {
                files.push(PlacedFile {
                    path: path.clone(),
                    sha256: sha,
                });
            }
        }
    }
    for f in &doc.files {
        if let Some(sha) = sha256_of(&f.checksums) {
            files.push(PlacedFile {
                path: format!(
                    "/{}",
                    f.file_name.trim_start_matches("./").trim_start_matches('/')
                ),
                sha256: sha,
            });
        }
    }
    let mut sbom = Sbom {
        subject: doc.name,
        os,
        packages,
        files,
        created,
        tool,
    };
    sbom.normalize();
    Ok(sbom)
}

fn sha256_of(checksums: &[Checksum]) -> Option<String> {
    checksums
        .iter()
        .find(|c| c.algorithm == "SHA256")
        .map(|c| c.checksum_value.to_ascii_lowercase())
}

struct DebPurl {
    name: String,
    version: String,
    arch: String,
    source: Option<String>,
    source_version: Option<String>,
    os: Option<OsRelease>,
}

/// `pkg:deb/<namespace>/<name>@<version>?arch=…&distro=…&upstream=…`.
fn parse_deb_purl(purl: &str) -> Result<DebPurl, &'static str> {
    let rest = purl.strip_prefix("pkg:deb/").ok_or("is not of type deb")?;
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (namespace, name_version) = path.rsplit_once('/').ok_or("has no namespace")?;
    let (name, version) = name_version.split_once('@').ok_or("has no version")?;
    let decode = |s: &str| purl_decode(s).ok_or("has a broken percent escape");
    let (name, version) = (decode(name)?, decode(version)?);
    if name.is_empty() || version.is_empty() {
        return Err("has an empty name or version");
    }
    let mut arch = String::new();
    let (mut source, mut source_version, mut distro) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or("has a qualifier without `=`")?;
        let v = decode(v)?;
        match k {
            "arch" => arch = v,
            "distro" => distro = Some(v),
            "upstream" => match v.split_once('@') {
                Some((s, sv)) => {
                    source = Some(s.to_string());
                    source_version = Some(sv.to_string());
                }
                None => source = Some(v),
            },
            _ => {}
        }
    }
    let namespace = decode(namespace)?;
    // `distro=debian-12` (kiln, Trivy, Syft) gives the release; a code name
    // (`distro=bookworm`) does not.
    let os = distro.map(|d| OsRelease {
        version_id: d.strip_prefix(&format!("{namespace}-")).map(str::to_string),
        id: namespace.clone(),
        pretty_name: None,
    });
    Ok(DebPurl {
        name,
        version,
        arch,
        source,
        source_version,
        os,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(crate) fn sample() -> Sbom {
        let pkg =
            |name: &str, version: &str, arch: &str, source: &str, sv: &str, lic: Option<&str>| {
                Package {
                    name: name.into(),
                    version: version.into(),
                    arch: arch.into(),
                    source: source.into(),
                    source_version: sv.into(),
                    license: lic.map(str::to_string),
                    manager: PackageManager::Dpkg,
                }
            };
        let mut s = Sbom {
            subject: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/web/versions/1.0.3".into(),
            os: Some(OsRelease {
                id: "debian".into(),
                version_id: Some("12".into()),
                pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            }),
            packages: vec![
                pkg("jq", "1.6-2.1", "amd64", "jq", "1.6-2.1", Some("MIT AND LicenseRef-public-domain")),
                pkg("libc6", "2.36-9+deb12u4", "amd64", "glibc", "2.36-9+deb12u4", Some("LGPL-2.1-or-later")),
                pkg("libstdc++6", "12.2.0-14", "amd64", "gcc-12", "12.2.0-14", None),
                pkg("libcurl4", "7.88.1-10+deb12u5+b1", "amd64", "curl", "7.88.1-10+deb12u5", Some("curl")),
                pkg("tzdata", "2024a-0+deb12u1", "all", "tzdata", "2024a-0+deb12u1", Some("(MIT OR GPL-2.0-or-later)")),
            ],
            files: vec![PlacedFile {
                path: "/etc/motd".into(),
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            }],
            created: Utc.with_ymd_and_hms(2026, 12, 1, 22, 0, 0).unwrap(),
            tool: "kiln 0.1.0".into(),
        };
        s.normalize();
        s
    }

    #[test]
    fn what_kiln_writes_it_reads_back() {
        let s = sample();
        let back = from_spdx_json(&to_spdx_json(&s)).unwrap();
        // The expression's outer parentheses are the writer's to keep.
        assert_eq!(back, s);
    }

    #[test]
    fn the_same_sbom_gives_the_same_bytes_and_another_a_new_namespace() {
        let s = sample();
        assert_eq!(to_spdx_bytes(&s), to_spdx_bytes(&s));
        assert!(to_spdx_bytes(&s).ends_with(b"}\n"));
        let ns = |s: &Sbom| {
            to_spdx_json(s)["documentNamespace"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let mut other = s.clone();
        other.packages[0].version = "1.7.1-3".into();
        assert_ne!(ns(&s), ns(&other));
        assert!(ns(&s).starts_with("https://kiln.dev/spdx/%2Fsubscriptions%2Fs%2F"));
    }

    #[test]
    fn packages_carry_purls_licenses_and_safe_ids() {
        let v = to_spdx_json(&sample());
        let pkgs = v["packages"].as_array().unwrap();
        let by_name = |n: &str| pkgs.iter().find(|p| p["name"] == n).unwrap();
        let curl = by_name("libcurl4");
        assert_eq!(curl["versionInfo"], "7.88.1-10+deb12u5+b1");
        assert_eq!(curl["supplier"], NOASSERTION);
        assert_eq!(curl["licenseDeclared"], "curl");
        assert_eq!(
            curl["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libcurl4@7.88.1-10%2Bdeb12u5%2Bb1?arch=amd64&distro=debian-12&upstream=curl%407.88.1-10%2Bdeb12u5"
        );
        assert_eq!(by_name("libstdc++6")["licenseDeclared"], NOASSERTION);
        for p in pkgs {
            let id = p["SPDXID"].as_str().unwrap();
            let tail = id.strip_prefix("SPDXRef-").unwrap();
            assert!(
                tail.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
        assert_eq!(
            by_name("debian")["primaryPackagePurpose"],
            "OPERATING-SYSTEM"
        );
        assert_eq!(
            v["hasExtractedLicensingInfos"][0]["licenseId"],
            "LicenseRef-public-domain"
        );
        let contains = v["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "CONTAINS")
            .count();
        // The OS, five packages and one file.
        assert_eq!(contains, 7);
    }

    #[test]
    fn an_invalid_license_expression_is_written_as_no_assertion() {
        let mut s = sample();
        s.packages[0].license = Some("GPL-2+ or".into());
        let v = to_spdx_json(&s);
        let jq = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "jq")
            .unwrap();
        assert_eq!(jq["licenseDeclared"], NOASSERTION);
    }

    #[test]
    fn another_tools_document_is_read_by_its_purls() {
        let doc = serde_json::json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": "debian:12",
            "documentNamespace": "https://example.com/x",
            "creationInfo": {"created": "2024-01-02T03:04:05Z", "creators": ["Tool: syft-1.0.0"]},
            "packages": [{
                "SPDXID": "SPDXRef-Package-deb-libc6-1",
                "name": "libc6",
                "versionInfo": "2.36-9+deb12u4",
                "downloadLocation": "NOASSERTION",
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "LGPL-2.1-or-later",
                "externalRefs": [
                    {"referenceCategory": "SECURITY", "referenceType": "cpe23Type", "referenceLocator": "cpe:2.3:a:libc6:libc6:2.36:*:*:*:*:*:*:*"},
                    {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                     "referenceLocator": "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&upstream=glibc&distro=debian-12"}
                ]
            }, {
                "SPDXID": "SPDXRef-Package-npm-x",
                "name": "left-pad",
                "downloadLocation": "NOASSERTION",
                "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": "pkg:npm/left-pad@1.3.0"}]
            }],
            "files": [{"SPDXID": "SPDXRef-File-1", "fileName": "./etc/motd",
                       "checksums": [{"algorithm": "SHA1", "checksumValue": "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
                                     {"algorithm": "SHA256", "checksumValue": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"}]}]
        });
        let s = from_spdx_json(&doc).unwrap();
        assert_eq!(s.subject, "debian:12");
        assert_eq!(s.tool, "syft-1.0.0");
        assert_eq!(
            s.os,
            Some(OsRelease {
                id: "debian".into(),
                version_id: Some("12".into()),
                pretty_name: None
            })
        );
        assert_eq!(s.packages.len(), 1);
        let libc = &s.packages[0];
        assert_eq!(
            (
                libc.version.as_str(),
                libc.arch.as_str(),
                libc.source.as_str(),
                libc.source_version.as_str()
            ),
            ("2.36-9+deb12u4", "amd64", "glibc", "2.36-9+deb12u4")
        );
        assert_eq!(libc.license.as_deref(), Some("LGPL-2.1-or-later"));
        assert_eq!(s.files[0].path, "/etc/motd");
        assert_eq!(&s.files[0].sha256[..6], "e3b0c4");
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = to_spdx_json(&sample());
        v["spdxVersion"] = "SPDX-3.0".into();
        assert!(
            matches!(from_spdx_json(&v), Err(SpdxError::Version { found }) if found == "SPDX-3.0")
        );
        let mut v = to_spdx_json(&sample());
        v["packages"][1]["name"] = 7.into();
        let e = from_spdx_json(&v).unwrap_err().to_string();
        assert!(e.contains("packages[1].name"), "{e}");
        let mut v = to_spdx_json(&sample());
        v["packages"][2]["externalRefs"][0]["referenceLocator"] = "pkg:deb/debian/jq".into();
        let e = from_spdx_json(&v).unwrap_err().to_string();
        assert!(e.contains("has no version"), "{e}");
    }
}
