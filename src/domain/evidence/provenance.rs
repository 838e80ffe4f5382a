//! What kiln attests about a published version: an in-toto Statement v1
//! (<https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>)
//! whose predicate is SLSA provenance v1
//! (<https://slsa.dev/spec/v1.0/provenance>). It ties the disk files and the
//! SBOM (the subjects, by sha256) to the template that made them (name and
//! sha256), the source image at its exact version and every customizer's
//! sha256. Signing and verifying are in `dsse.rs`.
//!
//! The field names are the specs' own. Reading is lenient where the specs
//! ask it to be (unknown fields are ignored: "Consumers MUST ignore
//! unrecognized fields"); the two type URIs are checked by
//! [`Statement::check_types`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `_type` of every Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA provenance v1 (the URI names the major version only).
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";

/// An in-toto Statement v1 carrying SLSA provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the statement is about; each element has a digest.
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Provenance,
}

/// A ResourceDescriptor (in-toto attestation v1): at least one of `uri`,
/// `digest` (or `content`, which kiln never uses) is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// DigestSet: algorithm → lowercase hex. A map sorted by algorithm, so
    /// the same digests always serialize the same way.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, Value>,
}

impl ResourceDescriptor {
    /// The `sha256` of the digest set.
    pub fn sha256(&self) -> Option<&str> {
        self.digest.get("sha256").map(String::as_str)
    }
}

impl Statement {
    /// The template's sha256 the statement signs (`externalParameters.template.sha256`).
    pub fn template_sha256(&self) -> Option<&str> {
        self.predicate.build_definition.external_parameters["template"]["sha256"].as_str()
    }

    /// The exact source version the statement signs (the `source`
    /// dependency's `version` annotation).
    pub fn source_version(&self) -> Option<&str> {
        self.predicate
            .build_definition
            .resolved_dependencies
            .iter()
            .find(|d| d.name.as_deref() == Some("source"))
            .and_then(|d| d.annotations.get("version"))
            .and_then(Value::as_str)
    }
}

/// The SLSA provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// What kind of build this is; see [`BuildPlatform::build_type`].
    pub build_type: String,
    /// What the user controlled: the pipeline and the template.
    pub external_parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_parameters: Option<Value>,
    /// The source image and the customizers, as the build resolved them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    pub builder: Builder,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BuildMetadata>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Builder {
    pub id: String,
    /// Component → version (a map in the spec, not a string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builder_dependencies: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_on: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_on: Option<DateTime<Utc>>,
}

/// Where the build ran: it decides `buildType` and `builder.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPlatform {
    /// The local provider (`kiln local`).
    Local,
    /// Azure VM Image Builder, driven by kiln in Azure.
    Azure,
}

impl BuildPlatform {
    /// `buildDefinition.buildType`: how to read `externalParameters` and
    /// `resolvedDependencies` (documented in docs/provenance.md).
    pub fn build_type(self) -> &'static str {
        match self {
            BuildPlatform::Local => "https://kiln.dev/local-build/v1",
            BuildPlatform::Azure => "https://kiln.dev/aib/v1",
        }
    }

    /// `runDetails.builder.id`: who is trusted to have run the build.
    pub fn builder_id(self) -> &'static str {
        match self {
            BuildPlatform::Local => "https://github.com/kiln/kiln/local",
            BuildPlatform::Azure => "https://github.com/kiln/kiln/azure",
        }
    }
}

/// The source image as the build resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// What it is, URI-like: `marketplace:Canonical/ubuntu-24_04-lts/server`,
    /// a gallery image version id, a local base `local:debian/12`.
    pub uri: String,
    /// The exact version built from (never `latest`).
    pub version: String,
    /// A digest of the source, when the provider knows one.
    pub sha256: Option<String>,
}

/// One customizer of the template, in template order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomizerRef {
    pub name: String,
    /// The customizer's `type`: `Shell`, `File`, …
    pub kind: String,
    /// The sha256 of what it ran or placed (script, inline text, file).
    pub sha256: String,
    /// `scriptUri` / `sourceUri`, when it fetched something.
    pub uri: Option<String>,
    /// Where a File customizer placed its file.
    pub destination: Option<String>,
}

/// One file the statement is about: a disk, or `sbom.spdx.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectFile {
    pub name: String,
    pub sha256: String,
}

/// Everything [`image_provenance`] needs, gathered by the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceInput {
    pub build_id: String,
    pub pipeline: String,
    pub template_name: String,
    pub template_sha256: String,
    pub source: SourceRef,
    pub customizers: Vec<CustomizerRef>,
    pub subjects: Vec<SubjectFile>,
    pub platform: BuildPlatform,
    /// `env!("CARGO_PKG_VERSION")` of the kiln that built.
    pub kiln_version: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
}

fn sha256_set(hex: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("sha256".to_string(), hex.to_ascii_lowercase())])
}

/// The provenance of one image build. Pure and deterministic: the same
/// input gives the same statement, and so the same bytes (subjects are
/// sorted by name; customizers keep template order, which is part of
/// what was built).
pub fn image_provenance(input: &ProvenanceInput) -> Statement {
    let mut subject: Vec<ResourceDescriptor> = input
        .subjects
        .iter()
        .map(|s| ResourceDescriptor {
            name: Some(s.name.clone()),
            digest: sha256_set(&s.sha256),
            ..ResourceDescriptor::default()
        })
        .collect();
    subject.sort_by(|a, b| a.name.cmp(&b.name));

    let source = ResourceDescriptor {
        uri: Some(input.source.uri.clone()),
        name: Some("source".to_string()),
        digest: input
            .source
            .sha256
            .as_deref()
            .map(sha256_set)
            .unwrap_or_default(),
        annotations: BTreeMap::from([("version".to_string(), json!(input.source.version))]),
        ..ResourceDescriptor::default()
    };
    let customizers = input.customizers.iter().enumerate().map(|(i, c)| {
        let mut annotations = BTreeMap::from([
            ("index".to_string(), json!(i)),
            ("type".to_string(), json!(c.kind)),
        ]);
        if let Some(d) = &c.destination {
            annotations.insert("destination".to_string(), json!(d));
        }
        ResourceDescriptor {
            uri: c.uri.clone(),
            name: Some(c.name.clone()),
            digest: sha256_set(&c.sha256),
            annotations,
            ..ResourceDescriptor::default()
        }
    });

    Statement {
        type_: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: SLSA_PROVENANCE_V1.to_string(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: input.platform.build_type().to_string(),
                external_parameters: json!({
                    "pipeline": input.pipeline,
                    "template": {
                        "name": input.template_name,
                        "sha256": input.template_sha256.to_ascii_lowercase(),
                    },
                }),
                internal_parameters: None,
                resolved_dependencies: std::iter::once(source).chain(customizers).collect(),
            },
            run_details: RunDetails {
                builder: Builder {
                    id: input.platform.builder_id().to_string(),
                    version: BTreeMap::from([("kiln".to_string(), input.kiln_version.clone())]),
                    builder_dependencies: Vec::new(),
                },
                metadata: Some(BuildMetadata {
                    invocation_id: Some(input.build_id.clone()),
                    started_on: Some(input.started),
                    finished_on: Some(input.finished),
                }),
                byproducts: Vec::new(),
            },
        },
    }
}

impl Statement {
    /// `Err` says which type URI is not the one kiln reads.
    pub fn check_types(&self) -> Result<(), String> {
        if self.type_ != STATEMENT_TYPE {
            return Err(format!(
                "_type: expected `{STATEMENT_TYPE}`, got `{}`",
                self.type_
            ));
        }
        if self.predicate_type != SLSA_PROVENANCE_V1 {
            return Err(format!(
                "predicateType: expected `{SLSA_PROVENANCE_V1}`, got `{}`",
                self.predicate_type
            ));
        }
        Ok(())
    }

    /// The sha256 the statement gives for subject `name`.
    pub fn subject_sha256(&self, name: &str) -> Option<&str> {
        self.subject
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .and_then(ResourceDescriptor::sha256)
    }
}

/// How a file on hand and the signed subjects disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMismatch {
    /// The file is a subject, with another digest: it changed since signing.
    Differs {
        name: String,
        signed: String,
        actual: String,
    },
    /// A signed subject that is not among the files checked.
    Missing { name: String, signed: String },
    /// A file that the statement does not name.
    NotSigned { name: String, actual: String },
}

impl std::fmt::Display for SubjectMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectMismatch::Differs {
                name,
                signed,
                actual,
            } => write!(
                f,
                "{name}: sha256 is {actual}, the signed provenance says {signed}"
            ),
            SubjectMismatch::Missing { name, signed } => {
                write!(f, "{name}: signed (sha256 {signed}) but not found")
            }
            SubjectMismatch::NotSigned { name, actual } => write!(
                f,
                "{name}: (sha256 {actual}) is not a subject of the signed provenance"
            ),
        }
    }
}

/// Whether `files` (name, sha256 hex) are exactly the statement's subjects,
/// digest for digest. Every subject must be among the files and every file
/// a subject: a verification that skipped a signed file would pass an image
/// whose SBOM or second disk was swapped. Mismatches come sorted by name.
pub fn check_subjects(
    statement: &Statement,
    files: &[(&str, &str)],
) -> Result<(), Vec<SubjectMismatch>> {
    let signed: BTreeMap<&str, String> = statement
        .subject
        .iter()
        .filter_map(|s| {
            let name = s.name.as_deref()?;
            Some((name, s.sha256().unwrap_or("").to_ascii_lowercase()))
        })
        .collect();
    let actual: BTreeMap<&str, String> = files
        .iter()
        .map(|(name, sha)| (*name, sha.to_ascii_lowercase()))
        .collect();
    let mut mismatches = Vec::new();
    for (name, signed_sha) in &signed {
        match actual.get(name) {
            Some(a) if a == signed_sha => {}
            Some(a) => mismatches.push(SubjectMismatch::Differs {
                name: name.to_string(),
                signed: signed_sha.clone(),
                actual: a.clone(),
            }),
            None => mismatches.push(SubjectMismatch::Missing {
                name: name.to_string(),
                signed: signed_sha.clone(),
            }),
        }
    }
    for (name, a) in &actual {
        if !signed.contains_key(name) {
            mismatches.push(SubjectMismatch::NotSigned {
                name: name.to_string(),
                actual: a.clone(),
            });
        }
    }
    mismatches.sort_by(|a, b| subject_name(a).cmp(subject_name(b)));
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(mismatches)
    }
}

fn subject_name(m: &SubjectMismatch) -> &str {
    match m {
        SubjectMismatch::Differs { name, .. }
        | SubjectMismatch::Missing { name, .. }
        | SubjectMismatch::NotSigned { name, .. } => name,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::TimeZone;

    use super::*;

    pub(crate) fn input() -> ProvenanceInput {
        ProvenanceInput {
            build_id: "b-20261201-0001".into(),
            pipeline: "seed-lab".into(),
            template_name: "kiln-b-20261201-0001-a1".into(),
            template_sha256: "AB".repeat(32),
            source: SourceRef {
                uri: "local:debian/12".into(),
                version: "2026.11.28".into(),
                sha256: None,
            },
            customizers: vec![
                CustomizerRef {
                    name: "install-tools".into(),
                    kind: "Shell".into(),
                    sha256: "11".repeat(32),
                    uri: None,
                    destination: None,
                },
                CustomizerRef {
                    name: "motd".into(),
                    kind: "File".into(),
                    sha256: "22".repeat(32),
                    uri: Some("https://example.org/motd".into()),
                    destination: Some("/etc/motd".into()),
                },
            ],
            subjects: vec![
                SubjectFile {
                    name: "sbom.spdx.json".into(),
                    sha256: "33".repeat(32),
                },
                SubjectFile {
                    name: "disk.qcow2".into(),
                    sha256: "44".repeat(32),
                },
            ],
            platform: BuildPlatform::Local,
            kiln_version: "0.1.0".into(),
            started: Utc.with_ymd_and_hms(2026, 12, 1, 22, 0, 0).unwrap(),
            finished: Utc.with_ymd_and_hms(2026, 12, 1, 22, 7, 30).unwrap(),
        }
    }

    #[test]
    fn the_statement_carries_the_spec_field_names_and_every_fact_of_the_build() {
        let statement = image_provenance(&input());
        assert_eq!(statement.template_sha256(), Some("ab".repeat(32).as_str()));
        assert_eq!(statement.source_version(), Some("2026.11.28"));
        let v = serde_json::to_value(image_provenance(&input())).unwrap();
        assert_eq!(v["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(v["predicateType"], "https://slsa.dev/provenance/v1");
        assert_eq!(
            v["subject"],
            json!([
                {"digest": {"sha256": "44".repeat(32)}, "name": "disk.qcow2"},
                {"digest": {"sha256": "33".repeat(32)}, "name": "sbom.spdx.json"},
            ])
        );
        let bd = &v["predicate"]["buildDefinition"];
        assert_eq!(bd["buildType"], "https://kiln.dev/local-build/v1");
        assert_eq!(bd["externalParameters"]["pipeline"], "seed-lab");
        assert_eq!(
            bd["externalParameters"]["template"],
            json!({"name": "kiln-b-20261201-0001-a1", "sha256": "ab".repeat(32)})
        );
        let deps = bd["resolvedDependencies"].as_array().unwrap();
        assert_eq!(deps.len(), 3);
        assert_eq!(deps[0]["uri"], "local:debian/12");
        assert_eq!(deps[0]["annotations"]["version"], "2026.11.28");
        assert_eq!(deps[1]["name"], "install-tools");
        assert_eq!(deps[1]["digest"]["sha256"], "11".repeat(32));
        assert_eq!(deps[1]["annotations"]["type"], "Shell");
        assert_eq!(deps[2]["uri"], "https://example.org/motd");
        assert_eq!(deps[2]["annotations"]["destination"], "/etc/motd");
        let rd = &v["predicate"]["runDetails"];
        assert_eq!(
            rd["builder"],
            json!({"id": "https://github.com/kiln/kiln/local", "version": {"kiln": "0.1.0"}})
        );
        assert_eq!(
            rd["metadata"],
            json!({"invocationId": "b-20261201-0001",
                   "startedOn": "2026-12-01T22:00:00Z", "finishedOn": "2026-12-01T22:07:30Z"})
        );
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_whatever_the_order_of_subjects() {
        let a = serde_json::to_vec(&image_provenance(&input())).unwrap();
        let mut reordered = input();
        reordered.subjects.reverse();
        let b = serde_json::to_vec(&image_provenance(&reordered)).unwrap();
        assert_eq!(a, b);
        let mut other = input();
        other.customizers.reverse();
        let c = serde_json::to_vec(&image_provenance(&other)).unwrap();
        assert_ne!(a, c, "customizer order is part of what was built");
    }

    #[test]
    fn azure_builds_name_image_builder_and_the_azure_builder() {
        let mut i = input();
        i.platform = BuildPlatform::Azure;
        let s = image_provenance(&i);
        assert_eq!(
            s.predicate.build_definition.build_type,
            "https://kiln.dev/aib/v1"
        );
        assert_eq!(
            s.predicate.run_details.builder.id,
            "https://github.com/kiln/kiln/azure"
        );
    }

    #[test]
    fn a_statement_reads_back_and_unknown_fields_are_ignored() {
        let s = image_provenance(&input());
        let mut v = serde_json::to_value(&s).unwrap();
        v["predicate"]["runDetails"]["extension"] = json!({"x": 1});
        v["subject"][0]["annotations"] = json!({"k": "v"});
        let back: Statement = serde_json::from_value(v).unwrap();
        assert_eq!(back.predicate, s.predicate);
        assert_eq!(
            back.subject_sha256("disk.qcow2"),
            Some("44".repeat(32).as_str())
        );
        assert_eq!(back.check_types(), Ok(()));
    }

    #[test]
    fn other_type_uris_are_named_in_the_error() {
        let mut s = image_provenance(&input());
        s.predicate_type = "https://slsa.dev/provenance/v0.2".into();
        let e = s.check_types().unwrap_err();
        assert!(e.starts_with("predicateType:") && e.contains("v0.2"), "{e}");
        s.type_ = "https://in-toto.io/Statement/v0.1".into();
        assert!(s.check_types().unwrap_err().starts_with("_type:"));
    }

    #[test]
    fn matching_files_pass_and_a_changed_disk_is_named() {
        let s = image_provenance(&input());
        let disk = "44".repeat(32);
        let sbom = "33".repeat(32);
        assert_eq!(
            check_subjects(&s, &[("disk.qcow2", &disk), ("sbom.spdx.json", &sbom)]),
            Ok(())
        );
        let changed = "45".repeat(32);
        let e =
            check_subjects(&s, &[("disk.qcow2", &changed), ("sbom.spdx.json", &sbom)]).unwrap_err();
        assert_eq!(
            e,
            vec![SubjectMismatch::Differs {
                name: "disk.qcow2".into(),
                signed: disk.clone(),
                actual: changed.clone(),
            }]
        );
        assert!(e[0].to_string().starts_with("disk.qcow2: sha256 is 4545"));
    }

    #[test]
    fn a_missing_subject_and_an_unsigned_file_are_both_reported() {
        let s = image_provenance(&input());
        let disk = "44".repeat(32);
        let e = check_subjects(&s, &[("disk.qcow2", &disk), ("extra.vhd", "00")]).unwrap_err();
        assert_eq!(
            e,
            vec![
                SubjectMismatch::NotSigned {
                    name: "extra.vhd".into(),
                    actual: "00".into()
                },
                SubjectMismatch::Missing {
                    name: "sbom.spdx.json".into(),
                    signed: "33".repeat(32)
                },
            ]
        );
    }

    #[test]
    fn digests_compare_without_regard_to_hex_case() {
        let s = image_provenance(&input());
        let disk = "44".repeat(32);
        let sbom = "AA".repeat(32);
        let mut i = input();
        i.subjects[0].sha256 = sbom.clone();
        let s2 = image_provenance(&i);
        assert_eq!(
            check_subjects(&s2, &[("disk.qcow2", &disk), ("sbom.spdx.json", &sbom)]),
            Ok(())
        );
        assert!(check_subjects(&s, &[("disk.qcow2", &disk)]).is_err());
    }
}
