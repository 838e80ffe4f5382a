//! The Azure provider: one adapter per REST surface, all through one
//! [`arm::ArmClient`].
//!
//! | module | surface | port |
//! |---|---|---|
//! | [`image_builder`] | `Microsoft.VirtualMachineImages/imageTemplates` 2025-10-01 | [`ImageBuilder`](crate::ports::ImageBuilder) |
//! | [`gallery`] | Compute Gallery image versions 2025-03-03 | [`Gallery`](crate::ports::Gallery) |
//! | [`marketplace`] | marketplace image versions 2024-11-01 (+ gallery for gallery sources) | [`BaseCatalog`](crate::ports::BaseCatalog) |
//! | [`resource_graph`] | Resource Graph 2024-04-01 | [`Inventory`](crate::ports::Inventory) |
//! | [`service_bus`] | Service Bus REST send | [`Queue`](crate::ports::Queue) |
//! | [`key_vault`] | Key Vault keys 7.4: sign (ES256), get key | [`Signer`](crate::ports::Signer) |

pub mod arm;
pub mod blob;
pub mod error;
pub mod gallery;
pub mod identity;
pub mod image_builder;
pub mod key_vault;
pub mod limits;
pub mod marketplace;
pub mod preflight;
pub mod resource_graph;
pub mod run_facts;
pub mod sbom_step;
pub mod service_bus;
pub mod staging_log;

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::Env;
use crate::metrics::Metrics;
use crate::ports::Clock;
use arm::{ArmClient, ArmOptions};
use gallery::AzureGallery;
use identity::{is_loopback_http, token_source, CredentialKind, TokenSource};
use image_builder::AzureImageBuilder;
use marketplace::AzureCatalog;
use resource_graph::AzureInventory;
use service_bus::ServiceBusQueue;

/// The Azure provider's settings, read from the app settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSettings {
    /// `AZURE_SUBSCRIPTION_ID`: where image templates are created and marketplace images are listed.
    pub subscription_id: String,
    /// `KILN_AZURE_LOCATION`: the region whose marketplace catalog is watched.
    pub location: String,
    /// `KILN_AZURE_RESOURCE_GROUP`: where kiln's image templates live.
    pub resource_group: String,
    /// `ServiceBusConnection__fullyQualifiedNamespace`: the host name, as the Functions Service Bus binding reads it too.
    pub service_bus_namespace: String,
    /// `AZURE_CLIENT_ID`: a user-assigned identity for the app; absent for the system-assigned one.
    pub client_id: Option<String>,
    /// `KILN_AZURE_CREDENTIAL`: `managed-identity` (default), `cli` or `sim`.
    pub credential: CredentialKind,
    /// `KILN_AZURE_MANAGEMENT_URL`: ARM's base URL (default `https://management.azure.com`; the simulator's elsewhere).
    pub management_url: String,
    /// `KILN_AZURE_SERVICE_BUS_URL`: the Service Bus REST base URL (default `https://{namespace}`).
    pub service_bus_url: String,
    /// `KILN_AZURE_INVENTORY_SUBSCRIPTIONS`: comma-separated subscriptions in which
    /// consumers are looked for; absent means every subscription the identity can read.
    pub inventory_subscriptions: Vec<String>,
    /// `KILN_SIGNING_KEY_VAULT_KEY`: the Key Vault key (id with version) that signs provenance.
    pub signing_key: Option<key_vault::KeyVaultKey>,
}

fn get<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn required<'a>(env: &'a Env, key: &str, what: &str) -> anyhow::Result<&'a str> {
    get(env, key).with_context(|| format!("{key}: required with KILN_PROVIDER=azure ({what})"))
}

impl AzureSettings {
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let subscription_id = required(env, "AZURE_SUBSCRIPTION_ID", "the subscription id")?;
        if uuid::Uuid::parse_str(subscription_id).is_err() {
            bail!("AZURE_SUBSCRIPTION_ID: expected a subscription GUID, got `{subscription_id}`");
        }
        let location = required(
            env,
            "KILN_AZURE_LOCATION",
            "a region name such as westeurope",
        )?;
        if location.contains(char::is_whitespace) {
            bail!("KILN_AZURE_LOCATION: expected a region name without spaces such as westeurope, got `{location}`");
        }
        let resource_group = required(
            env,
            "KILN_AZURE_RESOURCE_GROUP",
            "the resource group of the image templates",
        )?;
        let namespace = required(
            env,
            "ServiceBusConnection__fullyQualifiedNamespace",
            "the Service Bus host name",
        )?;
        if namespace.contains("://") || namespace.contains('/') || !namespace.contains('.') {
            bail!("ServiceBusConnection__fullyQualifiedNamespace: expected a host name such as sb-kiln.servicebus.windows.net, got `{namespace}`");
        }
        let client_id = get(env, "AZURE_CLIENT_ID").map(str::to_string);
        let credential = match get(env, "KILN_AZURE_CREDENTIAL").unwrap_or("managed-identity") {
            "managed-identity" => CredentialKind::ManagedIdentity {
                client_id: client_id.clone(),
            },
            "cli" => CredentialKind::AzureCli,
            "sim" => CredentialKind::Sim,
            other => {
                bail!("KILN_AZURE_CREDENTIAL: expected `managed-identity`, `cli` or `sim`, got `{other}`")
            }
        };
        let url = |key: &str, default: String| -> anyhow::Result<String> {
            let u = get(env, key).map(str::to_string).unwrap_or(default);
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                bail!("{key}: expected an http(s) URL such as https://management.azure.com, got `{u}`");
            }
            Ok(u.trim_end_matches('/').to_string())
        };
        let management_url = url("KILN_AZURE_MANAGEMENT_URL", arm::MANAGEMENT_URL.to_string())?;
        let service_bus_url = url("KILN_AZURE_SERVICE_BUS_URL", format!("https://{namespace}"))?;
        let signing_key = get(env, key_vault::KEY_SETTING)
            .map(|k| {
                key_vault::KeyVaultKey::parse(k)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", key_vault::KEY_SETTING))
            })
            .transpose()?;
        let vault_url = signing_key.as_ref().map(|k| k.vault_url.clone());
        let endpoints = [
            ("KILN_AZURE_MANAGEMENT_URL", Some(&management_url)),
            ("KILN_AZURE_SERVICE_BUS_URL", Some(&service_bus_url)),
            (key_vault::KEY_SETTING, vault_url.as_ref()),
        ];
        let endpoints = endpoints.iter().filter_map(|(key, u)| u.map(|u| (*key, u)));
        if credential == CredentialKind::Sim {
            // The fixed token must never reach Azure, nor any other machine.
            for (key, u) in endpoints {
                if !is_loopback_http(u) {
                    bail!("KILN_AZURE_CREDENTIAL: `sim` works only against the simulator; {key} must be http://127.0.0.1… or http://localhost…, got `{u}`");
                }
            }
        } else {
            // A scaled clock against Azure would time out and back off on
            // a clock Azure does not keep.
            if get(env, "KILN_CLOCK").is_some() {
                bail!("KILN_CLOCK: a scaled clock is for the simulator only (KILN_AZURE_CREDENTIAL=sim); unset it to run against Azure");
            }
            for (key, u) in endpoints {
                if !(u.starts_with("https://") || is_loopback_http(u)) {
                    bail!(
                        "{key}: expected an https:// URL (plain http only on loopback), got `{u}`"
                    );
                }
            }
        }
        let inventory_subscriptions = get(env, "KILN_AZURE_INVENTORY_SUBSCRIPTIONS")
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            subscription_id: subscription_id.to_string(),
            location: location.to_string(),
            resource_group: resource_group.to_string(),
            service_bus_namespace: namespace.to_string(),
            client_id,
            credential,
            management_url,
            service_bus_url,
            inventory_subscriptions,
            signing_key,
        })
    }
}

/// The five adapters of the Azure provider.
#[derive(Clone)]
pub struct AzureProviders {
    pub builder: Arc<AzureImageBuilder>,
    pub gallery: Arc<AzureGallery>,
    pub catalog: Arc<AzureCatalog>,
    pub inventory: Arc<AzureInventory>,
    pub queue: Arc<ServiceBusQueue>,
    /// The Key Vault key that signs provenance, with the client for its
    /// vault: connected (its public key read) by [`AzureProviders::signer`].
    pub signing: Option<(ArmClient, key_vault::KeyVaultKey)>,
}

impl AzureProviders {
    /// Reads the settings and builds the adapters against Azure, with the
    /// configured credential.
    /// Every Azure call is counted in `metrics`.
    pub fn from_env(env: &Env, clock: Arc<dyn Clock>, metrics: &Metrics) -> anyhow::Result<Self> {
        let settings = AzureSettings::from_env(env)?;
        let http = reqwest::Client::builder()
            // ARM does not redirect; a redirect would be a surprise worth failing on.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("Cannot build the HTTP client")?;
        let tokens: Arc<dyn TokenSource> = token_source(&settings.credential, http.clone())?;
        // On a scaled clock (the simulator's) backoffs and Retry-After waits
        // pass in its time too.
        let pause: Arc<dyn arm::Pause> = match env
            .get("KILN_CLOCK")
            .and_then(|c| crate::ports::ScaledClock::parse_setting(c).ok())
        {
            Some(c) => Arc::new(arm::ScaledPause(c.factor)),
            None => Arc::new(arm::TokioPause),
        };
        let arm = ArmClient::with_pause(
            http.clone(),
            ArmOptions {
                base_url: settings.management_url.clone(),
                ..ArmOptions::management()
            },
            tokens.clone(),
            pause.clone(),
        )
        .with_metrics(metrics);
        let bus = ArmClient::with_pause(
            http,
            service_bus::options(&settings.service_bus_url),
            tokens,
            pause,
        )
        .with_metrics(metrics);
        let signing = settings
            .signing_key
            .clone()
            .map(|k| (key_vault::client(&arm, &k), k));
        let mut providers = Self::with_clients(&settings, arm, bus, clock);
        providers.signing = signing;
        Ok(providers)
    }

    /// The Key Vault signer `KILN_SIGNING_KEY_VAULT_KEY` names, which reads
    /// its key on first use or at [`key_vault::KeyVaultSigner::check`];
    /// `None` without that setting.
    pub fn signer(&self) -> Option<key_vault::KeyVaultSigner> {
        let (client, key) = self.signing.as_ref()?;
        Some(key_vault::KeyVaultSigner::lazy(client.clone(), key.clone()))
    }

    /// Builds the adapters on given clients (other endpoints, other tokens, tests).
    /// `clock` dates scheduled Service Bus deliveries.
    pub fn with_clients(
        settings: &AzureSettings,
        arm: ArmClient,
        bus: ArmClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let gallery = AzureGallery::new(arm.clone());
        Self {
            builder: Arc::new(AzureImageBuilder::new(
                arm.clone(),
                &settings.subscription_id,
                &settings.resource_group,
            )),
            catalog: Arc::new(AzureCatalog::new(
                arm.clone(),
                &settings.subscription_id,
                &settings.location,
                gallery.clone(),
            )),
            gallery: Arc::new(gallery),
            inventory: Arc::new(AzureInventory::new(
                arm,
                settings.inventory_subscriptions.clone(),
            )),
            queue: Arc::new(ServiceBusQueue::new(bus, clock)),
            signing: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "11111111-2222-3333-4444-555555555555";

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AZURE_SUBSCRIPTION_ID", SUB),
            ("KILN_AZURE_LOCATION", "westeurope"),
            ("KILN_AZURE_RESOURCE_GROUP", "rg-kiln-templates"),
            (
                "ServiceBusConnection__fullyQualifiedNamespace",
                "sb-kiln.servicebus.windows.net",
            ),
        ]
    }

    #[test]
    fn complete_settings_default_to_the_system_assigned_identity() {
        let s = AzureSettings::from_env(&env(&full())).unwrap();
        assert_eq!(s.subscription_id, SUB);
        assert_eq!(
            s.credential,
            CredentialKind::ManagedIdentity { client_id: None }
        );
        assert!(s.inventory_subscriptions.is_empty());
    }

    #[test]
    fn a_client_id_selects_the_user_assigned_identity_and_cli_the_laptop_login() {
        let mut pairs = full();
        pairs.push(("AZURE_CLIENT_ID", "abc"));
        let s = AzureSettings::from_env(&env(&pairs)).unwrap();
        assert_eq!(
            s.credential,
            CredentialKind::ManagedIdentity {
                client_id: Some("abc".into())
            }
        );
        pairs.push(("KILN_AZURE_CREDENTIAL", "cli"));
        pairs.push(("KILN_AZURE_INVENTORY_SUBSCRIPTIONS", "a, b,"));
        let s = AzureSettings::from_env(&env(&pairs)).unwrap();
        assert_eq!(s.credential, CredentialKind::AzureCli);
        assert_eq!(s.inventory_subscriptions, vec!["a", "b"]);
    }

    #[test]
    fn a_scaled_clock_is_refused_against_azure() {
        let mut pairs = full();
        pairs.push((
            "KILN_CLOCK",
            "scaled start=2026-12-01T00:00:00Z anchor=2026-12-01T00:00:00Z factor=60",
        ));
        let e = AzureSettings::from_env(&env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("KILN_CLOCK"), "{e}");
    }

    #[test]
    fn each_missing_or_bad_setting_is_named_in_one_line() {
        for key in [
            "AZURE_SUBSCRIPTION_ID",
            "KILN_AZURE_LOCATION",
            "KILN_AZURE_RESOURCE_GROUP",
            "ServiceBusConnection__fullyQualifiedNamespace",
        ] {
            let pairs: Vec<_> = full().into_iter().filter(|(k, _)| *k != key).collect();
            let e = AzureSettings::from_env(&env(&pairs))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key) && !e.contains('\n'), "{e}");
        }
        let bad = [
            ("AZURE_SUBSCRIPTION_ID", "my-sub"),
            ("KILN_AZURE_LOCATION", "West Europe"),
            (
                "ServiceBusConnection__fullyQualifiedNamespace",
                "https://sb-kiln.servicebus.windows.net/",
            ),
            ("KILN_AZURE_CREDENTIAL", "password"),
        ];
        for (key, value) in bad {
            let mut pairs = full();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let e = AzureSettings::from_env(&env(&pairs))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[tokio::test]
    async fn the_adapters_are_wired_to_the_settings_resource_group_and_namespace() {
        use crate::ports::{ImageBuilder, OutgoingMessage, Queue, TemplateStatus};
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let management = MockServer::start().await;
        let bus = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/subscriptions/{SUB}/resourceGroups/rg-kiln-templates/providers/Microsoft.VirtualMachineImages/imageTemplates/kiln-b1-a1")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"properties": {}})))
            .expect(1)
            .mount(&management)
            .await;
        Mock::given(method("POST"))
            .and(path("/build-requests/messages"))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&bus)
            .await;
        let s = AzureSettings::from_env(&env(&full())).unwrap();
        let p = AzureProviders::with_clients(
            &s,
            arm::testing::client(&management.uri()).0,
            arm::testing::client_with(service_bus::options(&bus.uri())).0,
            Arc::new(crate::ports::SystemClock),
        );
        assert_eq!(
            p.builder.status("kiln-b1-a1").await.unwrap(),
            TemplateStatus::NotRun
        );
        let m = OutgoingMessage {
            message_id: "r1".into(),
            body: "{}".into(),
            delay: std::time::Duration::ZERO,
        };
        p.queue.send("build-requests", m).await.unwrap();
    }

    #[test]
    fn a_laptop_can_build_the_providers_with_its_cli_login() {
        let mut pairs = full();
        pairs.push(("KILN_AZURE_CREDENTIAL", "cli"));
        assert!(AzureProviders::from_env(
            &env(&pairs),
            Arc::new(crate::ports::SystemClock),
            &Metrics::new()
        )
        .is_ok());
    }

    #[test]
    fn the_endpoints_default_to_azure_and_can_point_at_a_simulator() {
        let s = AzureSettings::from_env(&env(&full())).unwrap();
        assert_eq!(s.management_url, "https://management.azure.com");
        assert_eq!(s.service_bus_url, "https://sb-kiln.servicebus.windows.net");
        let mut pairs = full();
        pairs.push(("KILN_AZURE_MANAGEMENT_URL", "http://127.0.0.1:4100/"));
        pairs.push((
            "KILN_AZURE_SERVICE_BUS_URL",
            "http://127.0.0.1:4100/servicebus",
        ));
        let s = AzureSettings::from_env(&env(&pairs)).unwrap();
        assert_eq!(s.management_url, "http://127.0.0.1:4100");
        assert_eq!(s.service_bus_url, "http://127.0.0.1:4100/servicebus");
        let mut pairs = full();
        pairs.push(("KILN_AZURE_MANAGEMENT_URL", "http://arm.example"));
        let e = AzureSettings::from_env(&env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("KILN_AZURE_MANAGEMENT_URL"), "{e}");
    }

    #[test]
    fn the_signing_key_is_a_key_vault_key_id_with_its_version() {
        let key =
            "https://kv-kiln.vault.azure.net/keys/kiln-provenance/0123456789abcdef0123456789abcdef";
        let s = AzureSettings::from_env(&env(&full())).unwrap();
        assert_eq!(s.signing_key, None);
        let mut pairs = full();
        pairs.push(("KILN_SIGNING_KEY_VAULT_KEY", key));
        let s = AzureSettings::from_env(&env(&pairs)).unwrap();
        assert_eq!(s.signing_key.unwrap().id(), key);
        for bad in [
            "kiln-provenance",
            "https://kv-kiln.vault.azure.net/keys/kiln-provenance",
            "http://kv-kiln.vault.azure.net/keys/kiln-provenance/0123",
        ] {
            let mut pairs = full();
            pairs.push(("KILN_SIGNING_KEY_VAULT_KEY", bad));
            let e = AzureSettings::from_env(&env(&pairs))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("KILN_SIGNING_KEY_VAULT_KEY: ") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        // With the sim's fixed token, the vault must be on this machine too.
        let mut pairs = full();
        pairs.push(("KILN_AZURE_CREDENTIAL", "sim"));
        pairs.push(("KILN_AZURE_MANAGEMENT_URL", "http://127.0.0.1:4100"));
        pairs.push((
            "KILN_AZURE_SERVICE_BUS_URL",
            "http://127.0.0.1:4100/servicebus",
        ));
        let mut on_sim = pairs.clone();
        on_sim.push((
            "KILN_SIGNING_KEY_VAULT_KEY",
            "http://127.0.0.1:4100/keyvault/keys/kiln-provenance/abc123",
        ));
        let s = AzureSettings::from_env(&env(&on_sim)).unwrap();
        assert_eq!(
            s.signing_key.unwrap().vault_url,
            "http://127.0.0.1:4100/keyvault"
        );
        pairs.push(("KILN_SIGNING_KEY_VAULT_KEY", key));
        let e = AzureSettings::from_env(&env(&pairs))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("KILN_AZURE_CREDENTIAL: `sim`")
                && e.contains("KILN_SIGNING_KEY_VAULT_KEY"),
            "{e}"
        );
    }

    #[test]
    fn the_sim_credential_is_refused_unless_both_endpoints_are_on_this_machine() {
        let sim = |management: &str, bus: &str| {
            let mut pairs = full();
            pairs.push(("KILN_AZURE_CREDENTIAL", "sim"));
            pairs.push(("KILN_AZURE_MANAGEMENT_URL", management));
            pairs.push(("KILN_AZURE_SERVICE_BUS_URL", bus));
            AzureSettings::from_env(&env(&pairs)).map(|s| s.credential)
        };
        assert_eq!(
            sim("http://127.0.0.1:4100", "http://localhost:4100/servicebus").unwrap(),
            CredentialKind::Sim
        );
        for (management, bus) in [
            (
                "https://management.azure.com",
                "http://127.0.0.1:4100/servicebus",
            ),
            (
                "http://127.0.0.1:4100",
                "https://sb-kiln.servicebus.windows.net",
            ),
        ] {
            let e = sim(management, bus).unwrap_err().to_string();
            assert!(
                e.starts_with("KILN_AZURE_CREDENTIAL: `sim`") && !e.contains('\n'),
                "{e}"
            );
        }
        // Without the URLs the defaults are Azure's: refused too.
        let mut pairs = full();
        pairs.push(("KILN_AZURE_CREDENTIAL", "sim"));
        assert!(AzureSettings::from_env(&env(&pairs)).is_err());
    }
}
