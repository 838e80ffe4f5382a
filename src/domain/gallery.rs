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
    /// Definition names (lowercase) referenced through a shared or community
    /// gallery id that could not be mapped back to a gallery: every version
    /// of every definition of that name counts as in use (when unsure, protect).
    #[serde(default)]
    pub definition_names: BTreeSet<String>,
    /// Who holds each of the keys above (a version id, definition id or
    /// definition name, as stored there): VM, scale set and instance ids,
    /// as the inventory named them. For reports (which VMs still run a
    /// vulnerable version); retention decides by the sets alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, BTreeSet<String>>,
}

/// One `imageReference` of a VM, a scale set model or a scale set
/// instance, as far as gallery images go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageReference<'a> {
    /// `…/galleries/G/images/D[/versions/V|latest]` (or a managed image id).
    pub id: Option<&'a str>,
    /// The version a reference to `latest` (or to no version) resolved to.
    pub exact_version: Option<&'a str>,
    /// `/SharedGalleries/{uniqueName}/Images/{D}[/Versions/{V}]`.
    pub shared_gallery_image_id: Option<&'a str>,
    /// `/CommunityGalleries/{publicName}/Images/{D}[/Versions/{V}]`.
    pub community_gallery_image_id: Option<&'a str>,
}

/// How shared and community gallery ids map back to gallery resource ids:
/// a gallery's `identifier.uniqueName` and its community `publicNames`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GalleryNames {
    /// Lowercase unique name → lowercase gallery id.
    by_unique_name: BTreeMap<String, String>,
    /// Lowercase public name → lowercase gallery id.
    by_public_name: BTreeMap<String, String>,
}

impl GalleryNames {
    pub fn add(&mut self, gallery_id: &str, unique_name: Option<&str>, public_names: &[&str]) {
        let id = gallery_id.trim_end_matches('/').to_ascii_lowercase();
        if let Some(u) = unique_name.filter(|u| !u.is_empty()) {
            self.by_unique_name
                .insert(u.to_ascii_lowercase(), id.clone());
        }
        for p in public_names.iter().filter(|p| !p.is_empty()) {
            self.by_public_name
                .insert(p.to_ascii_lowercase(), id.clone());
        }
    }
}

/// `/{collection}/{gallery}/Images/{definition}[/Versions/{version}]`.
fn shared_parts<'a>(id: &'a str, collection: &str) -> Option<(&'a str, &'a str, Option<&'a str>)> {
    let parts: Vec<&str> = id.trim_end_matches('/').split('/').collect();
    let fits = |i: usize, k: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(k));
    let named = |i: usize| parts.get(i).copied().filter(|p| !p.is_empty());
    if !parts.first().is_some_and(|p| p.is_empty()) || !fits(1, collection) || !fits(3, "Images") {
        return None;
    }
    let version = match parts.len() {
        5 => None,
        7 if fits(5, "Versions") => Some(named(6)?),
        _ => return None,
    };
    Some((named(2)?, named(4)?, version))
}

fn is_latest(version: Option<&str>) -> bool {
    version.is_none_or(|v| v.eq_ignore_ascii_case("latest"))
}

impl InUseSet {
    /// A gallery image id: a version id protects that version; a reference
    /// to `…/versions/latest` or to the definition alone pins the definition
    /// (its current latest is in use). Other ids are recorded as they are.
    pub fn add_reference(&mut self, image_reference_id: &str) {
        self.reference(image_reference_id, None);
    }

    /// [`Self::add_reference`], remembering that `consumer` holds it.
    pub fn add_reference_by(&mut self, consumer: &str, image_reference_id: &str) {
        self.reference(image_reference_id, Some(consumer));
    }

    fn reference(&mut self, image_reference_id: &str, consumer: Option<&str>) {
        let id = image_reference_id
            .trim_end_matches('/')
            .to_ascii_lowercase();
        let key = match id.rsplit_once("/versions/") {
            Some((definition, "latest")) => {
                self.definitions.insert(definition.to_string());
                definition.to_string()
            }
            Some(_) => {
                self.versions.insert(id.clone());
                id
            }
            None => {
                self.definitions.insert(id.clone());
                id
            }
        };
        self.held_by(key, consumer);
    }

    /// An unmapped shared or community reference's definition name.
    fn name(&mut self, name: &str, consumer: Option<&str>) {
        let name = name.to_ascii_lowercase();
        self.definition_names.insert(name.clone());
        self.held_by(name, consumer);
    }

    fn held_by(&mut self, key: String, consumer: Option<&str>) {
        if let Some(c) = consumer.filter(|c| !c.is_empty()) {
            self.consumers.entry(key).or_default().insert(c.to_string());
        }
    }

    /// Every gallery image an `imageReference` can name. A reference to
    /// `latest` pins the definition *and* the version it resolved to
    /// (`exactVersion`), which a later latest no longer is. A shared or
    /// community id whose gallery is unknown counts its definition's name as
    /// in use everywhere, never as nothing.
    pub fn add_image_reference(&mut self, r: &ImageReference<'_>, names: &GalleryNames) {
        self.image_reference(r, names, None);
    }

    /// [`Self::add_image_reference`], remembering that `consumer` holds it.
    pub fn add_image_reference_by(
        &mut self,
        consumer: &str,
        r: &ImageReference<'_>,
        names: &GalleryNames,
    ) {
        self.image_reference(r, names, Some(consumer));
    }

    fn image_reference(
        &mut self,
        r: &ImageReference<'_>,
        names: &GalleryNames,
        consumer: Option<&str>,
    ) {
        let exact = r
            .exact_version
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("latest"));
        if let Some(id) = r.id.filter(|id| {
            id.to_ascii_lowercase()
                .contains("/providers/microsoft.compute/galleries/")
        }) {
            self.reference(id, consumer);
            let id = id.trim_end_matches('/');
            let (definition, version) = match id.to_ascii_lowercase().rsplit_once("/versions/") {
                Some((d, v)) => (d.len(), Some(v.to_string())),
                None => (id.len(), None),
            };
            if let (true, Some(exact)) = (is_latest(version.as_deref()), exact) {
                self.reference(&format!("{}/versions/{exact}", &id[..definition]), consumer);
            }
        }
        let shared = [
            (
                r.shared_gallery_image_id,
                "SharedGalleries",
                &names.by_unique_name,
            ),
            (
                r.community_gallery_image_id,
                "CommunityGalleries",
                &names.by_public_name,
            ),
        ];
        for (id, collection, map) in shared {
            let Some(id) = id.filter(|i| !i.is_empty()) else {
                continue;
            };
            let Some((gallery, definition, version)) = shared_parts(id, collection) else {
                // Not a shape kiln knows: protect by the last name that could be a definition.
                let name = id.trim_end_matches('/').rsplit('/').find(|p| !p.is_empty());
                if let Some(name) = name {
                    self.name(name, consumer);
                }
                continue;
            };
            let Some(gallery_id) = map.get(&gallery.to_ascii_lowercase()) else {
                self.name(definition, consumer);
                continue;
            };
            let definition_id = format!("{gallery_id}/images/{definition}");
            match version {
                Some(v) if !is_latest(Some(v)) => {
                    self.reference(&format!("{definition_id}/versions/{v}"), consumer)
                }
                Some(_) | None => {
                    self.reference(&definition_id, consumer);
                    if let Some(exact) = exact {
                        self.reference(&format!("{definition_id}/versions/{exact}"), consumer);
                    }
                }
            }
        }
    }

    pub fn uses_version(&self, v: &GalleryVersion) -> bool {
        self.versions.contains(&v.id().to_ascii_lowercase()) || self.uses_by_name(&v.definition_id)
    }

    /// The consumers known to run this exact version, by its id. (A
    /// consumer of the definition's latest runs whichever version that is;
    /// the inventory resolves it through `exactVersion` where Azure reports
    /// one.)
    pub fn consumers_of(&self, v: &GalleryVersion) -> BTreeSet<String> {
        self.consumers
            .get(&v.id().to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Consumers that may run it: they reference a definition of its name
    /// through a shared or community gallery kiln could not map, so
    /// retention protects the version, but they may run any version of any
    /// definition of that name.
    pub fn maybe_consumers_of(&self, v: &GalleryVersion) -> BTreeSet<String> {
        let name = v
            .definition_id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        self.consumers.get(&name).cloned().unwrap_or_default()
    }

    pub fn uses_latest_of(&self, definition_id: &str) -> bool {
        self.definitions
            .contains(&definition_id.to_ascii_lowercase())
            || self.uses_by_name(definition_id)
    }

    /// Whether an unmapped shared or community reference names this
    /// definition: then all its versions are in use.
    pub fn uses_by_name(&self, definition_id: &str) -> bool {
        let name = definition_id.trim_end_matches('/').rsplit('/').next();
        name.is_some_and(|n| self.definition_names.contains(&n.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GALLERY: &str =
        "/subscriptions/s/resourceGroups/rg-images/providers/Microsoft.Compute/galleries/corp";

    fn def(name: &str) -> String {
        format!("{GALLERY}/images/{name}").to_ascii_lowercase()
    }

    fn names() -> GalleryNames {
        let mut n = GalleryNames::default();
        n.add(
            GALLERY,
            Some("s-CORP"),
            &["corp-7f3e9a1c-5b2d-4e8f-a6c1-9d0b3e5f7a21"],
        );
        n
    }

    fn version(definition: &str, v: &str) -> GalleryVersion {
        GalleryVersion {
            definition_id: definition.into(),
            version: v.parse().unwrap(),
            published: None,
            exclude_from_latest: false,
            end_of_life: None,
            block_deletion_before_end_of_life: false,
            tags: BTreeMap::new(),
            replication: vec![],
            provisioning_state: "Succeeded".into(),
        }
    }

    #[test]
    fn a_reference_to_versions_latest_pins_the_definition() {
        let mut set = InUseSet::default();
        set.add_reference(&format!("{GALLERY}/images/ubuntu/Versions/Latest"));
        assert_eq!(set.definitions, BTreeSet::from([def("ubuntu")]));
        assert!(set.versions.is_empty());
    }

    #[test]
    fn a_vm_on_latest_also_uses_the_exact_version_it_runs() {
        let mut set = InUseSet::default();
        let r = ImageReference {
            id: Some(&format!("{GALLERY}/images/ubuntu/versions/latest")),
            exact_version: Some("1.0.7"),
            ..ImageReference::default()
        };
        set.add_image_reference(&r, &names());
        assert_eq!(set.definitions, BTreeSet::from([def("ubuntu")]));
        assert_eq!(
            set.versions,
            BTreeSet::from([format!("{}/versions/1.0.7", def("ubuntu"))])
        );
        // A pinned version's exactVersion says nothing more.
        let mut set = InUseSet::default();
        let r = ImageReference {
            id: Some(&format!("{GALLERY}/images/ubuntu/versions/1.0.3")),
            exact_version: Some("1.0.3"),
            ..ImageReference::default()
        };
        set.add_image_reference(&r, &names());
        assert!(set.definitions.is_empty());
        assert_eq!(set.versions.len(), 1);
    }

    #[test]
    fn shared_and_community_ids_map_back_to_the_gallery() {
        let mut set = InUseSet::default();
        let shared = ImageReference {
            shared_gallery_image_id: Some("/SharedGalleries/s-corp/Images/ubuntu/Versions/1.0.2"),
            ..ImageReference::default()
        };
        let community = ImageReference {
            community_gallery_image_id: Some(
                "/CommunityGalleries/corp-7f3e9a1c-5b2d-4e8f-a6c1-9d0b3e5f7a21/Images/windows/Versions/latest",
            ),
            exact_version: Some("2.0.0"),
            ..ImageReference::default()
        };
        set.add_image_reference(&shared, &names());
        set.add_image_reference(&community, &names());
        assert_eq!(
            set.versions,
            BTreeSet::from([
                format!("{}/versions/1.0.2", def("ubuntu")),
                format!("{}/versions/2.0.0", def("windows")),
            ])
        );
        assert_eq!(set.definitions, BTreeSet::from([def("windows")]));
        assert!(set.definition_names.is_empty());
    }

    #[test]
    fn an_unmapped_shared_id_protects_every_definition_of_that_name() {
        let mut set = InUseSet::default();
        let r = ImageReference {
            shared_gallery_image_id: Some(
                "/SharedGalleries/someone-else/Images/Ubuntu/Versions/1.0.2",
            ),
            ..ImageReference::default()
        };
        set.add_image_reference(&r, &names());
        assert_eq!(set.definition_names, BTreeSet::from(["ubuntu".to_string()]));
        assert!(set.uses_version(&version(&format!("{GALLERY}/images/ubuntu"), "1.0.0")));
        assert!(set.uses_latest_of(&format!("{GALLERY}/images/UBUNTU")));
        assert!(!set.uses_version(&version(&format!("{GALLERY}/images/windows"), "1.0.0")));
    }

    #[test]
    fn managed_images_and_marketplace_references_are_not_gallery_images() {
        let mut set = InUseSet::default();
        let r = ImageReference {
            id: Some(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/legacy",
            ),
            ..ImageReference::default()
        };
        set.add_image_reference(&r, &names());
        set.add_image_reference(&ImageReference::default(), &names());
        assert_eq!(set, InUseSet::default());
    }

    #[test]
    fn consumers_of_a_version_are_the_vms_and_scale_sets_that_hold_it() {
        let mut set = InUseSet::default();
        let ubuntu = format!("{GALLERY}/images/ubuntu");
        set.add_reference_by("vm-pinned", &format!("{ubuntu}/versions/1.0.7"));
        let on_latest = ImageReference {
            id: Some(&format!("{ubuntu}/versions/latest")),
            exact_version: Some("1.0.7"),
            ..ImageReference::default()
        };
        set.add_image_reference_by("ss-web", &on_latest, &names());
        let unmapped = ImageReference {
            shared_gallery_image_id: Some(
                "/SharedGalleries/elsewhere/Images/Ubuntu/Versions/9.9.9",
            ),
            ..ImageReference::default()
        };
        set.add_image_reference_by("vm-partner", &unmapped, &names());
        set.add_reference_by("vm-other", &format!("{ubuntu}/versions/1.0.6"));

        let held = |v: &str| set.consumers_of(&version(&ubuntu, v));
        assert_eq!(
            held("1.0.7"),
            BTreeSet::from(["vm-pinned", "ss-web"].map(String::from))
        );
        assert_eq!(held("1.0.6"), BTreeSet::from(["vm-other".to_string()]));
        assert_eq!(held("1.0.5"), BTreeSet::new());
        // The partner's reference names only a definition called ubuntu:
        // it may run any of them, and is said to be a maybe.
        for v in ["1.0.7", "1.0.5"] {
            assert_eq!(
                set.maybe_consumers_of(&version(&ubuntu, v)),
                BTreeSet::from(["vm-partner".to_string()])
            );
        }
        // The sets retention reads are the same as without names.
        let mut anonymous = InUseSet::default();
        anonymous.add_reference(&format!("{ubuntu}/versions/1.0.7"));
        anonymous.add_image_reference(&on_latest, &names());
        anonymous.add_image_reference(&unmapped, &names());
        anonymous.add_reference(&format!("{ubuntu}/versions/1.0.6"));
        assert_eq!(anonymous.versions, set.versions);
        assert_eq!(anonymous.definitions, set.definitions);
        assert_eq!(anonymous.definition_names, set.definition_names);
        assert!(anonymous.consumers.is_empty());
    }
}
