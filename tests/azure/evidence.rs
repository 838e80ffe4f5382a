//! Evidence through the Azure face: the `kiln-sbom` step kiln appends prints
//! the image's packages into AIB's customization log (the simulator prints
//! what the real step would), kiln reads them back into the version's SBOM
//! and signs provenance with the Key Vault key. The evidence is kept in
//! Blob Storage (an Azurite the test starts), as a scaled-out app keeps it.

use serde_json::json;

use kiln::domain::evidence::dsse::{verify_envelope, Envelope};
use kiln::domain::evidence::spdx::from_spdx_json;
use kiln::domain::version::ImageVersion;
use kiln::ports::{EvidenceFile, EvidenceStore};
use kiln::providers::azure::blob::{parse_connection_string, BlobClient};
use kiln::providers::evidence_blobs::EvidenceBlobs;
use kiln::sim::server::SimOptions;
use kiln::store::table::testing::Azurite;
use kiln::store::table::Credential;

use super::harness::{bounded, tiny, World};

#[tokio::test]
async fn an_azure_build_that_installs_jq_has_an_sbom_listing_it_and_signed_provenance() {
    bounded(async {
        let azurite = Azurite::start_blob();
        let connection = azurite.connection_string().expose().to_string();
        let w = World::with_env(
            SimOptions::new(600),
            &[("KILN_EVIDENCE_CONNECTION", connection)],
            |sub| {
                let mut doc = tiny(sub);
                doc["properties"]["customize"].as_array_mut().unwrap().push(
                    json!({"type": "Shell", "name": "tools", "inline": [
                        "sudo apt-get update",
                        "sudo apt-get install -y jq"
                    ]}),
                );
                vec![("tiny".into(), doc)]
            },
        )
        .await;
        let id = w.request_build("tiny", "sbom-e2e").await;
        let done = w.until(&id, "succeeded").await;
        let version: ImageVersion = done["version"].as_str().unwrap().parse().unwrap();

        // AIB ran the step kiln appended, last, and kiln's copy of the log
        // has what it printed.
        let (status, log) = w.log(&id, 1).await;
        assert_eq!(status, 200, "{log}");
        let tools = log.find("(tools)").expect("the pipeline's step ran");
        let sbom_step = log.find("(kiln-sbom)").expect("the kiln-sbom step ran");
        assert!(tools < sbom_step, "{log}");
        assert!(log.contains(":end "), "{log}");

        let completed = w
            .events()
            .into_iter()
            .find(|e| {
                e["type"] == "dev.kiln.build.succeeded" && e["data"]["buildId"] == id.as_str()
            })
            .expect("a completion event");
        let evidence = &completed["data"]["evidence"];
        assert!(
            evidence["sbom"]["packages"].as_u64().unwrap_or(0) > 0,
            "{evidence}"
        );

        let definition = tiny(&w.subscription())["properties"]["distribute"][0]["galleryImageId"]
            .as_str()
            .unwrap()
            .to_string();
        // In the container, where every instance reads it, and not in
        // this instance's data folder.
        assert!(!w.data_dir().join("evidence").exists());
        let (endpoint, key) = parse_connection_string(&azurite.connection_string()).unwrap();
        let store = EvidenceBlobs::new(
            BlobClient::new(
                &endpoint,
                "kiln-evidence",
                Credential::SharedKey(key),
                reqwest::Client::new(),
            )
            .unwrap(),
        );
        let bytes = store
            .get(&definition, version, EvidenceFile::Sbom)
            .await
            .unwrap()
            .expect("the version's SBOM");
        let sbom = from_spdx_json(&serde_json::from_slice(&bytes).unwrap()).unwrap();
        assert_eq!(
            sbom.package("jq").map(|p| p.version.as_str()),
            Some("1.6-2.1ubuntu3")
        );
        assert!(sbom.package("curl").is_some(), "the base's packages too");
        // The API reads it back from there.
        let version_id = format!("{definition}/versions/{version}");
        let served = w
            .api_get(&format!("/api/evidence/sbom?version={version_id}"))
            .await;
        assert_eq!(
            served,
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        );
        assert_eq!(sbom.os.as_ref().map(|o| o.id.as_str()), Some("ubuntu"));

        let envelope: Envelope = serde_json::from_slice(
            &store
                .get(&definition, version, EvidenceFile::Provenance)
                .await
                .unwrap()
                .expect("the version's provenance"),
        )
        .unwrap();
        let statement = verify_envelope(&envelope, &[w.sim.key_vault().public_key()])
            .expect("signed with the Key Vault key");
        let sbom_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert!(
            statement
                .subject
                .iter()
                .any(|s| s.sha256() == Some(sbom_sha.as_str())),
            "the SBOM is a subject: {:?}",
            statement.subject
        );
    })
    .await;
}
