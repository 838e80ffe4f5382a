//! The `customization.log` of an Image Builder run, read from the staging
//! resource group's storage account.
//!
//! AIB writes the log to the `packerlogs` container of a storage account it
//! creates in the template's staging resource group
//! (`properties.exactStagingResourceGroup`), and deletes it with the
//! template. kiln reads it while the run goes (for `kiln logs --follow`) and
//! copies it into its own store before the template is retired. A failed
//! run's message names the blob too, but that text can carry what a
//! customizer printed, so kiln never sends a token to a URL found there:
//! it reads only accounts in the template's own staging group.
//!
//! The blob is read with the app's identity (`Storage Blob Data Reader` on
//! the staging groups; `kiln preflight` checks it) through the same client,
//! re-based on the account's blob endpoint. The token goes only to an Azure
//! blob endpoint, or to the simulator that answers for ARM.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::{Method, Url};
use serde_json::Value;

use super::arm::{ArmClient, RetryPolicy};
use crate::ports::ProviderError;

pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Blob service version sent with bearer tokens (OAuth needs 2017-11-09 or later).
const BLOB_API_VERSION: &str = "2021-08-06";
const STORAGE_API_VERSION: &str = "2023-05-01";
const CONTAINER: &str = "packerlogs";

/// Blob hosts of the Azure clouds.
const BLOB_HOST_SUFFIXES: &[&str] = &[
    ".blob.core.windows.net",
    ".blob.core.usgovcloudapi.net",
    ".blob.core.chinacloudapi.cn",
];

pub struct StagingLogs {
    arm: ArmClient,
    /// Where each template's log was found, so following a log costs one read.
    located: Mutex<HashMap<String, Url>>,
}

impl StagingLogs {
    pub fn new(arm: ArmClient) -> Self {
        Self {
            arm,
            located: Mutex::new(HashMap::new()),
        }
    }

    /// The log of template `name` (its ARM document `doc`) from byte
    /// `offset` on; `None` when the run has no log (yet, or any more).
    pub async fn read(
        &self,
        name: &str,
        doc: &Value,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, ProviderError> {
        let known = self.located.lock().ok().and_then(|m| m.get(name).cloned());
        let url = match known {
            Some(u) => u,
            None => match self.locate(doc).await? {
                Some(u) => {
                    if let Ok(mut m) = self.located.lock() {
                        m.insert(name.to_string(), u.clone());
                    }
                    u
                }
                None => return Ok(None),
            },
        };
        self.fetch(&url, offset).await
    }

    async fn locate(&self, doc: &Value) -> Result<Option<Url>, ProviderError> {
        let Some(group) = doc
            .pointer("/properties/exactStagingResourceGroup")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let accounts = match self
            .arm
            .list_all(&format!(
                "{}/providers/Microsoft.Storage/storageAccounts?api-version={STORAGE_API_VERSION}",
                group.trim_end_matches('/')
            ))
            .await
        {
            Ok(a) => a,
            // The staging group is created with the run and goes with the template.
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for account in accounts {
            let Some(endpoint) = account
                .pointer("/properties/primaryEndpoints/blob")
                .and_then(Value::as_str)
                .and_then(|e| self.allowed(e))
            else {
                continue;
            };
            if let Some(url) = self.find_in_container(&endpoint).await? {
                return Ok(Some(url));
            }
        }
        Ok(None)
    }

    /// The newest `customization.log` in the account's `packerlogs` container.
    async fn find_in_container(&self, endpoint: &Url) -> Result<Option<Url>, ProviderError> {
        let client = self.blob_client(endpoint);
        let list = format!(
            "{}{CONTAINER}?restype=container&comp=list",
            with_slash(endpoint.path())
        );
        let r = client
            .send_with(Method::GET, &list, RetryPolicy::Idempotent, |b| {
                b.header("x-ms-version", BLOB_API_VERSION)
            })
            .await?;
        if r.status == 404 {
            return Ok(None);
        }
        let r = r.ok()?;
        let name = blob_names(&r.body)
            .into_iter()
            .filter(|n| n.ends_with("/customization.log") || n == "customization.log")
            .max();
        Ok(name.and_then(|n| {
            endpoint
                .join(&format!("{CONTAINER}/{n}"))
                .ok()
                .filter(|u| self.allowed(u.as_str()).is_some())
        }))
    }

    async fn fetch(&self, url: &Url, offset: u64) -> Result<Option<Vec<u8>>, ProviderError> {
        let client = self.blob_client(url);
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let r = client
            .send_with(Method::GET, &target, RetryPolicy::Idempotent, |b| {
                b.header("x-ms-version", BLOB_API_VERSION)
                    .header("x-ms-range", format!("bytes={offset}-"))
            })
            .await?;
        match r.status {
            200 | 206 => Ok(Some(r.body.into_bytes())),
            // The log is not that long (yet): nothing new from `offset`.
            416 => Ok(Some(Vec::new())),
            404 => Ok(None),
            _ => Err(r.error().into()),
        }
    }

    fn blob_client(&self, url: &Url) -> ArmClient {
        let origin = url.origin().ascii_serialization();
        self.arm.rebased(&origin, STORAGE_SCOPE, "storage")
    }

    /// `url` if the token may go there: an Azure blob endpoint over https,
    /// or the host kiln already sends ARM calls to (the simulator).
    fn allowed(&self, url: &str) -> Option<Url> {
        let u = Url::parse(url).ok()?;
        let host = u.host_str()?.to_ascii_lowercase();
        let azure = u.scheme() == "https" && BLOB_HOST_SUFFIXES.iter().any(|s| host.ends_with(s));
        let same_as_arm =
            Url::parse(&self.arm.options().base_url).is_ok_and(|base| base.origin() == u.origin());
        if azure || same_as_arm {
            Some(u)
        } else {
            tracing::warn!(host = %host, "a log location outside Azure blob storage is ignored");
            None
        }
    }
}

fn with_slash(path: &str) -> String {
    if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    }
}

/// The `<Name>` of every `<Blob>` in a List Blobs answer. The answer's shape
/// is fixed and small; reading the one element kiln needs does not call for
/// an XML parser.
fn blob_names(xml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Blob>") {
        rest = &rest[start + 6..];
        let end = rest.find("</Blob>").unwrap_or(rest.len());
        let blob = &rest[..end];
        if let (Some(a), Some(b)) = (blob.find("<Name>"), blob.find("</Name>")) {
            if a + 6 <= b {
                names.push(unescape(&blob[a + 6..b]));
            }
        }
        rest = &rest[end..];
    }
    names
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::azure::arm::testing::client;
    use serde_json::json;
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const RG: &str = "/subscriptions/s/resourceGroups/IT_rg-kiln_kiln-b1-a1_0a1b2c3d";

    fn doc(message: &str) -> Value {
        json!({"properties": {
            "exactStagingResourceGroup": RG,
            "lastRunStatus": {"runState": "Failed", "message": message}
        }})
    }

    #[tokio::test]
    async fn a_log_url_in_the_run_message_gets_no_token() {
        // The message names another account: kiln does not go there, and
        // without a staging group there is no log to read.
        let server = MockServer::start().await;
        let logs = StagingLogs::new(client(&server.uri()).0);
        let d = json!({"properties": {"lastRunStatus": {"runState": "Failed",
            "message": "Image Build log location: https://attacker.blob.core.windows.net/packerlogs/x/customization.log."}}});
        assert_eq!(logs.read("t", &d, 0).await.unwrap(), None);
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[test]
    fn blob_names_are_read_from_a_list_blobs_answer() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="packerlogs"><Blobs><Blob><Name>0f1e/customization.log</Name><Properties><Content-Length>12</Content-Length></Properties></Blob><Blob><Name>0f1e/validation.log</Name></Blob></Blobs><NextMarker /></EnumerationResults>"#;
        assert_eq!(
            blob_names(xml),
            vec!["0f1e/customization.log", "0f1e/validation.log"]
        );
    }

    #[tokio::test]
    async fn the_log_is_found_through_the_staging_group_and_read_from_an_offset() {
        let server = MockServer::start().await;
        let endpoint = format!("{}/blob/stkiln/", server.uri());
        Mock::given(method("GET"))
            .and(path(format!(
                "{RG}/providers/Microsoft.Storage/storageAccounts"
            )))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
                {"name": "stkiln", "properties": {"primaryEndpoints": {"blob": endpoint}}}
            ]})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/blob/stkiln/packerlogs"))
            .and(query_param("comp", "list"))
            .respond_with(ResponseTemplate::new(200).set_body_string(
                "<EnumerationResults><Blobs><Blob><Name>ab/customization.log</Name></Blob></Blobs></EnumerationResults>",
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/blob/stkiln/packerlogs/ab/customization.log"))
            .and(header("x-ms-range", "bytes=6-"))
            .respond_with(ResponseTemplate::new(206).set_body_string("world\n"))
            .expect(2)
            .mount(&server)
            .await;
        let logs = StagingLogs::new(client(&server.uri()).0);
        let d = doc("exit status 1");
        assert_eq!(
            logs.read("kiln-b1-a1", &d, 6).await.unwrap().unwrap(),
            b"world\n"
        );
        // The second read goes straight to the blob.
        logs.read("kiln-b1-a1", &d, 6).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn no_staging_group_or_an_endpoint_outside_azure_is_no_log() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("{RG}/providers/Microsoft.Storage/storageAccounts")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
                {"name": "evil", "properties": {"primaryEndpoints": {"blob": "https://attacker.example/"}}}
            ]})))
            .mount(&server)
            .await;
        let logs = StagingLogs::new(client(&server.uri()).0);
        assert_eq!(logs.read("t", &doc(""), 0).await.unwrap(), None);
        assert_eq!(
            logs.read("t2", &json!({"properties": {}}), 0)
                .await
                .unwrap(),
            None
        );
    }
}
