//! Evidence in Blob Storage, for the Azure face: every instance of the
//! Function App writes and reads the same container, and the evidence
//! outlives any instance (the data folder there is per-instance scratch).
//! The layout is the data folder's, as blob names:
//!
//! ```text
//! <container>/<subscription>/<resource group>/<gallery>/<image>/definition.id
//! <container>/<subscription>/<resource group>/<gallery>/<image>/<version>/sbom.spdx.json …
//! ```
//!
//! A blob is replaced in one Put Blob, so a reader sees the old file or
//! the new one. The container is created before the first use.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::azure::blob::BlobClient;
use super::evidence_files::{definition_segments, DEFINITION_FILE};
use crate::domain::version::ImageVersion;
use crate::ports::{EvidenceFile, EvidenceStore};

pub struct EvidenceBlobs {
    client: BlobClient,
    container_made: OnceCell<()>,
}

impl EvidenceBlobs {
    pub fn new(client: BlobClient) -> Self {
        Self {
            client,
            container_made: OnceCell::new(),
        }
    }

    /// The container, made once per process before its first use: a new
    /// store reads as empty, and a container that goes missing later is an
    /// error, not an empty store.
    async fn ready(&self) -> anyhow::Result<()> {
        self.container_made
            .get_or_try_init(|| self.client.ensure_container())
            .await
            .map(|_| ())
    }

    fn prefix(definition_id: &str) -> anyhow::Result<String> {
        Ok(format!(
            "{}/",
            definition_segments(definition_id)?.join("/")
        ))
    }

    fn content_type(file: EvidenceFile) -> &'static str {
        match file {
            EvidenceFile::Sbom
            | EvidenceFile::BaseSbom
            | EvidenceFile::Provenance
            | EvidenceFile::Findings
            | EvidenceFile::Summary => "application/json",
        }
    }
}

#[async_trait]
impl EvidenceStore for EvidenceBlobs {
    async fn put(
        &self,
        definition_id: &str,
        version: ImageVersion,
        file: EvidenceFile,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let prefix = Self::prefix(definition_id)?;
        self.ready().await?;
        // The id as first written, whoever writes first (If-None-Match: *).
        self.client
            .create(
                &format!("{prefix}{DEFINITION_FILE}"),
                "text/plain",
                definition_id.as_bytes(),
            )
            .await?;
        self.client
            .put(
                &format!("{prefix}{version}/{}", file.file_name()),
                Self::content_type(file),
                bytes,
            )
            .await
    }

    async fn get(
        &self,
        definition_id: &str,
        version: ImageVersion,
        file: EvidenceFile,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let prefix = Self::prefix(definition_id)?;
        self.ready().await?;
        self.client
            .get(&format!("{prefix}{version}/{}", file.file_name()))
            .await
    }

    async fn versions(&self, definition_id: &str) -> anyhow::Result<Vec<ImageVersion>> {
        let prefix = Self::prefix(definition_id)?;
        self.ready().await?;
        let listing = self.client.list(&prefix, Some("/")).await?;
        let mut out: Vec<ImageVersion> = listing
            .prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix)?.strip_suffix('/')?.parse().ok())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn definitions(&self) -> anyhow::Result<Vec<String>> {
        self.ready().await?;
        let listing = self.client.list("", None).await?;
        let mut out = Vec::new();
        for name in listing
            .blobs
            .iter()
            .filter(|n| n.ends_with(&format!("/{DEFINITION_FILE}")) && n.matches('/').count() == 4)
        {
            if let Some(id) = self.client.get(name).await? {
                out.push(String::from_utf8_lossy(&id).trim().to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::providers::azure::blob::parse_connection_string;
    use crate::providers::evidence_files::conformance::{self, DEF};
    use crate::store::table::testing::Azurite;
    use crate::store::table::Credential;

    fn store(azurite: &Azurite, container: &str) -> EvidenceBlobs {
        let (endpoint, key) = parse_connection_string(&azurite.connection_string()).unwrap();
        EvidenceBlobs::new(
            BlobClient::new(
                &endpoint,
                container,
                Credential::SharedKey(key),
                reqwest::Client::new(),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn blobs_round_trip_per_version_and_list_back_on_azurite() {
        let azurite = Azurite::start_blob();
        let ev = store(&azurite, "kiln-evidence");
        // Nothing yet, not even the container: reads and listings are empty.
        conformance::round_trip(&ev).await;
        let v2 = ImageVersion::new(1, 0, 1);
        ev.put(DEF, v2, EvidenceFile::Findings, b"{}")
            .await
            .unwrap();
        // A second instance (a second client on the same container) sees it all.
        let other = store(&azurite, "kiln-evidence");
        assert_eq!(other.definitions().await.unwrap(), vec![DEF.to_string()]);
        assert_eq!(
            other
                .get(DEF, v2, EvidenceFile::Findings)
                .await
                .unwrap()
                .unwrap(),
            b"{}"
        );
        // Another container is another store.
        assert_eq!(
            store(&azurite, "other-evidence")
                .versions(DEF)
                .await
                .unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn a_wrong_key_is_an_error_that_names_the_operation_not_an_empty_store() {
        let azurite = Azurite::start_blob();
        let (endpoint, _) = parse_connection_string(&azurite.connection_string()).unwrap();
        let wrong = crate::store::table::SharedKey::new(
            "devstoreaccount1",
            &Secret::new("d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="),
        )
        .unwrap();
        let ev = EvidenceBlobs::new(
            BlobClient::new(
                &endpoint,
                "kiln-evidence",
                Credential::SharedKey(wrong),
                reqwest::Client::new(),
            )
            .unwrap(),
        );
        let e = ev
            .put(DEF, ImageVersion::new(1, 0, 0), EvidenceFile::Sbom, b"x")
            .await
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("create container kiln-evidence") && text.contains("403"),
            "{text}"
        );
        assert!(
            !text.contains("d3Jvbmcta2V5"),
            "the key is never quoted: {text}"
        );
    }
}
