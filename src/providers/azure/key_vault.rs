//! Provenance signing in Azure, by a Key Vault key through Key Vault's
//! REST API (api-version 7.4), so the private key never leaves the vault.
//!
//! Key Vault has no Ed25519 keys: its `JsonWebKeySignatureAlgorithm` is
//! RS256…PS512, ES256, ES256K, ES384 and ES512 only. kiln therefore signs
//! in Azure with an EC P-256 key and ES256 (ECDSA over SHA-256), and the
//! local provider with Ed25519; `kiln verify` accepts either (see
//! `domain::evidence::keys`). Create the key with
//! `az keyvault key create --vault-name kv-kiln --name kiln-provenance --kty EC --curve P-256 --ops sign verify`
//! and give kiln's identity the "Key Vault Crypto User" role on it.
//!
//! - `GET {vault}/keys/{name}/{version}`: the public JWK (`kty` `EC` or
//!   `EC-HSM`, `crv` `P-256`, `x`, `y`), read once when the signer connects.
//! - `POST {vault}/keys/{name}/{version}/sign` with `{"alg": "ES256",
//!   "value": base64url(sha256(message))}`: Key Vault signs a digest, not a
//!   message; the answer's `value` is base64url of r‖s (64 bytes).
//!
//! `KILN_SIGNING_KEY_VAULT_KEY` is the key's id with its version: a
//! signature must name the exact key, and a versionless id would follow
//! rotations silently. Calls go through the shared [`ArmClient`] with the
//! vault's base URL and the scope `https://vault.azure.net/.default`.

use async_trait::async_trait;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::arm::{ArmClient, ArmResponse, RetryPolicy};
use super::error::ArmError;
use crate::domain::failure::FailureCategory;
use crate::ports::{ProviderError, PublicKey, Signer};

pub const SCOPE: &str = "https://vault.azure.net/.default";
pub const API_VERSION: &str = "7.4";
/// The setting naming the key.
pub const KEY_SETTING: &str = "KILN_SIGNING_KEY_VAULT_KEY";
/// The only algorithm kiln asks Key Vault for.
pub const ALGORITHM: &str = "ES256";

/// Signing changes nothing in the vault: a repeated sign only returns
/// another valid signature of the same digest, so it is retried like a read.
pub const SIGN_POLICY: RetryPolicy = RetryPolicy::Idempotent;
/// Reading the public key.
pub const GET_KEY_POLICY: RetryPolicy = RetryPolicy::Idempotent;

/// A key in a vault, at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultKey {
    /// `https://kv-kiln.vault.azure.net` (the simulator's: `http://127.0.0.1:PORT/keyvault`).
    pub vault_url: String,
    pub name: String,
    pub version: String,
}

impl KeyVaultKey {
    /// Reads a key id `https://<vault>.vault.azure.net/keys/<name>/<version>`.
    /// Only the shape is checked here; whether plain http is allowed is the
    /// settings' call (loopback, for the simulator).
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected a key id with its version, such as https://kv-kiln.vault.azure.net/keys/kiln-provenance/0123456789abcdef0123456789abcdef";
        let text = text.trim();
        let url = reqwest::Url::parse(text)
            .map_err(|e| format!("{expected}; `{text}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(format!("{expected}, got `{text}`"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{expected} (no query), got `{text}`"));
        }
        let segments: Vec<&str> = url
            .path()
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let [prefix @ .., keys, name, version] = segments.as_slice() else {
            return Err(format!("{expected}, got `{text}`"));
        };
        if *keys != "keys" {
            return Err(format!("{expected}, got `{text}`"));
        }
        // Key Vault's rule for object names: 1-127 letters, digits and dashes.
        if name.is_empty()
            || name.len() > 127
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("{expected}; the key name `{name}` has characters other than letters, digits and dashes"));
        }
        if !version.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("{expected}; `{version}` is not a key version"));
        }
        let origin = url.origin().ascii_serialization();
        let prefix = prefix.iter().map(|s| format!("/{s}")).collect::<String>();
        Ok(Self {
            vault_url: format!("{origin}{prefix}"),
            name: name.to_string(),
            version: version.to_string(),
        })
    }

    /// The key id, as Key Vault spells it in `kid`.
    pub fn id(&self) -> String {
        format!("{}/keys/{}/{}", self.vault_url, self.name, self.version)
    }

    fn path(&self, action: &str) -> String {
        format!(
            "/keys/{}/{}{action}?api-version={API_VERSION}",
            self.name, self.version
        )
    }
}

/// The client for `key`'s vault: `arm`'s HTTP pool, credential, pauses and
/// retry settings, with the vault's base URL and token scope.
pub fn client(arm: &ArmClient, key: &KeyVaultKey) -> ArmClient {
    arm.rebased(&key.vault_url, SCOPE, "keyvault")
}

/// Signs with a Key Vault key (ES256). Its public half is read once, on
/// first use (or at [`KeyVaultSigner::connect`]).
pub struct KeyVaultSigner {
    client: ArmClient,
    key: KeyVaultKey,
    public: tokio::sync::OnceCell<PublicKey>,
}

impl std::fmt::Debug for KeyVaultSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultSigner")
            .field("key", &self.key.id())
            .field("key_id", &self.public.get().map(PublicKey::key_id))
            .finish_non_exhaustive()
    }
}

fn base64url(field: &str, text: &str) -> Result<Vec<u8>, String> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&alphabet::URL_SAFE, config)
        .decode(text)
        .map_err(|e| format!("{field}: not base64url: {e}"))
}

impl KeyVaultSigner {
    /// Reads the key's public half; fails when the key is missing,
    /// disabled, not EC P-256, or may not sign.
    pub async fn connect(client: ArmClient, key: KeyVaultKey) -> Result<Self, ProviderError> {
        let signer = Self::lazy(client, key);
        signer.resolve().await?;
        Ok(signer)
    }

    /// A signer that reads the key on first use.
    pub fn lazy(client: ArmClient, key: KeyVaultKey) -> Self {
        Self {
            client,
            key,
            public: tokio::sync::OnceCell::new(),
        }
    }

    /// The key's public half, read from Key Vault the first time; an error
    /// is not kept, so the next use asks again.
    async fn resolve(&self) -> Result<&PublicKey, ProviderError> {
        self.public
            .get_or_try_init(|| async {
                let key = &self.key;
                let r = self
                    .client
                    .send(Method::GET, &key.path(""), None, GET_KEY_POLICY)
                    .await
                    .map_err(|e| failure(key, "reading the public key of", e))?;
                let doc = answer(key, "reading the public key of", r)?;
                let public = public_key(&doc).map_err(|e| {
                    ProviderError::new(
                        FailureCategory::Validation,
                        format!("{KEY_SETTING}: the key {} {e}", key.id()),
                    )
                })?;
                tracing::info!(key = %key.id(), key_id = %public.key_id(), "provenance is signed by a Key Vault key");
                Ok(public)
            })
            .await
    }

    /// Reads the key now, to refuse a key that cannot sign before any build
    /// needs it: `Err` for a missing, disabled, foreign or sign-less key.
    /// A vault that cannot be reached now (throttled, down, a timeout) is
    /// logged and is not an error: the key is read again on first use.
    pub async fn check(&self) -> Result<(), ProviderError> {
        match self.resolve().await {
            Ok(_) => Ok(()),
            Err(e) if e.category.is_transient() || e.category == FailureCategory::Timeout => {
                tracing::error!(error = %e, "{KEY_SETTING}: Key Vault cannot be reached now; provenance is signed once it can");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn key(&self) -> &KeyVaultKey {
        &self.key
    }
}

/// The P-256 public key of a KeyBundle (`{"key": JsonWebKey, "attributes": …}`).
fn public_key(doc: &Value) -> Result<PublicKey, String> {
    let jwk = doc.get("key").ok_or("has no `key` in Key Vault's answer")?;
    let text = |f: &str| jwk.get(f).and_then(Value::as_str).unwrap_or("");
    let (kty, crv) = (text("kty"), text("crv"));
    if !matches!(kty, "EC" | "EC-HSM") || crv != "P-256" {
        return Err(format!("is kty `{kty}` crv `{crv}`: kiln signs with {ALGORITHM} and needs an EC key on P-256 (Key Vault has no Ed25519 keys); create one with --kty EC --curve P-256"));
    }
    if doc.pointer("/attributes/enabled") == Some(&Value::Bool(false)) {
        return Err("is disabled".into());
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|o| o == "sign") {
            return Err("does not allow the `sign` operation (key_ops); add it with az keyvault key set-attributes --ops sign verify".into());
        }
    }
    let x = base64url("x", text("x"))?;
    let y = base64url("y", text("y"))?;
    if x.len() != 32 || y.len() != 32 {
        return Err(format!(
            "has x of {} and y of {} bytes; P-256 coordinates are 32",
            x.len(),
            y.len()
        ));
    }
    let sec1 = [&[4u8][..], &x, &y].concat();
    p256::PublicKey::from_sec1_bytes(&sec1)
        .map_err(|_| "has x, y off the P-256 curve".to_string())?;
    Ok(PublicKey::EcdsaP256(sec1))
}

/// A call that got no usable answer.
fn failure(key: &KeyVaultKey, doing: &str, e: ArmError) -> ProviderError {
    if e.is_not_found() {
        return ProviderError::new(
            FailureCategory::Validation,
            format!("{KEY_SETTING}: Key Vault has no key {} ({e})", key.id()),
        );
    }
    ProviderError::new(e.category, format!("Key Vault: {doing} {}: {e}", key.id()))
}

/// The JSON of a successful answer, else its error classified
/// (401/403 Auth, 429 and 5xx Transient, 404 naming the key).
fn answer(key: &KeyVaultKey, doing: &str, r: ArmResponse) -> Result<Value, ProviderError> {
    let r = r.ok().map_err(|e| failure(key, doing, e))?;
    r.json().map_err(|e| failure(key, doing, e))
}

#[async_trait]
impl Signer for KeyVaultSigner {
    async fn public_key(&self) -> Result<PublicKey, ProviderError> {
        self.resolve().await.cloned()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let digest = Sha256::digest(message);
        let body = json!({
            "alg": ALGORITHM,
            "value": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
        });
        let r = self
            .client
            .send(
                Method::POST,
                &self.key.path("/sign"),
                Some(&body),
                SIGN_POLICY,
            )
            .await
            .map_err(|e| failure(&self.key, "signing with", e))?;
        let doc = answer(&self.key, "signing with", r)?;
        let value = doc.get("value").and_then(Value::as_str).ok_or_else(|| {
            ProviderError::internal(format!(
                "Key Vault: signing with {}: the answer has no `value`",
                self.key.id()
            ))
        })?;
        let sig = base64url("value", value).map_err(|e| {
            ProviderError::internal(format!("Key Vault: signing with {}: {e}", self.key.id()))
        })?;
        if sig.len() != 64 {
            return Err(ProviderError::internal(format!(
                "Key Vault: signing with {}: an {ALGORITHM} signature is 64 bytes r||s, got {}",
                self.key.id(),
                sig.len()
            )));
        }
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{body_json, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::azure::arm::testing;

    const VERSION: &str = "0123456789abcdef0123456789abcdef";

    fn key(server: &MockServer) -> KeyVaultKey {
        KeyVaultKey::parse(&format!("{}/keys/kiln-provenance/{VERSION}", server.uri())).unwrap()
    }

    fn jwk(kty: &str, crv: &str) -> Value {
        let k = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let point = k.verifying_key().to_encoded_point(false);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "key": {"kid": "k", "kty": kty, "crv": crv, "key_ops": ["sign", "verify"],
                    "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap())},
            "attributes": {"enabled": true}
        })
    }

    async fn mount_key(server: &MockServer, body: Value) {
        Mock::given(method("GET"))
            .and(path(format!("/keys/kiln-provenance/{VERSION}")))
            .and(query_param("api-version", API_VERSION))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(server)
            .await;
    }

    #[test]
    fn a_key_id_reads_into_vault_name_and_version() {
        let k = KeyVaultKey::parse(&format!(
            "https://kv-kiln.vault.azure.net/keys/kiln-provenance/{VERSION}"
        ))
        .unwrap();
        assert_eq!(k.vault_url, "https://kv-kiln.vault.azure.net");
        assert_eq!(
            (k.name.as_str(), k.version.as_str()),
            ("kiln-provenance", VERSION)
        );
        assert_eq!(
            k.id(),
            format!("https://kv-kiln.vault.azure.net/keys/kiln-provenance/{VERSION}")
        );
        let sim = KeyVaultKey::parse("http://127.0.0.1:4100/keyvault/keys/k1/abc/").unwrap();
        assert_eq!(sim.vault_url, "http://127.0.0.1:4100/keyvault");
        for bad in [
            "kv-kiln",
            "https://kv-kiln.vault.azure.net/keys/kiln-provenance",
            "https://kv-kiln.vault.azure.net/secrets/kiln-provenance/abc",
            "https://kv-kiln.vault.azure.net/keys/kiln_provenance/abc",
            "https://kv-kiln.vault.azure.net/keys/kiln-provenance/abc?api-version=7.4",
            "ftp://kv-kiln.vault.azure.net/keys/k/abc",
        ] {
            let e = KeyVaultKey::parse(bad).unwrap_err();
            assert!(
                e.starts_with("expected a key id with its version"),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn connect_reads_the_jwk_and_sign_sends_es256_over_the_sha256_digest() {
        let server = MockServer::start().await;
        mount_key(&server, jwk("EC-HSM", "P-256")).await;
        let message = b"DSSEv1 28 application/vnd.in-toto+json 2 {}";
        let digest =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(message));
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64]);
        Mock::given(method("POST"))
            .and(path(format!("/keys/kiln-provenance/{VERSION}/sign")))
            .and(query_param("api-version", API_VERSION))
            .and(body_json(json!({"alg": "ES256", "value": digest})))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"kid": "k", "value": sig})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let (arm, _) = testing::client(&server.uri());
        let signer = KeyVaultSigner::connect(client(&arm, &key(&server)), key(&server))
            .await
            .unwrap();
        let expected = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        assert_eq!(
            signer.public_key().await.unwrap(),
            PublicKey::EcdsaP256(
                expected
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec()
            )
        );
        assert_eq!(signer.sign(message).await.unwrap(), vec![7u8; 64]);
        let requests = server.received_requests().await.unwrap();
        assert!(requests
            .iter()
            .all(|r| r.headers.get("authorization").is_some()));
    }

    /// A vault that cannot answer when kiln starts does not keep it down:
    /// the key is read on first use, and a failed read is tried again.
    #[tokio::test]
    async fn a_lazy_signer_reads_the_key_when_it_first_signs_and_retries_a_failed_read() {
        let server = MockServer::start().await;
        let (arm, _) = testing::client(&server.uri());
        let signer = KeyVaultSigner::lazy(client(&arm, &key(&server)), key(&server));
        assert!(
            server.received_requests().await.unwrap().is_empty(),
            "nothing read at start"
        );
        let e = signer.public_key().await.unwrap_err();
        assert!(e.message.contains("has no key"), "{e}");
        mount_key(&server, jwk("EC", "P-256")).await;
        let public = signer.public_key().await.expect("read again, now there");
        assert!(matches!(public, PublicKey::EcdsaP256(_)));
    }

    /// The check `kiln serve` runs once it listens: a vault that cannot
    /// answer now is no reason to stop (the key is read on first use); a
    /// key it does not have is.
    #[tokio::test]
    async fn the_start_up_check_passes_an_unreachable_vault_and_refuses_a_missing_key() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let (arm, _) = testing::client(&server.uri());
        let signer = KeyVaultSigner::lazy(client(&arm, &key(&server)), key(&server));
        signer
            .check()
            .await
            .expect("a 503 vault does not stop kiln");
        assert!(!server.received_requests().await.unwrap().is_empty());

        let server = MockServer::start().await;
        let (arm, _) = testing::client(&server.uri());
        let signer = KeyVaultSigner::lazy(client(&arm, &key(&server)), key(&server));
        let e = signer.check().await.unwrap_err();
        assert_eq!(e.category, FailureCategory::Validation, "{e}");
        assert!(e.message.contains("has no key"), "{e}");
    }

    #[tokio::test]
    async fn a_key_that_is_not_p256_or_may_not_sign_is_refused_with_what_to_do() {
        for (body, words) in [
            (jwk("RSA", ""), "kty `RSA`"),
            (jwk("EC", "P-384"), "crv `P-384`"),
            (
                {
                    let mut b = jwk("EC", "P-256");
                    b["attributes"]["enabled"] = json!(false);
                    b
                },
                "disabled",
            ),
            (
                {
                    let mut b = jwk("EC", "P-256");
                    b["key"]["key_ops"] = json!(["verify"]);
                    b
                },
                "`sign`",
            ),
        ] {
            let server = MockServer::start().await;
            mount_key(&server, body).await;
            let (arm, _) = testing::client(&server.uri());
            let e = KeyVaultSigner::connect(client(&arm, &key(&server)), key(&server))
                .await
                .unwrap_err();
            assert_eq!(e.category, FailureCategory::Validation, "{e}");
            assert!(
                e.message.starts_with(KEY_SETTING) && e.message.contains(words),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn errors_are_classified_and_a_missing_key_is_named() {
        let cases = [
            (401, "Unauthorized", FailureCategory::Auth),
            (403, "Forbidden", FailureCategory::Auth),
            (404, "KeyNotFound", FailureCategory::Validation),
            (429, "Throttled", FailureCategory::Transient),
            (503, "ServiceUnavailable", FailureCategory::Transient),
        ];
        for (status, code, want) in cases {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .respond_with(
                    ResponseTemplate::new(status)
                        .set_body_json(json!({"error": {"code": code, "message": "m"}})),
                )
                .mount(&server)
                .await;
            let (arm, pauses) = testing::client(&server.uri());
            let e = KeyVaultSigner::connect(client(&arm, &key(&server)), key(&server))
                .await
                .unwrap_err();
            assert_eq!(e.category, want, "{status}: {e}");
            assert!(e.message.contains(&key(&server).id()), "{e}");
            let tries = server.received_requests().await.unwrap().len();
            if want == FailureCategory::Transient {
                assert_eq!(tries, 4, "{status} is retried under the named policy");
                assert_eq!(pauses.taken().len(), 3);
            } else {
                assert_eq!(tries, 1, "{status} is not retried");
            }
            if status == 404 {
                assert!(e.message.contains("Key Vault has no key"), "{e}");
            }
            assert!(!e.message.contains(testing::TOKEN));
        }
    }

    #[tokio::test]
    async fn a_sign_answer_that_is_not_64_bytes_is_an_error() {
        let server = MockServer::start().await;
        mount_key(&server, jwk("EC", "P-256")).await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"kid": "k", "value": "AAAA"})),
            )
            .mount(&server)
            .await;
        let (arm, _) = testing::client(&server.uri());
        let signer = KeyVaultSigner::connect(client(&arm, &key(&server)), key(&server))
            .await
            .unwrap();
        let e = signer.sign(b"m").await.unwrap_err();
        assert_eq!(e.category, FailureCategory::Internal);
        assert!(e.message.contains("64 bytes"), "{e}");
    }
}
