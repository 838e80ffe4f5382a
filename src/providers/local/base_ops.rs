//! The local base images as `kiln base` uses them: importing, listing and
//! deprecating base versions. The images themselves (folders, resolution of a
//! template's `source`) are in `bases.rs`; the port view of it
//! ([`BaseCatalog`](crate::ports::BaseCatalog)) is in `other_ports.rs`.

use anyhow::bail;

use super::bases::{self, BaseFrom, BaseImage};
use super::{util, LocalProvider};

impl LocalProvider {
    /// Adds a base version to the catalog (`urn` = `publisher:offer:sku`).
    /// A newer version of an existing URN is a base-image update.
    pub async fn import_base(
        &self,
        urn: &str,
        version: &str,
        from: BaseFrom,
    ) -> anyhow::Result<BaseImage> {
        bases::import(
            &self.inner.records,
            &self.inner.data_dir,
            urn,
            version,
            from,
        )
        .await
    }

    /// Marks a base version deprecated: pipelines following it get a warning.
    pub async fn deprecate_base(&self, urn: &str, version: &str) -> anyhow::Result<()> {
        if !self.inner.records.base_deprecate(urn, version)? {
            bail!("no base image {urn} version {version}");
        }
        Ok(())
    }

    pub async fn list_bases(&self) -> anyhow::Result<Vec<BaseImage>> {
        let mut all: Vec<BaseImage> = self
            .inner
            .records
            .bases(None)?
            .into_iter()
            .map(BaseImage::from)
            .collect();
        all.sort_by(|a, b| {
            a.urn
                .to_ascii_lowercase()
                .cmp(&b.urn.to_ascii_lowercase())
                .then_with(|| util::cmp_versions(&a.version, &b.version))
        });
        Ok(all)
    }
}
