//! End-to-end tests of the local provider on busybox roots (milliseconds
//! each). They need root, mkfs.ext4, debugfs and qemu-img, as the
//! provider itself does.
//!
//! This file holds the shared fixtures (a provider on a temporary store and
//! data dir, template builders, waiting for a run, reading files out of a
//! captured disk). The tests live beside it by topic:
//!
//! ```text
//! building.rs   a build start to end; customizer and validation failures
//! fetch.rs      scriptUri/sourceUri checksums and HTTP sources
//! sandbox.rs    what a step can and cannot reach
//! lifecycle.rs  time limits, cancel, orphans, twins, injected faults
//! gallery.rs    publishing, updating and deleting gallery versions
//! bases.rs      the local base images
//! boundaries.rs what a step cannot read, inherit, signal, leave running or reach
//! vms.rs        VMs and boot tests
//! checks.rs     required tools and failure categories
//! ```

mod bases;
mod boundaries;
mod building;
mod checks;
mod fetch;
mod gallery;
mod lifecycle;
mod sandbox;
mod vms;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
// The port types the tests drive the provider through (the provider's own
// files import each only where they use it).
use crate::domain::build::FailureCategory;
use crate::domain::template::{ImageTemplate, Source};
use crate::ports::{BaseCatalog, Gallery, Inventory, VersionUpdate};

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/Microsoft.Compute";
const URN: &str = "kiln:busybox:test";

fn def_id(image: &str) -> String {
    format!("{SUB}/galleries/gal/images/{image}")
}

struct Env {
    dir: tempfile::TempDir,
    db: Db,
    p: LocalProvider,
}

impl Env {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Another provider on the same store and data (a process restart).
    fn restart(&self, instance: &str, faults: Faults) -> LocalProvider {
        LocalProvider::new(LocalConfig {
            data_dir: self.data(),
            db: self.db.clone(),
            instance_id: instance.to_string(),
            kvm: KvmMode::Off,
            faults,
        })
        .unwrap()
    }
}

async fn env_with(faults: Faults) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("kiln.db")).unwrap();
    let p = LocalProvider::new(LocalConfig {
        data_dir: dir.path().join("data"),
        db: db.clone(),
        instance_id: format!("test-{}", uuid::Uuid::new_v4()),
        kvm: KvmMode::Off,
        faults,
    })
    .unwrap();
    p.import_base(URN, "1.0.0", BaseFrom::Busybox)
        .await
        .unwrap();
    Env { dir, db, p }
}

async fn env() -> Env {
    env_with(Faults::none()).await
}

/// A template on the busybox base distributing to one gallery image.
fn template(image: &str, customize: Value) -> Value {
    json!({
        "location": "westeurope",
        "tags": {"kiln.pipeline": "tiny", "kiln.build": "b-1"},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "test", "version": "latest"},
            "customize": customize,
            "distribute": [{
                "type": "SharedImage",
                "runOutputName": "sig",
                "galleryImageId": def_id(image),
                "targetRegions": [{"name": "westeurope", "replicaCount": 1}]
            }]
        }
    })
}

fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut *v
    } else {
        v.pointer_mut(parent).unwrap()
    };
    target
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), value);
}

fn shell(name: &str, lines: &[&str]) -> Value {
    json!({"type": "Shell", "name": name, "inline": lines})
}

async fn wait(p: &LocalProvider, name: &str) -> RunStatus {
    let start = std::time::Instant::now();
    loop {
        match p.status(name).await.unwrap() {
            // Ended, and its task has removed the staging folder.
            TemplateStatus::Run(s)
                if !matches!(s.run_state, RunState::Running | RunState::Canceling)
                    && !p.inner.has_task(name) =>
            {
                return s
            }
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "build {name} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn build(p: &LocalProvider, name: &str, body: &Value) -> RunStatus {
    p.put_template(name, body).await.unwrap();
    p.run(name).await.unwrap();
    wait(p, name).await
}

/// Reads a file of an ext4 image held in a qcow2, without mounting.
fn read_in_disk(qcow2: &Path, file: &str) -> Option<String> {
    let raw = qcow2.with_extension("test.raw");
    let ok = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow2)
        .arg(&raw)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(&raw)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&raw);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (!err.contains("File not found")).then_some(text)
}

fn sha256(bytes: &[u8]) -> String {
    util::sha256_hex(bytes)
}
