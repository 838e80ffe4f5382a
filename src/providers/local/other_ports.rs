//! The local provider as the gallery, base-image and in-use ports: the
//! local Compute Gallery's versions, the local base images' versions, and
//! the VMs that run published versions.

use anyhow::bail;
use async_trait::async_trait;

use super::util::{now, parse_ts};
use super::{gallery, LocalProvider};
use crate::domain::gallery::{GalleryVersion, InUseSet};
use crate::domain::template::Source;
use crate::domain::version::ImageVersion;
use crate::ports::{BaseCatalog, BaseVersion, Gallery, Inventory, VersionUpdate};

#[async_trait]
impl Gallery for LocalProvider {
    async fn list_versions(&self, definition_id: &str) -> anyhow::Result<Vec<GalleryVersion>> {
        Ok(self
            .inner
            .records
            .versions(definition_id)?
            .iter()
            .map(|v| v.to_gallery_version())
            .collect())
    }

    async fn update_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
        update: &VersionUpdate,
    ) -> anyhow::Result<()> {
        if !self.inner.records.version_update(
            definition_id,
            version,
            update.exclude_from_latest,
            update.end_of_life,
            update.tags.as_ref(),
        )? {
            bail!("gallery image version {definition_id}/versions/{version} does not exist");
        }
        Ok(())
    }

    async fn delete_version(
        &self,
        definition_id: &str,
        version: ImageVersion,
    ) -> anyhow::Result<()> {
        gallery::delete_version(&self.inner.records, definition_id, version)
    }
}

#[async_trait]
impl BaseCatalog for LocalProvider {
    async fn versions(&self, source: &Source) -> anyhow::Result<Vec<BaseVersion>> {
        let r = &self.inner.records;
        Ok(match source {
            Source::PlatformImage { .. } => r
                .bases(Some(&source.line()))?
                .into_iter()
                .map(|b| BaseVersion {
                    version: b.version,
                    deprecated: b.deprecated,
                })
                .collect(),
            Source::SharedImageVersion { .. } => {
                let t = now();
                r.versions(&source.line())?
                    .into_iter()
                    .filter(|v| v.provisioning_state == "Succeeded")
                    .map(|v| BaseVersion {
                        version: v.version.to_string(),
                        deprecated: v.exclude_from_latest
                            || v.end_of_life
                                .as_deref()
                                .and_then(parse_ts)
                                .is_some_and(|e| e <= t),
                    })
                    .collect()
            }
            Source::ManagedImage { image_id } => r
                .managed_image_get(image_id)?
                .map(|m| BaseVersion {
                    version: m.created_at,
                    deprecated: false,
                })
                .into_iter()
                .collect(),
        })
    }
}

#[async_trait]
impl Inventory for LocalProvider {
    async fn in_use(&self) -> anyhow::Result<InUseSet> {
        let mut set = InUseSet::default();
        for (vm, image, _) in self.inner.records.vms()? {
            set.add_reference_by(&vm, &image);
        }
        Ok(set)
    }
}
