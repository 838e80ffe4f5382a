//! Pipeline files: an AIB image template body, verbatim, plus a `kiln` section.
//!
//! ```json
//! { "location": "…", "identity": {…}, "tags": {…}, "properties": {…},
//!   "kiln": { "triggers": {…}, "versioning": {…}, "retention": {…},
//!             "promotion": {…}, "build": {…} } }
//! ```
//!
//! A user pastes the template they already deploy and adds `kiln`. Unknown
//! fields inside `kiln` are errors (a typo must not silently disable a
//! safety setting); template fields kiln does not model are kept as they are.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::retention::RetentionPolicy;
// The schedule types live with the schedule; pipeline files name them here too.
pub use super::schedule::{Blackout, PatchTuesdaySpec, ScheduleSpec};
use super::template::{
    Customizer, Distributor, GalleryImageRef, Identity, IdentityType, ImageTemplate,
};

mod read;

/// The key under which kiln's own settings live in a pipeline file.
pub const KILN_KEY: &str = "kiln";

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The template exactly as the user wrote it, without the `kiln` key.
    pub template_json: serde_json::Value,
    pub template: ImageTemplate,
    pub kiln: KilnSection,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KilnSection {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub triggers: Triggers,
    #[serde(default)]
    pub versioning: Versioning,
    #[serde(default)]
    pub retention: RetentionPolicy,
    #[serde(default)]
    pub promotion: Promotion,
    #[serde(default)]
    pub build: BuildPolicy,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default)]
    pub base_image: BaseImageTrigger,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseImageTrigger {
    /// Build when a floating (`latest`) source gets a new version.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Updates seen within this many minutes of the first one make one build.
    #[serde(default = "default_debounce")]
    pub debounce_minutes: u32,
}

impl Default for BaseImageTrigger {
    fn default() -> Self {
        Self {
            enabled: true,
            debounce_minutes: default_debounce(),
        }
    }
}

fn default_debounce() -> u32 {
    30
}
fn yes() -> bool {
    true
}

/// How the next gallery version is chosen, once, at admission.
///
/// A flat struct rather than a tagged enum: serde buffers tagged enums, which
/// would lose the path of a wrong field in error messages.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Versioning {
    pub scheme: VersionScheme,
    /// Major version for the `latest` scheme.
    #[serde(default = "default_major")]
    pub major: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionScheme {
    /// Next patch under `major` (AIB's `Latest` scheme), starting at `major.0.0`.
    Latest,
    /// The source image's exact version (`Major.Minor.Patch`), as AIB's `Source` scheme.
    Source,
    /// `YYYY.MMDD.N`: the admission date, N counting builds of that day.
    Date,
}

fn default_major() -> u32 {
    1
}

impl Default for Versioning {
    fn default() -> Self {
        Versioning {
            scheme: VersionScheme::Latest,
            major: 1,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promotion {
    /// Publish new versions excluded from `latest`, for a staged rollout.
    #[serde(default)]
    pub exclude_from_latest: bool,
    /// Extra tags put on every published version.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildPolicy {
    /// Attempts for transient failures, first one included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Builds of this pipeline that may be active at once.
    #[serde(default = "one")]
    pub max_concurrent: u32,
    /// Consecutive failed automatic builds that pause automatic triggers.
    #[serde(default = "default_breaker")]
    pub circuit_breaker_failures: u32,
    /// Local provider: network inside the customizer sandbox.
    #[serde(default = "yes")]
    pub network: bool,
    /// Local provider: limit for one customizer or validator step.
    #[serde(default = "default_step_timeout")]
    pub step_timeout_minutes: u32,
    /// Local provider: boot the captured image under QEMU and run this check as validation.
    #[serde(default)]
    pub boot_test: Option<BootTest>,
}

fn default_attempts() -> u32 {
    3
}
fn one() -> u32 {
    1
}
fn default_breaker() -> u32 {
    3
}
fn default_step_timeout() -> u32 {
    30
}

impl Default for BuildPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            max_concurrent: 1,
            circuit_breaker_failures: default_breaker(),
            network: true,
            step_timeout_minutes: default_step_timeout(),
            boot_test: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootTest {
    /// Shell run inside the booted guest; its output is reported.
    pub check: String,
    /// Text that must appear in the guest's output for the test to pass.
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default = "default_boot_timeout")]
    pub timeout_seconds: u32,
}

fn default_boot_timeout() -> u32 {
    180
}

/// One problem in a pipeline file, located by a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn field(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// Reads a serde value into `T`, reporting the failing field's full path.
///
/// serde stops at the first error, so callers read one section at a time (see `read`).
fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    prefix: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (p, ".") => p.to_string(),
            ("", i) => i.to_string(),
            (p, i) => format!("{p}.{i}"),
        };
        field(path, e.into_inner().to_string())
    })
}

pub fn valid_pipeline_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// What a pipeline file's text gave.
#[derive(Debug, Clone)]
pub enum Parsed {
    Valid(Box<Pipeline>),
    /// Every problem found, and the template when it parsed (the kiln section
    /// or a semantic check may still have failed), so provider checks can run too.
    Invalid {
        errors: Vec<FieldError>,
        template: Option<Box<ImageTemplate>>,
    },
}

impl Pipeline {
    /// Parses and checks a pipeline file's text. `name` is the file stem.
    pub fn parse(name: &str, text: &str) -> Result<Pipeline, Vec<FieldError>> {
        match Pipeline::read(name, text) {
            Parsed::Valid(p) => Ok(*p),
            Parsed::Invalid { errors, .. } => Err(errors),
        }
    }

    /// Like [`Pipeline::parse`], reporting every problem of the file at once
    /// (each section and list element is read on its own, see `read`).
    pub fn read(name: &str, text: &str) -> Parsed {
        let invalid = |errors| Parsed::Invalid {
            errors,
            template: None,
        };
        let mut doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                return invalid(vec![field(
                    format!("line {} column {}", e.line(), e.column()),
                    format!("not valid JSON: {e}"),
                )])
            }
        };
        let Some(obj) = doc.as_object_mut() else {
            return invalid(vec![field(
                "$",
                "expected an object holding an image template",
            )]);
        };
        let kiln_value = obj.remove(KILN_KEY);

        let mut errors = misplaced_kiln_keys(obj);
        if !valid_pipeline_name(name) {
            errors.push(field(
                "$",
                format!("pipeline name `{name}` (the file name) must be 1-64 characters of a-z, 0-9, - and _"),
            ));
        }
        let mut reader = read::Reader::default();
        let parts = reader.template(obj);
        // A file without a `kiln` section is a pasted template: every kiln setting at its default.
        let kiln = match &kiln_value {
            None => Some(KilnSection::default()),
            Some(v) => reader.kiln(v),
        };
        errors.append(&mut reader.errors);
        errors.extend(check_template(&parts));
        if let Some(k) = &kiln {
            errors.extend(check_kiln(k));
        }
        let template = parts.assemble();
        match (template, kiln) {
            (Some(template), Some(kiln)) if errors.is_empty() => {
                Parsed::Valid(Box::new(Pipeline {
                    name: name.to_string(),
                    template_json: doc,
                    template,
                    kiln,
                }))
            }
            (template, _) => Parsed::Invalid {
                errors,
                template: template.map(Box::new),
            },
        }
    }

    /// The image definitions this pipeline publishes to (SharedImage distributors).
    pub fn gallery_targets(&self) -> Vec<GalleryImageRef> {
        self.template
            .properties
            .distribute
            .iter()
            .filter_map(|d| match d {
                Distributor::SharedImage {
                    gallery_image_id, ..
                } => GalleryImageRef::parse(gallery_image_id),
                Distributor::ManagedImage { .. } | Distributor::Vhd { .. } => None,
            })
            .collect()
    }

    /// Timeout of one build attempt, as AIB applies it (0 or absent means 240 minutes).
    pub fn build_timeout_minutes(&self) -> u32 {
        match self.template.properties.build_timeout_in_minutes {
            None | Some(0) => 240,
            Some(m) => m,
        }
    }
}

/// Why a fixed `stagingResourceGroup` cannot work with kiln. Deriving one per
/// build would mean kiln creates resource groups and grants the build
/// identity Contributor on each, so the field is refused instead.
const STAGING_RG_REFUSED: &str = "must be empty (or absent): kiln runs concurrent builds and \
a new image template for every attempt, and Image Builder needs its staging resource group \
empty and used by one template at a time, so a fixed group fails the next build or attempt \
as a validation error; remove the field and Image Builder creates and deletes a group for \
each template";

/// The checks serde cannot express, over whatever parts of the template parsed.
fn check_template(t: &read::TemplateParts) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(location) = &t.location {
        if location.trim().is_empty() {
            errors.push(field("location", "expected an Azure region name"));
        }
    }
    if let Some(identity) = &t.identity {
        errors.extend(check_identity(identity));
    }
    if let Some(m) = t.build_timeout_in_minutes {
        if m > 960 {
            errors.push(field(
                "properties.buildTimeoutInMinutes",
                format!("expected 0..=960 minutes, got {m}"),
            ));
        }
    }
    if let Some(rg) = t.staging_resource_group.as_deref() {
        if !rg.trim().is_empty() {
            errors.push(field("properties.stagingResourceGroup", STAGING_RG_REFUSED));
        }
    }
    errors.extend(check_distribute(&t.distribute));
    let validators = t
        .validate
        .as_ref()
        .map_or(&[][..], |v| &v.in_vm_validations);
    for (at, c) in super::template::step_paths(&t.customize, validators) {
        if let Some(Customizer::Shell {
            inline, script_uri, ..
        }) = c
        {
            if inline.is_some() == script_uri.is_some() {
                errors.push(field(
                    at,
                    "a Shell step needs exactly one of `inline` and `scriptUri`",
                ));
            }
        }
    }
    errors
}

/// AIB builds as a user-assigned managed identity, and takes exactly one.
fn check_identity(identity: &Identity) -> Vec<FieldError> {
    match identity.kind {
        IdentityType::UserAssigned => {}
        IdentityType::None => {
            return vec![field(
                "identity.type",
                "expected `UserAssigned`: Azure VM Image Builder runs the build as a user-assigned identity",
            )]
        }
    }
    match identity.user_assigned_identities.len() {
        1 => vec![],
        0 => vec![field(
            "identity.userAssignedIdentities",
            "expected the resource id of the user-assigned identity the build runs as",
        )],
        n => vec![field(
            "identity.userAssignedIdentities",
            format!("expected exactly one user-assigned identity (Azure VM Image Builder takes one), got {n}"),
        )],
    }
}

/// A `kiln` section under another spelling or inside `properties` would be
/// kept as an unknown template field and submitted to AIB, and every kiln
/// setting would silently take its default.
fn misplaced_kiln_keys(doc: &serde_json::Map<String, serde_json::Value>) -> Vec<FieldError> {
    let looks_like = |k: &str| k.trim().eq_ignore_ascii_case(KILN_KEY);
    let top = doc.keys().filter(|k| looks_like(k)).map(|k| {
        field(
            k.as_str(),
            format!("expected the key `{KILN_KEY}` (lower case, no spaces) for kiln's section"),
        )
    });
    let nested = doc
        .get("properties")
        .and_then(|p| p.as_object())
        .into_iter()
        .flat_map(|p| p.keys())
        .filter(|k| looks_like(k))
        .map(|k| {
            field(
                format!("properties.{k}"),
                format!(
                    "kiln's section belongs at the top level, beside `properties`, as `{KILN_KEY}`"
                ),
            )
        });
    top.chain(nested).collect()
}

/// `distribute` holds each target that parsed (`None`: reported already) at its index.
fn check_distribute(distribute: &[Option<Distributor>]) -> Vec<FieldError> {
    // An empty list is reported by the reader (which also reports a missing
    // or malformed one), so that one problem is one error.
    let mut errors = Vec::new();
    let mut outputs = std::collections::BTreeSet::new();
    for (i, d) in distribute.iter().enumerate() {
        let Some(d) = d else { continue };
        let at = format!("properties.distribute[{i}]");
        if !outputs.insert(d.run_output_name().to_string()) {
            errors.push(field(
                format!("{at}.runOutputName"),
                format!(
                    "`{}` is used twice; run output names must be unique",
                    d.run_output_name()
                ),
            ));
        }
        if let Distributor::SharedImage {
            gallery_image_id,
            target_regions,
            replication_regions,
            ..
        } = d
        {
            // API 2025-10-01: the deprecated list "can be specified only if
            // targetRegions is not specified" (AIB refuses the template).
            if !target_regions.is_empty() && !replication_regions.is_empty() {
                errors.push(field(
                    format!("{at}.replicationRegions"),
                    "expected either targetRegions or the deprecated replicationRegions, not both",
                ));
            }
            match GalleryImageRef::parse(gallery_image_id) {
                None => errors.push(field(
                    format!("{at}.galleryImageId"),
                    "expected /subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/galleries/G/images/D",
                )),
                Some(r) if r.version.is_some() => errors.push(field(
                    format!("{at}.galleryImageId"),
                    "expected an image definition id without /versions/…: kiln assigns the version (see kiln.versioning)",
                )),
                Some(_) => {}
            }
        }
    }
    errors
}

fn check_kiln(k: &KilnSection) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(s) = &k.triggers.schedule {
        if let Err(e) = super::schedule::Schedule::from_spec(s) {
            errors.push(field("kiln.triggers.schedule", e));
        }
    }
    if k.build.max_attempts == 0 || k.build.max_attempts > 10 {
        errors.push(field("kiln.build.maxAttempts", "expected 1..=10"));
    }
    if k.build.max_concurrent == 0 {
        errors.push(field("kiln.build.maxConcurrent", "expected at least 1"));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{
      "location": "westeurope",
      "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib": {}}},
      "properties": {
        "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "1", "version": "latest"},
        "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hi > /etc/hello"]}],
        "distribute": [{"type": "SharedImage", "runOutputName": "tiny",
          "galleryImageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/tiny"}],
        "futureField": {"kept": true}
      },
      "kiln": {"versioning": {"scheme": "latest", "major": 1}}
    }"#;

    #[test]
    fn keeps_template_fields_kiln_does_not_model() {
        let p = Pipeline::parse("tiny", TINY).unwrap();
        assert_eq!(p.template_json["properties"]["futureField"]["kept"], true);
        assert!(p.template_json.get(KILN_KEY).is_none());
    }

    #[test]
    fn unknown_kiln_fields_are_errors_with_their_path() {
        let text = TINY.replace(r#""versioning""#, r#""retension": {}, "versioning""#);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "kiln.retension");
        assert!(
            errs[0].message.contains("unknown field"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn missing_required_template_field_names_it() {
        let text = TINY.replace(r#""runOutputName": "tiny","#, "");
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "properties.distribute[0]");
        assert!(
            errs[0].message.contains("runOutputName"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn wrong_type_deep_in_kiln_names_the_field() {
        let text = TINY.replace(r#""major": 1"#, r#""major": "one""#);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "kiln.versioning.major");
    }

    #[test]
    fn a_shell_step_needs_a_script() {
        let text = TINY.replace(r#""inline": ["echo hi > /etc/hello"]"#, r#""name2": 1"#);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "properties.customize[0]");
    }

    #[test]
    fn a_fixed_staging_resource_group_is_refused_with_why_and_what_to_do() {
        let text = TINY.replace(
            r#""futureField""#,
            r#""stagingResourceGroup": "/subscriptions/s/resourceGroups/rg-aib-staging", "futureField""#,
        );
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "properties.stagingResourceGroup");
        for part in ["concurrent", "attempt", "remove"] {
            assert!(errs[0].message.contains(part), "{}", errs[0].message);
        }
        // Empty is what AIB documents as "create one for this template".
        let text = TINY.replace(
            r#""futureField""#,
            r#""stagingResourceGroup": "", "futureField""#,
        );
        assert!(Pipeline::parse("tiny", &text).is_ok());
    }

    #[test]
    fn a_versioned_gallery_target_is_refused() {
        let text = TINY.replace("images/tiny", "images/tiny/versions/1.0.0");
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "properties.distribute[0].galleryImageId");
    }

    #[test]
    fn a_misspelled_or_misplaced_kiln_section_is_an_error_not_a_default() {
        let text = TINY.replace(r#""kiln": {"#, r#""Kiln": {"#);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "Kiln", "{errs:?}");
        let text = TINY.replace(r#""futureField""#, r#""kiln": {}, "futureField""#);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "properties.kiln", "{errs:?}");
    }

    #[test]
    fn a_missing_or_empty_distribute_is_one_error() {
        for (from, to) in [
            (r#""distribute": ["#, r#""distribut": ["#),
            (r#""distribute": ["#, r#""distribute": "x", "d": ["#),
        ] {
            let text = TINY.replace(from, to);
            let errs = Pipeline::parse("tiny", &text).unwrap_err();
            let n = errs
                .iter()
                .filter(|e| e.path == "properties.distribute")
                .count();
            assert_eq!(n, 1, "{errs:?}");
        }
    }

    #[test]
    fn identity_type_is_read_as_arm_reads_it_regardless_of_case() {
        let text = TINY.replace(r#""type": "UserAssigned""#, r#""type": "userAssigned""#);
        assert!(Pipeline::parse("tiny", &text).is_ok());
        let text = TINY.replace(r#""type": "UserAssigned""#, r#""type": "SystemAssigned""#);
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs[0].path, "identity.type", "{errs:?}");
        assert!(errs[0].message.contains("user-assigned"), "{errs:?}");
    }

    #[test]
    fn a_null_validate_is_no_validate() {
        let text = TINY.replace(r#""futureField""#, r#""validate": null, "futureField""#);
        assert!(Pipeline::parse("tiny", &text).is_ok());
    }

    #[test]
    fn target_regions_and_replication_regions_exclude_each_other() {
        let text = TINY.replace(
            r#""runOutputName": "tiny","#,
            r#""runOutputName": "tiny", "replicationRegions": ["westeurope"],
               "targetRegions": [{"name": "westeurope"}],"#,
        );
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "properties.distribute[0].replicationRegions");
        // Either alone is fine: the seed lab's tutorial uses the deprecated one.
        let alone = TINY.replace(
            r#""runOutputName": "tiny","#,
            r#""runOutputName": "tiny", "replicationRegions": ["westeurope", "northeurope"],"#,
        );
        assert!(Pipeline::parse("tiny", &alone).is_ok());
    }

    #[test]
    fn defaults_are_what_a_platform_team_expects() {
        let p = Pipeline::parse("tiny", TINY).unwrap();
        assert_eq!(p.kiln.build.max_attempts, 3);
        assert_eq!(p.kiln.build.max_concurrent, 1);
        assert!(p.kiln.retention.protect_in_use);
        assert_eq!(p.build_timeout_minutes(), 240);
    }

    fn paths(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn one_run_reports_every_problem_of_the_file_with_its_path() {
        let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
        let props = &mut doc["properties"];
        props["source"].as_object_mut().unwrap().remove("offer");
        props["customize"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "Ansible", "playbook": "site.yml"}));
        props["distribute"] = serde_json::json!([]);
        doc.as_object_mut().unwrap().remove("identity");

        let errs = Pipeline::parse("tiny", &doc.to_string()).unwrap_err();

        let mut got = paths(&errs);
        got.sort();
        assert_eq!(
            got,
            [
                "identity",
                "properties.customize[1].type",
                "properties.distribute",
                "properties.source"
            ],
            "{errs:#?}"
        );
        let at = |p: &str| &errs.iter().find(|e| e.path == p).unwrap().message;
        assert!(at("properties.source").contains("missing field `offer`"));
        assert!(at("properties.customize[1].type").contains("unknown variant `Ansible`"));
        assert!(at("properties.distribute").contains("at least one distribution target"));
        assert!(at("identity").contains("UserAssigned"));
    }

    #[test]
    fn each_list_element_is_read_on_its_own_and_keeps_its_index() {
        let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
        let good = doc["properties"]["distribute"][0].clone();
        let mut versioned = good.clone();
        versioned["runOutputName"] = "second".into();
        versioned["galleryImageId"] = format!(
            "{}/versions/1.0.0",
            good["galleryImageId"].as_str().unwrap()
        )
        .into();
        let mut broken = good.clone();
        broken.as_object_mut().unwrap().remove("galleryImageId");
        doc["properties"]["distribute"] = serde_json::json!([broken, versioned]);

        let errs = Pipeline::parse("tiny", &doc.to_string()).unwrap_err();

        assert_eq!(
            paths(&errs),
            [
                "properties.distribute[0]",
                "properties.distribute[1].galleryImageId"
            ],
            "the semantic checks still look at the target that parsed: {errs:#?}"
        );
    }

    #[test]
    fn a_bad_kiln_key_does_not_hide_the_next_one() {
        let text = TINY.replace(
            r#""versioning": {"scheme": "latest", "major": 1}"#,
            r#""retention": {"keepLatest": "five"}, "build": {"maxAttempts": "three"}, "triggers": {"baseImage": {"enabled": true}}"#,
        );
        let errs = Pipeline::parse("tiny", &text).unwrap_err();
        assert_eq!(
            paths(&errs),
            ["kiln.retention.keepLatest", "kiln.build.maxAttempts"]
        );
    }

    #[test]
    fn an_invalid_file_still_yields_its_template_for_the_provider_checks() {
        let text = TINY.replace(r#""versioning""#, r#""retension": {}, "versioning""#);
        match Pipeline::read("tiny", &text) {
            Parsed::Invalid { errors, template } => {
                assert_eq!(paths(&errors), ["kiln.retension"]);
                assert_eq!(template.unwrap().location, "westeurope");
            }
            Parsed::Valid(_) => panic!("an unknown kiln key is an error"),
        }
    }

    #[test]
    fn a_pasted_template_without_a_kiln_section_takes_every_default() {
        let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
        doc.as_object_mut().unwrap().remove(KILN_KEY);
        let p = Pipeline::parse("tiny", &doc.to_string()).unwrap();
        assert_eq!(p.kiln.versioning, Versioning::default());
    }

    #[test]
    fn the_identity_is_one_user_assigned_identity() {
        let with_identity = |identity: serde_json::Value| {
            let mut doc: serde_json::Value = serde_json::from_str(TINY).unwrap();
            doc["identity"] = identity;
            Pipeline::parse("tiny", &doc.to_string())
        };
        let errs = with_identity(serde_json::json!({"type": "None"})).unwrap_err();
        assert_eq!(paths(&errs), ["identity.type"]);
        let errs = with_identity(serde_json::json!({"type": "UserAssigned"})).unwrap_err();
        assert_eq!(paths(&errs), ["identity.userAssignedIdentities"]);
        let errs = with_identity(serde_json::json!({"type": "UserAssigned",
            "userAssignedIdentities": {"/a": {}, "/b": {}}}))
        .unwrap_err();
        assert_eq!(paths(&errs), ["identity.userAssignedIdentities"]);
        let errs = with_identity(serde_json::json!({"type": "SystemAssigned"})).unwrap_err();
        assert_eq!(paths(&errs), ["identity.type"]);
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let errs = Pipeline::parse("tiny", "{\n  \"location\": ,\n}").unwrap_err();
        assert!(errs[0].path.starts_with("line 2"), "{}", errs[0].path);
    }
}
