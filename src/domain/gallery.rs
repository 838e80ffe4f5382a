//! Gallery image versions as retention and lineage see them, and the set of
//! images consumers use.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::version::ImageVersion;

/// One region's replica state of a gallery version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionReplication {
    pub region: String,
    pub replica_count: u32,
    /// `Replicating | Completed | Failed`, as the gallery says.
    pub state: String,
}

/// A gallery image version and the metadata retention and lineage need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GalleryVersion {
    /// Image definition resource id.
    pub definition_id: String,
    pub version: ImageVersion,
    /// `None` when the gallery did not say (such a version is never "old").
    pub published: Option<DateTime<Utc>>,
    pub exclude_from_latest: bool,
    pub end_of_life: Option<DateTime<Utc>>,
    pub block_deletion_before_end_of_life: bool,
    pub tags: BTreeMap<String, String>,
    pub replication: Vec<RegionReplication>,
    /// `Creating | Succeeded | Failed | Deleting …`
    pub provisioning_state: String,
}

impl GalleryVersion {
    pub fn id(&self) -> String {
        format!("{}/versions/{}", self.definition_id, self.version)
    }
}

/// Which gallery images consumers (VMs, scale sets and their models) reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUseSet {
    /// Version resource ids, lowercase (ARM ids compare case-insensitively).
    pub versions: BTreeSet<String>,
    /// Definition ids (lowercase) referenced without a version: their current latest is in use.
    pub definitions: BTreeSet<String>,
}

impl InUseSet {
    pub fn add_reference(&mut self, image_reference_id: &str) {
        let id = image_reference_id
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if id.contains("/versions/") {
            self.versions.insert(id);
        } else {
            self.definitions.insert(id);
        }
    }

    pub fn uses_version(&self, v: &GalleryVersion) -> bool {
        self.versions.contains(&v.id().to_ascii_lowercase())
    }

    pub fn uses_latest_of(&self, definition_id: &str) -> bool {
        self.definitions
            .contains(&definition_id.to_ascii_lowercase())
    }
}
