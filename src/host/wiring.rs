//! Builds the app from settings: the one constructor shared by `kiln local`,
//! `kiln serve` with the local provider, and the app-level tests.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;

use super::function_json::{self, FunctionSpec};
use super::local::{LocalHost, LocalQueuePort};
use crate::app::events::EventSink;
use crate::app::evidence::Evidence;
use crate::app::{App, PipelineSet};
use crate::config::{BlobAccess, Env, ProviderKind, Settings, StoreSettings};
use crate::domain::build::Tuning;
use crate::domain::evidence::provenance::BuildPlatform;
use crate::ports::{Clock, EvidenceStore, Signer};
use crate::providers::azure::blob::BlobClient;
use crate::providers::azure::identity::{token_source, CredentialKind, TokenSource};
use crate::providers::azure::key_vault::KeyVaultSigner;
use crate::providers::evidence_blobs::EvidenceBlobs;
use crate::providers::evidence_files::EvidenceFiles;
use crate::providers::local::signing::LocalSigner;
use crate::providers::local::{Faults, KvmMode, LocalConfig, LocalProvider};
use crate::providers::vuln_feed::FileFeed;
use crate::store::sqlite::queue::LocalQueue;
use crate::store::table::Credential;
use crate::store::table_store::TableStore;
use crate::store::{Db, SqliteStore, Store};

/// Everything `kiln local` runs, assembled.
pub struct LocalRuntime {
    pub app: App,
    pub provider: LocalProvider,
    pub queue: LocalQueue,
    pub notify: Arc<Notify>,
    pub specs: Vec<FunctionSpec>,
}

impl LocalRuntime {
    pub fn into_host(self) -> LocalHost {
        LocalHost {
            app: self.app,
            specs: self.specs,
            queue: self.queue,
            notify: self.notify,
        }
    }
}

/// Opens the data folder's database (shared by the host and the local CLI commands).
pub fn open_db(settings: &Settings) -> anyhow::Result<Db> {
    Db::open(&settings.data_dir.join("kiln.db"))
}

/// The store `KILN_STORE` names: the data folder's database (`db`), or
/// Table Storage, reached with the connection string's key or with the
/// Entra ID credential `KILN_AZURE_CREDENTIAL` names (managed identity by
/// default).
///
/// `db` opens the database only when the store is that database: the Azure
/// face on Table Storage never touches a file (nor pays its open at start).
pub async fn open_store(
    settings: &Settings,
    env: &Env,
    db: impl FnOnce() -> anyhow::Result<Db>,
) -> anyhow::Result<Arc<dyn Store>> {
    match &settings.store {
        StoreSettings::Sqlite => Ok(Arc::new(SqliteStore::new(db()?))),
        StoreSettings::Table { access, prefix } => {
            let client = TableStore::client(access, || storage_tokens(env))?;
            let store = TableStore::open(client, prefix).await?;
            tracing::info!(table = %format!("{prefix}state"), "build state in Table Storage");
            Ok(Arc::new(store))
        }
    }
}

/// Entra ID tokens for Storage (tables, blobs): the managed identity, or
/// the Azure CLI's login (`KILN_AZURE_CREDENTIAL=cli`).
fn storage_tokens(env: &Env) -> anyhow::Result<Arc<dyn TokenSource>> {
    let kind = match env.get("KILN_AZURE_CREDENTIAL").map(|s| s.trim()) {
        None | Some("") | Some("managed-identity") => CredentialKind::ManagedIdentity {
            client_id: env.get("AZURE_CLIENT_ID").cloned().filter(|s| !s.is_empty()),
        },
        Some("cli") => CredentialKind::AzureCli,
        Some(other) => anyhow::bail!(
            "KILN_AZURE_CREDENTIAL: Storage takes `managed-identity` or `cli`, got `{other}` (Azurite takes a connection string)"
        ),
    };
    token_source(&kind, reqwest::Client::new())
}

/// Where evidence is kept: the Blob Storage container settings name, or
/// the data folder.
fn evidence_store(settings: &Settings, env: &Env) -> anyhow::Result<Arc<dyn EvidenceStore>> {
    let Some(blobs) = &settings.evidence_blobs else {
        return Ok(Arc::new(EvidenceFiles::new(&settings.data_dir)));
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (endpoint, credential) = match &blobs.access {
        BlobAccess::ConnectionString(cs) => {
            let (endpoint, key) = crate::providers::azure::blob::parse_connection_string(cs)
                .context("KILN_EVIDENCE_CONNECTION")?;
            (endpoint, Credential::SharedKey(key))
        }
        BlobAccess::Endpoint(e) => (e.clone(), Credential::Bearer(storage_tokens(env)?)),
    };
    let client = BlobClient::new(&endpoint, &blobs.container, credential, http)
        .context("KILN_EVIDENCE_CONTAINER")?;
    tracing::info!(container = %blobs.container, "evidence in Blob Storage");
    Ok(Arc::new(EvidenceBlobs::new(client)))
}

pub fn local_provider(settings: &Settings, db: Db) -> anyhow::Result<LocalProvider> {
    let faults = match &settings.local_faults {
        Some(json) => Faults::parse(json).context("KILN_LOCAL_FAULTS")?,
        None => Faults::none(),
    };
    LocalProvider::new(LocalConfig {
        data_dir: settings.data_dir.clone(),
        db,
        instance_id: uuid::Uuid::new_v4().to_string(),
        kvm: KvmMode::Auto,
        faults,
    })
}

/// The pipelines folder, read and checked (for `builder` too, when given);
/// every file's errors at once when any is invalid.
pub fn load_pipelines(
    dir: &std::path::Path,
    builder: Option<&dyn crate::ports::ImageBuilder>,
) -> anyhow::Result<PipelineSet> {
    PipelineSet::load_dir(dir, builder).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(
            "invalid pipelines (run `kiln validate`):\n{}",
            lines.join("\n")
        )
    })
}

/// Assembles the factory with the local provider and the embedded queue.
pub async fn local_runtime(
    settings: Settings,
    env: &Env,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<LocalRuntime> {
    if settings.provider != ProviderKind::Local {
        anyhow::bail!("KILN_PROVIDER: `kiln local` runs the local provider; unset KILN_PROVIDER or set it to `local`");
    }
    let specs = function_json::load(&settings.handlers_dir)?;
    let db = open_db(&settings)?;
    let provider = local_provider(&settings, db.clone())?;
    let pipelines = load_pipelines(&settings.pipelines_dir, Some(&provider))?;
    refuse_lint_errors(&pipelines)?;
    let queue = LocalQueue::new(db.clone());
    let store = open_store(&settings, env, || Ok(db.clone())).await?;
    let evidence = local_evidence(&settings, env, BuildPlatform::Local, None)?;
    let notify = Arc::new(Notify::new());
    let provider_arc = Arc::new(provider.clone());
    let app = App {
        pipelines: Arc::new(pipelines),
        store: store.clone(),
        builder: provider_arc.clone(),
        gallery: provider_arc.clone(),
        catalog: provider_arc.clone(),
        inventory: provider_arc,
        queue: Arc::new(LocalQueuePort {
            queue: queue.clone(),
            clock: clock.clone(),
            notify: notify.clone(),
        }),
        clock,
        events: EventSink::new(
            store,
            settings.events_file.clone(),
            settings.webhook.clone(),
        ),
        metrics: crate::metrics::Metrics::new(),
        evidence,
        tuning: Tuning::local(),
        settings: Arc::new(settings),
    };
    Ok(LocalRuntime {
        app,
        provider,
        queue,
        notify,
        specs,
    })
}

/// Assembles the custom handler for Azure: Image Builder, Compute Gallery,
/// marketplace, Resource Graph and Service Bus adapters. Build state is in
/// the store `KILN_STORE` names: Table Storage for a scaled-out app, or the
/// embedded store under `KILN_DATA_DIR` for one machine.
pub async fn azure_app(
    settings: Settings,
    env: &crate::config::Env,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(App, NetworkChecks)> {
    let metrics = crate::metrics::Metrics::new();
    let azure = crate::providers::azure::AzureProviders::from_env(env, clock.clone(), &metrics)?;
    // The pipelines are read and checked on a thread of their own while
    // the store opens: each is a millisecond of a start the Functions host
    // waits for, and neither needs the other.
    let pipelines = {
        let dir = settings.pipelines_dir.clone();
        let builder = azure.builder.clone();
        tokio::task::spawn_blocking(move || load_pipelines(&dir, Some(builder.as_ref())))
    };
    let store = open_store(&settings, env, || open_db(&settings)).await?;
    // Provenance is signed in Key Vault when a key is named; otherwise with
    // a key file in the data folder, which is fine for one machine and
    // said at start, since on a Function App that folder is a file share.
    let key_vault = azure.signer().map(Arc::new);
    let signer: Option<Arc<dyn Signer>> = match &key_vault {
        Some(signer) => Some(signer.clone()),
        None => {
            tracing::warn!(
                "provenance is signed with the key file in the data folder; set {} to sign with a Key Vault key",
                crate::providers::azure::key_vault::KEY_SETTING
            );
            None
        }
    };
    if settings.evidence_blobs.is_none() && matches!(settings.store, StoreSettings::Table { .. }) {
        tracing::warn!(
            "evidence is kept in the data folder, which on a scaled-out Function App is each instance's own: set KILN_EVIDENCE_ENDPOINT (or KILN_EVIDENCE_CONNECTION) to keep it in Blob Storage"
        );
    }
    let evidence = local_evidence(&settings, env, BuildPlatform::Azure, signer)?;
    let pipelines = pipelines.await.context("reading the pipelines")??;
    let app = App {
        pipelines: Arc::new(pipelines),
        store: store.clone(),
        builder: azure.builder,
        gallery: azure.gallery,
        catalog: azure.catalog,
        inventory: azure.inventory,
        queue: azure.queue,
        clock,
        events: EventSink::new(
            store,
            settings.events_file.clone(),
            settings.webhook.clone(),
        ),
        metrics,
        evidence,
        tuning: Tuning::azure(),
        settings: Arc::new(settings),
    };
    Ok((app, NetworkChecks { key_vault }))
}

/// The start-up checks that need the network, run once the handler
/// listens: a managed-identity token and a Key Vault call take tens of
/// milliseconds in Azure, and the Functions host sends nothing until the
/// handler first answers. A setting they find wrong still stops kiln,
/// only after it has begun to answer.
#[must_use = "the checks do nothing until run"]
pub struct NetworkChecks {
    key_vault: Option<Arc<KeyVaultSigner>>,
}

impl NetworkChecks {
    /// No checks (the local provider's app).
    pub fn none() -> Self {
        Self { key_vault: None }
    }

    /// `Err` for a signing key that cannot sign (missing, disabled, not EC
    /// P-256, no `sign` operation, no access); a vault that cannot be
    /// reached now is logged, and the key read when a build first signs.
    pub async fn run(self) -> anyhow::Result<()> {
        if let Some(signer) = self.key_vault {
            signer.check().await.map_err(|e| {
                let setting = crate::providers::azure::key_vault::KEY_SETTING;
                if e.message.starts_with(setting) {
                    anyhow::anyhow!("{}", e.message)
                } else {
                    anyhow::anyhow!("{setting}: {}", e.message)
                }
            })?;
        }
        Ok(())
    }
}

/// Evidence kept in Blob Storage when settings name a container, else in
/// the data folder; provenance signed by `signer` or else
/// with the data folder's key (or `KILN_SIGNING_KEY`), the feed
/// `KILN_OSV_FEED` names.
pub fn local_evidence(
    settings: &Settings,
    env: &Env,
    platform: BuildPlatform,
    signer: Option<Arc<dyn Signer>>,
) -> anyhow::Result<Evidence> {
    let signer = match signer {
        Some(s) => s,
        None => Arc::new(LocalSigner::from_env(env, &settings.data_dir)?),
    };
    Ok(Evidence {
        store: evidence_store(settings, env)?,
        signer,
        feed: Arc::new(FileFeed::from_settings(
            settings.osv_feed.clone(),
            settings.osv_feed_url.clone(),
            &settings.data_dir,
        )?),
        platform,
    })
}

/// A step that cannot run under AIB's shell (`set -o pipefail` under dash)
/// would fail every build of its pipeline: the local factory refuses it at
/// start, as `kiln validate` does, instead of after a build has begun.
/// Without shellcheck on the machine nothing is linted (`kiln validate`
/// says so).
fn refuse_lint_errors(pipelines: &PipelineSet) -> anyhow::Result<()> {
    let shellcheck = crate::app::lint::Shellcheck::default();
    if !shellcheck.available() {
        tracing::warn!("{}", crate::app::lint::skipped_warning());
        return Ok(());
    }
    let errors: Vec<String> = pipelines
        .iter()
        .flat_map(|p| {
            shellcheck
                .lint(&p.template)
                .into_iter()
                .filter(|f| f.is_error())
                .map(|f| format!("{}: {f}", p.name))
                .collect::<Vec<_>>()
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "pipelines with steps that cannot run (run `kiln validate`):\n{}",
            errors.join("\n")
        )
    }
}
