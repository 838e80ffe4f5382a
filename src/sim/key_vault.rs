//! Key Vault's key routes (api-version 7.4), under `/keyvault` on the
//! sim's listener: the vault's base URL is `{url}/keyvault`.
//!
//! | route | what |
//! |---|---|
//! | `GET /keys/{name}/{version}` | the KeyBundle: the public JWK (`EC`, `P-256`, `x`, `y`) and attributes |
//! | `POST /keys/{name}/{version}/sign` | `{alg: ES256, value: base64url digest}` → `{kid, value: base64url r‖s}` |
//!
//! The vault holds one P-256 key, [`KEY_NAME`] at a version drawn at start,
//! made with a fresh random key every time the sim starts (nothing is
//! persisted: a signature is only checked against the key the same sim
//! handed out). Like Key Vault it answers 401 without a bearer token, 404
//! for any other key, 400 for another api-version, algorithm or a digest
//! that is not 32 bytes. The token's value is neither checked nor kept.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use serde_json::{json, Value};

use crate::ports::PublicKey;

/// Where the vault lives under the sim's URL.
pub const KEY_VAULT_PREFIX: &str = "/keyvault";
/// The one key's name.
pub const KEY_NAME: &str = "kiln-provenance";
const API_VERSION: &str = "7.4";

pub struct KeyVault {
    key: p256::ecdsa::SigningKey,
    version: String,
    /// `{sim url}/keyvault`.
    base_url: String,
}

impl KeyVault {
    /// A vault at `base_url` with a new random P-256 key.
    pub fn new(base_url: &str) -> Self {
        Self {
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
            version: uuid::Uuid::new_v4().simple().to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The key id, the value of `KILN_SIGNING_KEY_VAULT_KEY`.
    pub fn key_id(&self) -> String {
        format!("{}/keys/{KEY_NAME}/{}", self.base_url, self.version)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::EcdsaP256(
            self.key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        )
    }

    fn is_ours(&self, name: &str, version: &str) -> bool {
        // Key Vault's names are case-insensitive.
        name.eq_ignore_ascii_case(KEY_NAME) && version.eq_ignore_ascii_case(&self.version)
    }
}

/// Key Vault's error envelope.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        format!("A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command."),
    )
}

fn check_api_version(query: &std::collections::HashMap<String, String>) -> Option<Response> {
    let asked = query.get("api-version").map(String::as_str).unwrap_or("");
    (asked != API_VERSION).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            format!("The specified version ({asked}) is not recognized. The simulator serves {API_VERSION}."),
        )
    })
}

async fn require_bearer(request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    if !bearer {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
        if let Ok(v) = r#"Bearer authorization="https://login.microsoftonline.com/common", resource="https://vault.azure.net""#.parse() {
            r.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, v);
        }
        return r;
    }
    next.run(request).await
}

type Params = Query<std::collections::HashMap<String, String>>;

async fn get_key(
    State(vault): State<Arc<KeyVault>>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Params,
) -> Response {
    if let Some(r) = check_api_version(&query) {
        return r;
    }
    if !vault.is_ours(&name, &version) {
        return not_found(&name);
    }
    let point = vault.key.verifying_key().to_encoded_point(false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "the key has no coordinates",
        );
    };
    Json(json!({
        "key": {
            "kid": vault.key_id(),
            "kty": "EC",
            "key_ops": ["sign", "verify"],
            "crv": "P-256",
            "x": b64.encode(x),
            "y": b64.encode(y),
        },
        "attributes": {"enabled": true, "recoveryLevel": "Recoverable+Purgeable"},
    }))
    .into_response()
}

async fn sign(
    State(vault): State<Arc<KeyVault>>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Params,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = check_api_version(&query) {
        return r;
    }
    if !vault.is_ours(&name, &version) {
        return not_found(&name);
    }
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not JSON.",
        );
    };
    let alg = doc.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "ES256" {
        return error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            format!("Invalid algorithm '{alg}' for a P-256 key: expected ES256."),
        );
    }
    let value = doc.get("value").and_then(Value::as_str).unwrap_or("");
    let digest = match base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
    {
        Ok(d) if d.len() == 32 => d,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "Invalid digest: ES256 signs a 32-byte SHA-256 digest, base64url.",
            )
        }
    };
    let signature: p256::ecdsa::Signature = match vault.key.sign_prehash(&digest) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        }
    };
    Json(json!({
        "kid": vault.key_id(),
        "value": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes()),
    }))
    .into_response()
}

/// The vault's routes, to be nested at [`KEY_VAULT_PREFIX`].
pub fn router(vault: Arc<KeyVault>) -> Router {
    Router::new()
        .route("/keys/{name}/{version}", get(get_key))
        .route("/keys/{name}/{version}/sign", post(sign))
        .layer(axum::middleware::from_fn(require_bearer))
        .with_state(vault)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::domain::evidence::dsse::verify_envelope;
    use crate::domain::evidence::provenance::{image_provenance, tests::input};
    use crate::domain::failure::FailureCategory;
    use crate::ports::{sign_statement, Signer};
    use crate::providers::azure::arm::{ArmClient, ArmOptions};
    use crate::providers::azure::identity::{StaticToken, SIM_TOKEN};
    use crate::providers::azure::key_vault::{self, KeyVaultKey, KeyVaultSigner};
    use crate::providers::azure::AzureSettings;
    use crate::sim::server::{Sim, SimOptions};

    fn arm(url: &str) -> ArmClient {
        ArmClient::new(
            reqwest::Client::new(),
            ArmOptions {
                base_url: url.to_string(),
                ..ArmOptions::management()
            },
            Arc::new(StaticToken::new(SIM_TOKEN)),
        )
    }

    #[tokio::test]
    async fn the_azure_signer_signs_through_the_sim_and_the_envelope_verifies() {
        let sim = Sim::start(SimOptions::new(1)).await.unwrap();
        // The settings `kiln sim` prints are the ones kiln reads.
        let env = sim.kiln_env().into_iter().collect();
        let settings = AzureSettings::from_env(&env).unwrap();
        let key = settings.signing_key.clone().expect("the sim names its key");
        assert_eq!(key.id(), sim.key_vault().key_id());
        let signer = KeyVaultSigner::connect(key_vault::client(&arm(sim.url()), &key), key)
            .await
            .unwrap();
        assert_eq!(
            signer.public_key().await.unwrap(),
            sim.key_vault().public_key()
        );
        let statement = image_provenance(&input());
        let envelope = sign_statement(&signer, &statement).await.unwrap();
        // Verified with the key the signer fetched, and only with it.
        assert_eq!(
            verify_envelope(&envelope, &[signer.public_key().await.unwrap()]).unwrap(),
            statement
        );
        let other = crate::sim::key_vault::KeyVault::new("http://127.0.0.1:1/keyvault");
        assert!(verify_envelope(&envelope, &[other.public_key()]).is_err());
        let paths: Vec<String> = sim.requests().iter().map(|r| r.path.clone()).collect();
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("/keyvault/keys/kiln-provenance/") && p.contains("/sign?")),
            "{paths:?}"
        );
        sim.stop().await;
    }

    #[tokio::test]
    async fn the_vault_alone_answers_401_as_key_vault_does() {
        use tower::ServiceExt;
        let vault = Arc::new(super::KeyVault::new("http://127.0.0.1:1/keyvault"));
        let uri = format!(
            "/keys/{}/{}?api-version=7.4",
            super::KEY_NAME,
            vault.version
        );
        let request = |token: Option<&str>| {
            let b = axum::http::Request::get(&uri);
            let b = match token {
                Some(t) => b.header("authorization", format!("Bearer {t}")),
                None => b,
            };
            b.body(axum::body::Body::empty()).unwrap()
        };
        let r = super::router(vault.clone())
            .oneshot(request(None))
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        let r = super::router(vault)
            .oneshot(request(Some(SIM_TOKEN)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn the_sim_vault_refuses_a_missing_token_and_an_unknown_key() {
        let sim = Sim::start(SimOptions::new(1)).await.unwrap();
        let http = reqwest::Client::new();
        let key_url = format!("{}?api-version=7.4", sim.key_vault().key_id());
        let r = http.get(&key_url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(format!("{}/sign?api-version=7.4", sim.key_vault().key_id()))
            .json(&serde_json::json!({"alg": "ES256", "value": "AA"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        let unknown = KeyVaultKey::parse(&format!(
            "{}/keyvault/keys/someone-else/0123abcd",
            sim.url()
        ))
        .unwrap();
        let e = KeyVaultSigner::connect(
            key_vault::client(&arm(sim.url()), &unknown),
            unknown.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.category, FailureCategory::Validation);
        assert!(
            e.message.contains(&unknown.id()) && e.message.contains("KeyNotFound"),
            "{e}"
        );

        let r = http
            .post(format!("{}/sign?api-version=7.4", sim.key_vault().key_id()))
            .bearer_auth(SIM_TOKEN)
            .json(&serde_json::json!({"alg": "RS256", "value": "AA"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        sim.stop().await;
    }
}
