//! `kiln sbom`, `kiln diff` and `kiln verify`: a published version's
//! evidence, read from the data folder (`KILN_DATA_DIR`) without a running
//! factory, the way `kiln gallery list` reads the gallery.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::args::SbomFormat;
use super::exit::Exit;
use crate::app::evidence::read;
use crate::config::{gather_env, Settings};
use crate::domain::evidence::cyclonedx::to_cyclonedx_bytes;
use crate::domain::evidence::dsse::PublicKey;
use crate::domain::evidence::reproduce::{compare, Reproduction};
use crate::host::wiring::{local_provider, open_db};
use crate::ports::EvidenceFile;
use crate::providers::evidence_files::EvidenceFiles;
use crate::providers::local::sha256_file;
use crate::providers::local::signing::{public_key_path, DEFAULT_KEY, KEY_SETTING};

fn settings() -> anyhow::Result<(Settings, crate::config::Env)> {
    let env = gather_env(Some(Path::new("local.settings.json")))?;
    Ok((Settings::from_env(&env)?, env))
}

fn parse(id: &str) -> anyhow::Result<(String, crate::domain::version::ImageVersion)> {
    read::parse_version_id(id).map_err(anyhow::Error::msg)
}

pub async fn sbom(version_id: &str, format: SbomFormat) -> anyhow::Result<Exit> {
    let (s, _) = settings()?;
    let store = EvidenceFiles::new(&s.data_dir);
    let (def, v) = parse(version_id)?;
    match format {
        SbomFormat::Spdx => {
            let bytes = store_get(&store, &def, v).await?;
            print!("{}", String::from_utf8_lossy(&bytes));
        }
        SbomFormat::Table | SbomFormat::Cyclonedx => {
            let sbom = read::sbom(&store, &def, v, EvidenceFile::Sbom)
                .await?
                .with_context(|| format!("{version_id} has no SBOM in {}", s.data_dir.display()))?;
            if format == SbomFormat::Cyclonedx {
                let bytes = to_cyclonedx_bytes(&sbom)?;
                print!("{}", String::from_utf8_lossy(&bytes));
            } else {
                if let Some(os) = &sbom.os {
                    println!(
                        "# {} ({} packages, {} placed files)",
                        os.pretty_name.as_deref().unwrap_or(&os.id),
                        sbom.packages.len(),
                        sbom.files.len()
                    );
                }
                for p in &sbom.packages {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        p.name,
                        p.version,
                        p.arch,
                        p.source,
                        p.license.as_deref().unwrap_or("NOASSERTION")
                    );
                }
                for f in &sbom.files {
                    println!("file\t{}\tsha256:{}", f.path, f.sha256);
                }
            }
        }
    }
    Ok(Exit::Ok)
}

async fn store_get(
    store: &EvidenceFiles,
    def: &str,
    v: crate::domain::version::ImageVersion,
) -> anyhow::Result<Vec<u8>> {
    use crate::ports::EvidenceStore;
    store
        .get(def, v, EvidenceFile::Sbom)
        .await?
        .with_context(|| format!("{def}/versions/{v} has no SBOM"))
}

pub async fn diff(from: &str, to: Option<&str>, json: bool) -> anyhow::Result<Exit> {
    let (s, _) = settings()?;
    let store = EvidenceFiles::new(&s.data_dir);
    let (a_def, a_v) = parse(from)?;
    let d = match to {
        Some(to) => {
            let (b_def, b_v) = parse(to)?;
            read::diff_versions(&store, (&a_def, a_v), (&b_def, b_v)).await?
        }
        None => read::diff_from_base(&store, &a_def, a_v).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else if d.is_empty() {
        println!("no package changed");
    } else {
        print!("{d}");
    }
    Ok(Exit::Ok)
}

/// The public keys `kiln verify` trusts: `--key` files, else the data
/// folder's signing key's public half (`KILN_SIGNING_KEY`'s, when set).
fn trusted_keys(
    keys: &[PathBuf],
    env: &crate::config::Env,
    data_dir: &Path,
) -> anyhow::Result<Vec<PublicKey>> {
    let paths: Vec<PathBuf> = if keys.is_empty() {
        let private = env
            .get(KEY_SETTING)
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join(DEFAULT_KEY));
        vec![public_key_path(&private)]
    } else {
        keys.to_vec()
    };
    paths
        .iter()
        .map(|p| {
            let pem = std::fs::read_to_string(p).with_context(|| {
                format!(
                    "Cannot read the public key {} (pass one with --key)",
                    p.display()
                )
            })?;
            PublicKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        })
        .collect()
}

pub async fn verify(
    version_id: &str,
    keys: &[PathBuf],
    rebuild: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<Exit> {
    let (s, env) = settings()?;
    let store = EvidenceFiles::new(&s.data_dir);
    let (def, v) = parse(version_id)?;
    let trusted = trusted_keys(keys, &env, &s.data_dir)?;
    // The published disk, hashed now: what a consumer would boot.
    let provider = local_provider(&s, open_db(&s)?)?;
    let published = provider
        .gallery_version(version_id)
        .await?
        .with_context(|| format!("{version_id} is not in the local gallery"))?;
    let disk = published.disk.clone();
    let sha = tokio::task::spawn_blocking(move || sha256_file(&disk))
        .await?
        .with_context(|| format!("Cannot read {}", published.disk.display()))?;
    let disks = vec![("disk.qcow2".to_string(), sha)];
    let report = read::verify(&store, &def, v, &trusted, &disks).await?;
    // A rebuild is compared with what was signed, so only a verified
    // version is rebuilt.
    let reproduction = match (&rebuild, &report.statement) {
        (Some(limit), Some(statement)) if report.ok() => {
            if !json {
                eprintln!("rebuilding {version_id} (nothing is published) …");
            }
            let facts = provider.rebuild(version_id, statement, *limit).await?;
            let stored = read::sbom(&store, &def, v, EvidenceFile::Sbom)
                .await?
                .with_context(|| format!("{version_id} has no stored SBOM"))?;
            Some(compare(statement, &stored, &facts))
        }
        (Some(_) | None, _) => None,
    };
    if json {
        let mut out = serde_json::to_value(&report)?;
        if let Some(r) = &reproduction {
            out["rebuild"] = serde_json::to_value(r)?;
            out["reproduces"] = r.reproduces().into();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match &report.signed_by {
            Some(k) => println!("signature: good ({k})"),
            None => println!("signature: not verified"),
        }
        for (name, outcome) in &report.files {
            println!("{name}: {outcome}");
        }
        for p in &report.problems {
            println!("FAILED: {p}");
        }
        println!(
            "{}",
            if report.ok() {
                "verified"
            } else {
                "NOT verified"
            }
        );
        if let Some(r) = &reproduction {
            print_reproduction(r);
        } else if rebuild.is_some() {
            println!("rebuild: not tried (the version did not verify)");
        }
    }
    let reproduced = reproduction.as_ref().is_none_or(Reproduction::reproduces);
    Ok(
        if report.ok() && reproduced && (rebuild.is_none() || reproduction.is_some()) {
            Exit::Ok
        } else {
            Exit::Error
        },
    )
}

fn print_reproduction(r: &Reproduction) {
    if r.same_packages() {
        println!("rebuild: packages: the same {}", r.package_count);
    } else {
        println!("rebuild: packages differ from the published SBOM:");
        print!("{}", r.packages);
    }
    for d in &r.disks {
        match &d.signed {
            Some(s) if d.identical() => {
                println!(
                    "rebuild: {}: sha256 {s}, identical to the signed disk",
                    d.name
                )
            }
            Some(s) => println!(
                "rebuild: {}: sha256 {}, the signed disk's is {s}",
                d.name, d.rebuilt
            ),
            None => println!(
                "rebuild: {}: sha256 {}, not a signed subject",
                d.name, d.rebuilt
            ),
        }
    }
    println!(
        "{}",
        match (r.same_packages(), r.same_disks()) {
            (true, true) => "reproduces",
            (true, false) => "does NOT reproduce: the same packages, a different disk",
            (false, true | false) => "does NOT reproduce",
        }
    );
}
