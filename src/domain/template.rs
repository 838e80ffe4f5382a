//! A typed view of an Azure VM Image Builder image template (API 2025-10-01).
//!
//! kiln keeps the user's template as JSON and submits it verbatim (plus the
//! few fields kiln owns: tags, the exact gallery version). This typed view is
//! read from that JSON for validation and by the local provider; it is never
//! written back, so template fields kiln does not model are never dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The tags kiln sets on every image template it submits, on top of the
/// template's own (`app::render`, and the Azure adapter's body hash). ARM
/// allows 50 tags per resource, so these count against the template's.
pub const KILN_TEMPLATE_TAGS: [&str; 11] = [
    "kiln.pipeline",
    "kiln.build",
    "kiln.attempt",
    "kiln.version",
    "kiln.templateHash",
    "kiln.network",
    "kiln.stepTimeoutMinutes",
    "kiln.bootTest.check",
    "kiln.bootTest.expect",
    "kiln.bootTest.timeoutSeconds",
    "kiln.bodyHash",
];

/// The lineage tags kiln sets on every distributor's `artifactTags` (the
/// gallery version's tags), besides the promotion policy's own.
pub const KILN_ARTIFACT_TAGS: [&str; 5] = [
    "kiln.pipeline",
    "kiln.build",
    "kiln.source",
    "kiln.sourceVersion",
    "kiln.templateHash",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageTemplate {
    pub location: String,
    /// Required: AIB runs every build as a user-assigned managed identity.
    pub identity: Identity,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub properties: TemplateProperties,
}

/// `{"type": "UserAssigned", "userAssignedIdentities": {"<resource id>": {}}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    #[serde(rename = "type")]
    pub kind: IdentityType,
    /// Resource id to (server-filled) properties; AIB takes exactly one.
    #[serde(default)]
    pub user_assigned_identities: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityType {
    UserAssigned,
    /// Allowed by the API schema, refused by kiln's checks: AIB cannot build without an identity.
    None,
}

/// ARM compares enum values without regard to case (`userAssigned` is
/// accepted), so kiln does too; `SystemAssigned` gets AIB's reason.
impl<'de> Deserialize<'de> for IdentityType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "userassigned" => Ok(IdentityType::UserAssigned),
            "none" => Ok(IdentityType::None),
            _ => Err(serde::de::Error::custom(format!(
                "expected `UserAssigned`, got `{s}`: Azure VM Image Builder builds with a user-assigned identity (a system-assigned one is not supported)"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateProperties {
    pub source: Source,
    #[serde(default)]
    pub customize: Vec<Customizer>,
    #[serde(default)]
    pub validate: Option<Validate>,
    pub distribute: Vec<Distributor>,
    #[serde(default)]
    pub error_handling: Option<ErrorHandling>,
    /// 0 means AIB's default of 240 minutes; the spec allows 0..=960.
    #[serde(default)]
    pub build_timeout_in_minutes: Option<u32>,
    #[serde(default)]
    pub vm_profile: Option<serde_json::Value>,
    #[serde(default)]
    pub staging_resource_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum Source {
    #[serde(rename_all = "camelCase")]
    PlatformImage {
        publisher: String,
        offer: String,
        sku: String,
        version: String,
        #[serde(default)]
        exact_version: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    SharedImageVersion {
        image_version_id: String,
        #[serde(default)]
        exact_version: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    ManagedImage { image_id: String },
}

impl Source {
    /// Whether the source floats (`latest`), which is what base-image triggers watch.
    pub fn floats(&self) -> bool {
        match self {
            Source::PlatformImage { version, .. } => version.eq_ignore_ascii_case("latest"),
            Source::SharedImageVersion {
                image_version_id, ..
            } => image_version_id
                .to_ascii_lowercase()
                .ends_with("/versions/latest"),
            Source::ManagedImage { .. } => false,
        }
    }

    /// A stable name of the image line, without the version: `publisher:offer:sku`
    /// for marketplace images, the image definition id for gallery sources.
    pub fn line(&self) -> String {
        match self {
            Source::PlatformImage {
                publisher,
                offer,
                sku,
                ..
            } => format!("{publisher}:{offer}:{sku}"),
            Source::SharedImageVersion {
                image_version_id, ..
            } => match image_version_id.to_ascii_lowercase().rfind("/versions/") {
                Some(i) => image_version_id[..i].to_string(),
                None => image_version_id.clone(),
            },
            Source::ManagedImage { image_id } => image_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum Customizer {
    #[serde(rename_all = "camelCase")]
    Shell {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        inline: Option<Vec<String>>,
        #[serde(default)]
        script_uri: Option<String>,
        #[serde(default)]
        sha256_checksum: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    File {
        #[serde(default)]
        name: Option<String>,
        source_uri: String,
        destination: String,
        #[serde(default)]
        sha256_checksum: Option<String>,
    },
    PowerShell {
        #[serde(default)]
        name: Option<String>,
    },
    WindowsRestart {
        #[serde(default)]
        name: Option<String>,
    },
    WindowsUpdate {
        #[serde(default)]
        name: Option<String>,
    },
}

impl Customizer {
    pub fn kind(&self) -> &'static str {
        match self {
            Customizer::Shell { .. } => "Shell",
            Customizer::File { .. } => "File",
            Customizer::PowerShell { .. } => "PowerShell",
            Customizer::WindowsRestart { .. } => "WindowsRestart",
            Customizer::WindowsUpdate { .. } => "WindowsUpdate",
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Customizer::Shell { name, .. }
            | Customizer::File { name, .. }
            | Customizer::PowerShell { name }
            | Customizer::WindowsRestart { name }
            | Customizer::WindowsUpdate { name } => name.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Validate {
    #[serde(default)]
    pub continue_distribute_on_failure: bool,
    #[serde(default)]
    pub source_validation_only: bool,
    #[serde(default, rename = "inVMValidations")]
    pub in_vm_validations: Vec<Customizer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OnBuildError {
    #[default]
    #[serde(alias = "Cleanup")]
    Cleanup,
    #[serde(alias = "Abort")]
    Abort,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorHandling {
    #[serde(default)]
    pub on_customizer_error: OnBuildError,
    #[serde(default)]
    pub on_validation_error: OnBuildError,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum Distributor {
    #[serde(rename_all = "camelCase")]
    SharedImage {
        run_output_name: String,
        gallery_image_id: String,
        #[serde(default)]
        target_regions: Vec<TargetRegion>,
        #[serde(default)]
        replication_regions: Vec<String>,
        #[serde(default)]
        exclude_from_latest: bool,
        #[serde(default)]
        artifact_tags: BTreeMap<String, String>,
        #[serde(default)]
        versioning: Option<serde_json::Value>,
    },
    #[serde(rename_all = "camelCase")]
    ManagedImage {
        run_output_name: String,
        image_id: String,
        location: String,
        #[serde(default)]
        artifact_tags: BTreeMap<String, String>,
    },
    #[serde(rename_all = "camelCase", rename = "VHD")]
    Vhd {
        run_output_name: String,
        #[serde(default)]
        uri: Option<String>,
        #[serde(default)]
        artifact_tags: BTreeMap<String, String>,
    },
}

impl Distributor {
    pub fn run_output_name(&self) -> &str {
        match self {
            Distributor::SharedImage {
                run_output_name, ..
            }
            | Distributor::ManagedImage {
                run_output_name, ..
            }
            | Distributor::Vhd {
                run_output_name, ..
            } => run_output_name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRegion {
    pub name: String,
    #[serde(default = "one")]
    pub replica_count: u32,
    #[serde(default)]
    pub storage_account_type: Option<String>,
}

fn one() -> u32 {
    1
}

/// A parsed gallery image resource id:
/// `/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/D[/versions/V]`
/// (or `/imageversions/V`, as Image Builder's run outputs write it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GalleryImageRef {
    pub subscription: String,
    pub resource_group: String,
    pub gallery: String,
    pub image: String,
    pub version: Option<String>,
}

impl GalleryImageRef {
    pub fn parse(id: &str) -> Option<Self> {
        let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
        let find = |key: &str| -> Option<String> {
            parts
                .iter()
                .position(|p| p.eq_ignore_ascii_case(key))
                .and_then(|i| parts.get(i + 1))
                .map(|s| s.to_string())
        };
        Some(Self {
            subscription: find("subscriptions")?,
            resource_group: find("resourceGroups")?,
            gallery: find("galleries")?,
            image: find("images")?,
            // Run outputs spell it `imageversions` (the 2025-10-01
            // ListRunOutputs example); resource ids `versions`.
            version: find("versions").or_else(|| find("imageversions")),
        })
    }

    pub fn definition_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/galleries/{}/images/{}",
            self.subscription, self.resource_group, self.gallery, self.image
        )
    }

    pub fn version_id(&self, version: &str) -> String {
        format!("{}/versions/{version}", self.definition_id())
    }
}

/// Each customizer and then each in-VM validator with its JSON path, the
/// order AIB runs them in; `T` is a step or whatever stands for one.
pub fn step_paths<'a, T>(
    customize: &'a [T],
    in_vm_validations: &'a [T],
) -> impl Iterator<Item = (String, &'a T)> {
    let steps = customize
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("properties.customize[{i}]"), c));
    let validators = in_vm_validations
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("properties.validate.inVMValidations[{i}]"), c));
    steps.chain(validators)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_example() -> serde_json::Value {
        serde_json::json!({
            "location": "westus",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/x": {}}},
            "properties": {
                "source": {"type": "ManagedImage", "imageId": "/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Compute/images/source_image"},
                "customize": [{"name": "Shell Customizer Example", "type": "Shell", "scriptUri": "https://example.com/path/to/script.sh"}],
                "distribute": [{"type": "ManagedImage", "imageId": "/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Compute/images/image_it_1", "location": "1_location", "runOutputName": "image_it_pir_1", "artifactTags": {"tagName": "value"}}],
                "vmProfile": {"osDiskSizeGB": 64, "vmSize": "Standard_D2s_v3"}
            }
        })
    }

    #[test]
    fn reads_the_spec_linux_example() {
        let t: ImageTemplate = serde_json::from_value(linux_example()).unwrap();
        assert_eq!(t.properties.customize[0].kind(), "Shell");
        assert_eq!(
            t.properties.distribute[0].run_output_name(),
            "image_it_pir_1"
        );
    }

    #[test]
    fn floating_sources_are_the_latest_ones() {
        let pir = |v: &str| Source::PlatformImage {
            publisher: "Canonical".into(),
            offer: "0001-com-ubuntu-server-jammy".into(),
            sku: "22_04-lts-gen2".into(),
            version: v.into(),
            exact_version: None,
        };
        assert!(pir("latest").floats());
        assert!(!pir("22.04.202401010").floats());
        let sig = Source::SharedImageVersion {
            image_version_id: "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/base/versions/latest".into(),
            exact_version: None,
        };
        assert!(sig.floats());
        assert!(sig.line().ends_with("/images/base"));
    }

    #[test]
    fn gallery_ids_parse_with_and_without_version() {
        let r = GalleryImageRef::parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/1.2.3").unwrap();
        assert_eq!(r.version.as_deref(), Some("1.2.3"));
        assert_eq!(
            r.version_id("1.2.4"),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/1.2.4"
        );
        assert!(GalleryImageRef::parse("/subscriptions/s/resourceGroups/rg").is_none());
    }

    #[test]
    fn a_run_outputs_artifact_id_names_its_version_as_imageversions() {
        // As in the 2025-10-01 ListRunOutputs example.
        let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/SharedImageOutput/imageversions/1.2.3";
        let r = GalleryImageRef::parse(id).unwrap();
        assert_eq!(r.version.as_deref(), Some("1.2.3"));
        assert_eq!(r.image, "SharedImageOutput");
    }
}
