//! Who the Table service thinks is calling: a Shared Key from a storage
//! connection string, or an Entra ID bearer token from kiln's [`TokenSource`].
//!
//! Shared Key for the Table service signs five lines (the Blob/Queue scheme's
//! canonicalized `x-ms-*` headers are not part of it):
//!
//! ```text
//! VERB \n Content-MD5 \n Content-Type \n Date \n CanonicalizedResource
//! ```
//!
//! `Date` is the `x-ms-date` value when that header is sent (for the Table
//! service it is never left empty), and `CanonicalizedResource` is
//! `/{account}{path as sent}` plus `?comp=…` when the URI has a `comp`
//! parameter, and no other query parameter. On a path-style endpoint (Azurite:
//! `http://127.0.0.1:10002/devstoreaccount1`) the path itself starts with the
//! account, so the account appears twice: `/devstoreaccount1/devstoreaccount1/Tables`.
//! The signature is base64(HMAC-SHA256(base64-decoded key, UTF-8 string)).
//!
//! The account key lives in a [`Secret`] until it is decoded, and the decoded
//! bytes are kept in a type whose `Debug` prints the account name only: no
//! error, log line or `Debug` output carries it.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;

use crate::config::Secret;
use crate::providers::azure::identity::TokenSource;

/// Token scope for Table Storage data-plane calls with Entra ID.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// Azurite's (and the old emulator's) fixed development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The development account's published key: not a secret, the same on every machine.
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where `UseDevelopmentStorage=true` points: Azurite's default table port, path-style.
pub const DEV_TABLE_ENDPOINT: &str = "http://127.0.0.1:10002/devstoreaccount1";

/// Why a connection string cannot be used. It never quotes a value: the
/// string carries the account key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("storage connection string: segment {position} is not Name=Value")]
    Malformed { position: usize },
    #[error("storage connection string: {0} is missing")]
    Missing(&'static str),
    #[error("storage connection string: AccountKey is not base64")]
    KeyNotBase64,
    #[error("storage connection string: {field} must be {expected}")]
    Invalid {
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "storage connection string: SharedAccessSignature is not supported; use an account key or Entra ID"
    )]
    SasNotSupported,
}

/// An account name and its decoded key.
#[derive(Clone)]
pub struct SharedKey {
    account: String,
    key: Arc<Vec<u8>>,
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKey")
            .field("account", &self.account)
            .field("key", &"***")
            .finish()
    }
}

impl SharedKey {
    pub fn new(account: impl Into<String>, key: &Secret) -> Result<Self, ConnectionStringError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.expose().trim())
            .map_err(|_| ConnectionStringError::KeyNotBase64)?;
        Ok(Self {
            account: account.into(),
            key: Arc::new(key),
        })
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The `Authorization` header value for a request.
    pub fn authorization(&self, request: &SignedParts<'_>) -> String {
        let to_sign = string_to_sign(request, &canonicalized_resource(&self.account, request.url));
        format!("SharedKey {}:{}", self.account, self.signature(&to_sign))
    }

    /// base64(HMAC-SHA256(key, string_to_sign)): the signature of any
    /// storage service's string to sign (Blob builds its own).
    pub(crate) fn signature(&self, string_to_sign: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(string_to_sign.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// What Shared Key signs of one request, exactly as it goes on the wire.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    /// Empty when the header is not sent (kiln never sends Content-MD5).
    pub content_md5: &'a str,
    /// Empty when the request has no body.
    pub content_type: &'a str,
    /// The `x-ms-date` value, RFC 1123.
    pub date: &'a str,
    pub url: &'a Url,
}

/// The Table service's five-line string to sign.
pub fn string_to_sign(parts: &SignedParts<'_>, canonicalized_resource: &str) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}",
        parts.method.to_ascii_uppercase(),
        parts.content_md5,
        parts.content_type,
        parts.date,
        canonicalized_resource
    )
}

/// `/{account}{encoded path}`, plus `?comp=…` if the query has `comp`.
pub fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut resource = format!("/{account}{}", url.path());
    if let Some((_, comp)) = url
        .query_pairs()
        .find(|(k, _)| k.eq_ignore_ascii_case("comp"))
    {
        resource.push_str("?comp=");
        resource.push_str(&comp);
    }
    resource
}

/// How requests are authorized.
#[derive(Clone)]
pub enum Credential {
    SharedKey(SharedKey),
    /// `Authorization: Bearer …` for [`STORAGE_SCOPE`], fetched per request
    /// (the source caches).
    Bearer(Arc<dyn TokenSource>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey(k) => k.fmt(f),
            Credential::Bearer(_) => f.write_str("Bearer(TokenSource)"),
        }
    }
}

/// The `Name=Value;…` fields of a storage connection string (names
/// case-insensitive, values may contain `=`), for each service's parser.
pub(crate) struct Fields<'a>(Vec<(String, &'a str)>);

impl<'a> Fields<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self, ConnectionStringError> {
        let mut fields = Vec::new();
        for (i, segment) in text.split(';').enumerate() {
            let segment = segment.trim();
            if segment.is_empty() {
                continue;
            }
            let (name, value) = segment
                .split_once('=')
                .ok_or(ConnectionStringError::Malformed { position: i + 1 })?;
            fields.push((name.trim().to_ascii_lowercase(), value.trim()));
        }
        Ok(Self(fields))
    }

    /// A field's non-empty value; `name` in lowercase.
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    }
}

/// A parsed storage connection string: where the table endpoint is, and the key.
#[derive(Debug, Clone)]
pub struct ConnectionString {
    /// Base URL of the table service, without a trailing slash.
    pub table_endpoint: String,
    pub key: SharedKey,
}

impl ConnectionString {
    /// Reads `Name=Value;…` (names case-insensitive, values may contain `=`).
    /// `UseDevelopmentStorage=true` is Azurite's account on its default port;
    /// otherwise `AccountName` and `AccountKey` are required, and the endpoint
    /// is `TableEndpoint` or `{DefaultEndpointsProtocol}://{AccountName}.table.{EndpointSuffix}`
    /// (https and `core.windows.net` when absent).
    pub fn parse(text: &Secret) -> Result<Self, ConnectionStringError> {
        let fields = Fields::parse(text.expose())?;
        let get = |name: &str| fields.get(name);
        if let Some(dev) = get("usedevelopmentstorage") {
            if !dev.eq_ignore_ascii_case("true") {
                return Err(ConnectionStringError::Invalid {
                    field: "UseDevelopmentStorage",
                    expected: "true when present",
                });
            }
            return Ok(Self {
                table_endpoint: DEV_TABLE_ENDPOINT.to_string(),
                key: SharedKey::new(DEV_ACCOUNT, &Secret::new(DEV_ACCOUNT_KEY))?,
            });
        }
        if get("sharedaccesssignature").is_some() {
            return Err(ConnectionStringError::SasNotSupported);
        }
        let account = get("accountname").ok_or(ConnectionStringError::Missing("AccountName"))?;
        let key = get("accountkey").ok_or(ConnectionStringError::Missing("AccountKey"))?;
        let table_endpoint = match get("tableendpoint") {
            Some(endpoint) => {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(ConnectionStringError::Invalid {
                        field: "TableEndpoint",
                        expected: "an http(s) URL",
                    });
                }
                endpoint.trim_end_matches('/').to_string()
            }
            None => {
                let protocol = get("defaultendpointsprotocol").unwrap_or("https");
                if protocol != "https" && protocol != "http" {
                    return Err(ConnectionStringError::Invalid {
                        field: "DefaultEndpointsProtocol",
                        expected: "https or http",
                    });
                }
                let suffix = get("endpointsuffix").unwrap_or("core.windows.net");
                format!("{protocol}://{account}.table.{suffix}")
            }
        };
        Ok(Self {
            table_endpoint,
            key: SharedKey::new(account, &Secret::new(key))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ConnectionString, ConnectionStringError> {
        ConnectionString::parse(&Secret::new(s))
    }

    #[test]
    fn the_table_string_to_sign_has_five_lines_and_no_canonicalized_headers() {
        let url = Url::parse(
            "https://myaccount.table.core.windows.net/Customers(PartitionKey='p',RowKey='r')",
        )
        .unwrap();
        let parts = SignedParts {
            method: "put",
            content_md5: "",
            content_type: "application/json",
            date: "Mon, 27 Jun 2016 15:25:14 GMT",
            url: &url,
        };
        assert_eq!(
            string_to_sign(&parts, &canonicalized_resource("myaccount", &url)),
            "PUT\n\napplication/json\nMon, 27 Jun 2016 15:25:14 GMT\n/myaccount/Customers(PartitionKey='p',RowKey='r')"
        );
    }

    #[test]
    fn the_canonicalized_resource_keeps_only_comp_of_the_query() {
        let url = Url::parse("https://acct.table.core.windows.net/t1()?$filter=a%20eq%201&NextPartitionKey=1!8!x&comp=acl").unwrap();
        assert_eq!(canonicalized_resource("acct", &url), "/acct/t1()?comp=acl");
        let url = Url::parse("https://acct.table.core.windows.net/t1()?$top=5").unwrap();
        assert_eq!(canonicalized_resource("acct", &url), "/acct/t1()");
    }

    #[test]
    fn on_a_path_style_endpoint_the_account_appears_twice() {
        let url = Url::parse("http://127.0.0.1:10002/devstoreaccount1/Tables").unwrap();
        assert_eq!(
            canonicalized_resource(DEV_ACCOUNT, &url),
            "/devstoreaccount1/devstoreaccount1/Tables"
        );
    }

    #[test]
    fn the_signature_is_base64_hmac_sha256_under_the_decoded_key() {
        // Reference value computed outside kiln:
        //   printf 'GET\n\n\nSun, 11 Oct 2009 19:52:39 GMT\n/devstoreaccount1/devstoreaccount1/Tables' \
        //   | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(echo "$DEV_ACCOUNT_KEY" | base64 -d | xxd -p -c 256) -binary | base64
        let key = SharedKey::new(DEV_ACCOUNT, &Secret::new(DEV_ACCOUNT_KEY)).unwrap();
        let url = Url::parse("http://127.0.0.1:10002/devstoreaccount1/Tables").unwrap();
        let header = key.authorization(&SignedParts {
            method: "GET",
            content_md5: "",
            content_type: "",
            date: "Sun, 11 Oct 2009 19:52:39 GMT",
            url: &url,
        });
        assert_eq!(
            header,
            format!("SharedKey devstoreaccount1:{}", REFERENCE_SIGNATURE)
        );
    }

    const REFERENCE_SIGNATURE: &str = "Mp8YJS1iY4YO6aRi0fUlSabGDKxPS9bfAHmLzoRxTB8=";

    #[test]
    fn a_connection_string_names_the_endpoint_and_the_key() {
        let c = parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=stkiln;AccountKey={DEV_ACCOUNT_KEY};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(c.table_endpoint, "https://stkiln.table.core.windows.net");
        assert_eq!(c.key.account(), "stkiln");
        let c = parse(&format!(
            "accountname=stkiln; accountkey={DEV_ACCOUNT_KEY} ;TableEndpoint=http://127.0.0.1:10002/stkiln/;"
        ))
        .unwrap();
        assert_eq!(c.table_endpoint, "http://127.0.0.1:10002/stkiln");
    }

    #[test]
    fn development_storage_is_azurites_account_on_its_default_port() {
        let c = parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.table_endpoint, "http://127.0.0.1:10002/devstoreaccount1");
        assert_eq!(c.key.account(), "devstoreaccount1");
        assert_eq!(
            parse("UseDevelopmentStorage=false").unwrap_err(),
            ConnectionStringError::Invalid {
                field: "UseDevelopmentStorage",
                expected: "true when present"
            }
        );
    }

    #[test]
    fn a_bad_connection_string_names_what_is_wrong_and_never_quotes_the_key() {
        let key = "c2VjcmV0LWtleS1ieXRlcw==";
        let cases = [
            (format!("AccountKey={key}"), "AccountName is missing"),
            ("AccountName=stkiln".to_string(), "AccountKey is missing"),
            ("AccountName=stkiln;AccountKey=".to_string(), "AccountKey is missing"),
            ("AccountName=stkiln;no-equals-sign".to_string(), "segment 2 is not Name=Value"),
            ("AccountName=stkiln;AccountKey=not base64!".to_string(), "AccountKey is not base64"),
            (
                format!("AccountName=stkiln;AccountKey={key};TableEndpoint=stkiln.table.core.windows.net"),
                "TableEndpoint must be an http(s) URL",
            ),
            (
                format!("DefaultEndpointsProtocol=ftp;AccountName=stkiln;AccountKey={key}"),
                "DefaultEndpointsProtocol must be https or http",
            ),
            (
                "TableEndpoint=https://x.table.core.windows.net;SharedAccessSignature=sv=2019".to_string(),
                "SharedAccessSignature is not supported",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains(key), "{e}");
        }
    }

    #[test]
    fn a_shared_key_does_not_print_its_key() {
        let c = parse("UseDevelopmentStorage=true").unwrap();
        let shown = format!("{c:?} {:?}", Credential::SharedKey(c.key.clone()));
        assert!(shown.contains("devstoreaccount1"), "{shown}");
        assert!(!shown.contains("Eby8"), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", &c.key.key[..4])),
            "{shown}"
        );
    }
}
