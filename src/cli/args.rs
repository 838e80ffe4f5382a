//! The command line: every subcommand and option, as clap reads them. What
//! each command does is in the sibling modules (offline, remote, watch,
//! local_cmds); this one only describes them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::client::ApiClient;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Golden-image factory for Azure VM Image Builder",
    after_help = super::exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Args, Clone)]
pub struct ApiOpt {
    /// Base URL of the running app's HTTP API.
    #[arg(
        long,
        global = true,
        env = "KILN_API",
        default_value = "http://127.0.0.1:7071"
    )]
    pub(super) api: String,
    /// Function key of the app in Azure (the API is `authLevel: function`),
    /// sent as `x-functions-key`; `kiln local` needs none.
    #[arg(
        long = "function-key",
        global = true,
        env = "KILN_FUNCTION_KEY",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub(super) function_key: Option<crate::config::Secret>,
}

fn parse_secret(s: &str) -> Result<crate::config::Secret, String> {
    Ok(crate::config::Secret::new(s))
}

impl ApiOpt {
    pub(super) fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(&self.api, self.function_key.as_ref())
    }
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Run the whole factory on this machine (embedded store, queue, local provider, HTTP API).
    Local {
        /// HTTP port of the API (default: KILN_HTTP_PORT or 7071).
        #[arg(long)]
        port: Option<u16>,
        /// Settings file whose `Values` are read like app settings.
        #[arg(long, default_value = "local.settings.json")]
        settings: PathBuf,
    },
    /// Run as an Azure Functions custom handler on FUNCTIONS_CUSTOMHANDLER_PORT.
    Serve,
    /// Run the Azure simulator in the foreground; prints the settings a `kiln serve` needs.
    Sim {
        /// Loopback port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Sim seconds per wall second.
        #[arg(long, default_value_t = 60)]
        clock_factor: u32,
        /// Sim time at start (RFC 3339; default: now).
        #[arg(long)]
        start: Option<String>,
        /// Also run the factory on it: `kiln serve` on the azure provider,
        /// driven by a simulated Functions host whose API answers on
        /// `--api-port` (the CLI's `--api`).
        #[arg(long)]
        factory: bool,
        /// The factory's API port.
        #[arg(long, default_value_t = 7071, requires = "factory")]
        api_port: u16,
    },
    /// Check pipeline files; prints `file: json.path: what was expected` per problem.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the image template kiln would submit for a pipeline's next build.
    Render {
        pipeline: String,
        /// Version to show in the distribution targets.
        #[arg(long, default_value = "1.0.0")]
        version: String,
    },
    /// Request a build; prints its id.
    Build {
        pipeline: String,
        /// Follow the build (a live progress line on a terminal, one line
        /// per change otherwise); the exit code tells how it ended.
        #[arg(long)]
        wait: bool,
        /// Idempotency key: the same key returns the same build.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// List builds.
    Builds {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        pipeline: Option<String>,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Show one build with its timeline.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Print a build's customization log (every step's output).
    Logs {
        id: String,
        /// Attempt to show (default: the current one).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing while the build runs (with a progress line on a
        /// terminal); the exit code tells how it ended.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Cancel a build.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// List dead-lettered messages with their reasons.
    Deadletters {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Schedules.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCmd,
    },
    /// Gallery retention.
    Retention {
        #[command(subcommand)]
        command: RetentionCmd,
    },
    /// Local base images.
    Base {
        #[command(subcommand)]
        command: BaseCmd,
    },
    /// A published version's SBOM from the data folder: its packages as a
    /// table, or the stored SPDX 2.3 document, or CycloneDX 1.5.
    Sbom {
        version_id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: SbomFormat,
    },
    /// Packages added, removed, upgraded and downgraded from FROM to TO (two
    /// version ids), or from a version's base image to it (one id).
    Diff {
        /// The older version, or the only one (then: its base to it).
        from: String,
        /// The newer version.
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check a published version's signed provenance: the signature (with
    /// the data folder's public key, or --key), and that its disk and SBOM
    /// are the ones signed. Exits 1 when anything differs.
    Verify {
        version_id: String,
        /// A public key (SPKI PEM) to trust instead of the data folder's.
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Also build the version again from the template kept with it, on
        /// the same source version, and say whether it reproduces: the same
        /// packages and a byte-identical disk (nothing is published; exits 1
        /// when it does not reproduce).
        #[arg(long)]
        rebuild: bool,
        /// How long the rebuild may take, in minutes.
        #[arg(long, default_value_t = 60, requires = "rebuild")]
        rebuild_timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Gallery versions: list and read locally; pin and promote through the API.
    Gallery {
        #[command(subcommand)]
        command: GalleryCmd,
    },
    /// Local consumers and boot tests.
    Vm {
        #[command(subcommand)]
        command: VmCmd,
    },
    /// Build the zip to deploy to the Function App: host.json, one folder per
    /// function, the binary host.json names, and the (validated) pipelines.
    Package {
        /// The release binary (`cargo build --release`: target/release/kiln).
        #[arg(long)]
        binary: PathBuf,
        /// Where to write the zip.
        #[arg(long, default_value = "kiln.zip")]
        out: PathBuf,
        /// The repository: host.json, handlers/ and pipelines/ are read from here.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Check every Azure permission kiln and the pipelines' Image Builder
    /// identities need (the Azure provider's settings); prints the `az`
    /// command for each one missing and exits 1 unless all are granted.
    Preflight {
        /// Who the fix commands grant kiln's roles to (default:
        /// AZURE_CLIENT_ID, else the Function App's identity).
        #[arg(long)]
        assignee: Option<String>,
        /// Resource id of the Service Bus namespace (default: the one named
        /// by ServiceBusConnection__fullyQualifiedNamespace, in KILN_AZURE_RESOURCE_GROUP).
        #[arg(long)]
        service_bus_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum ScheduleCmd {
    /// Print the next fire times of a pipeline's schedule.
    Next {
        pipeline: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum RetentionCmd {
    /// Print what retention would do; changes nothing.
    Plan {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Apply the retention plan.
    Apply {
        #[command(flatten)]
        api: ApiOpt,
    },
    /// List the retention steps taken (newest first), with their outcome.
    Audit {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
}

#[derive(Subcommand)]
pub enum BaseCmd {
    /// Import a base root filesystem under a marketplace-style name (publisher:offer:sku).
    Import {
        urn: String,
        #[arg(long)]
        version: String,
        /// Debian suite to build with mmdebstrap (e.g. bookworm).
        #[arg(long, conflicts_with_all = ["tar", "busybox"])]
        debian: Option<String>,
        /// Extra packages for --debian, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "debian")]
        include: Vec<String>,
        /// A root filesystem tarball.
        #[arg(long, conflicts_with = "busybox")]
        tar: Option<PathBuf>,
        /// A tiny root from the host's busybox-static, for tests.
        #[arg(long)]
        busybox: bool,
    },
    /// Mark a base version deprecated (pipelines on it are warned).
    Deprecate {
        urn: String,
        #[arg(long)]
        version: String,
    },
    /// List base images.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum GalleryCmd {
    /// List image definitions and their versions.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a file from a published version's disk (read without mounting).
    Cat { version_id: String, path: String },
    /// Pin a version so retention keeps it (or unpin it), through the API.
    Pin {
        version_id: String,
        /// Tag to set (default: the pipeline's `retention.pinTag`).
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        unpin: bool,
        /// Why (the tag's value).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiOpt,
    },
    /// Include a version in `latest` after a staged rollout (or exclude it again), through the API.
    Promote {
        version_id: String,
        #[arg(long)]
        demote: bool,
        #[command(flatten)]
        api: ApiOpt,
    },
}

#[derive(Subcommand)]
pub enum VmCmd {
    /// Boot a published version under QEMU and run a check inside.
    Run {
        version_id: String,
        #[arg(long, default_value = "cat /etc/os-release; uname -r")]
        check: String,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Record a consumer of an image version (retention keeps it).
    Create {
        #[arg(long)]
        image: String,
        #[arg(long)]
        name: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SbomFormat {
    /// One line per package: name, version, architecture, source, license.
    Table,
    /// The stored SPDX 2.3 JSON document, as it is.
    Spdx,
    /// CycloneDX 1.5 JSON, rendered from the stored SBOM.
    Cyclonedx,
}
