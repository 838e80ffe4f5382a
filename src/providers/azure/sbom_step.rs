//! The image's package inventory in Azure: a last Shell step, `kiln-sbom`,
//! that kiln appends to a Linux template and that prints the inventory into
//! AIB's customization log, which kiln already reads with its own identity
//! (`staging_log.rs`).
//!
//! Why this way (docs/provenance.md, "SBOM in Azure"): the other two ways
//! cost more than they give. Uploading from the build VM needs an identity
//! on the VM, a storage account with a role for it and a network path from
//! the VM to that account; reading the VHD output exists only with a VHD
//! distributor, and kiln's Function App cannot mount an ext4 disk. The log
//! needs nothing new on the VM. What it cannot carry cheaply is licenses
//! (`copyright` files are large): in Azure they are NOASSERTION.
//!
//! The block is framed by lines carrying a nonce, a random value kiln draws
//! when it creates the template and keeps in the template itself (the step's
//! own text, which only identities that can read the template see; the build
//! VM cannot). A nonce derived from the template name would be guessable:
//! the VM learns its staging group's name, which holds the template's, from
//! the instance metadata service. So an earlier step cannot print a block
//! kiln would take for this one. It can still lie to `dpkg-query` (it runs
//! as root before it): the inventory is what the image's package database
//! says, as it is locally.
//!
//! The payload is base64 (`base64`'s 76-column lines), each line tagged, so
//! whatever AIB puts before a line (time stamps, `PACKER OUT`, the builder's
//! name) does not matter: a line is found by its tag, wherever it starts.
//! The end line carries the sha256 of each part, so a cut or garbled block
//! is an error, not a short SBOM.

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::domain::evidence::dpkg::parse_os_release;
use crate::domain::evidence::sbom::{OsRelease, Package, PackageManager};

/// The appended step's name.
pub const STEP_NAME: &str = "kiln-sbom";
const TAG: &str = "KILNSBOM";
/// What the step asks `dpkg-query` for, one package per line.
pub const DPKG_FORMAT: &str = r"${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n";

/// The step's lines (AIB writes `inline` lines into a script run by
/// `/bin/sh -e`): POSIX sh, shellcheck-clean.
pub fn script(nonce: &str) -> Vec<String> {
    [
        "# kiln-sbom: prints the image's package inventory for kiln's evidence (docs/provenance.md)".to_string(),
        format!("t='{TAG}:{nonce}'"),
        "if ! command -v dpkg-query >/dev/null 2>&1; then echo \"$t:skip no dpkg-query\"; exit 0; fi".to_string(),
        "d=$(mktemp -d)".to_string(),
        "# shellcheck disable=SC2016".to_string(),
        format!("dpkg-query -W -f '{DPKG_FORMAT}' >\"$d/dpkg\""),
        "if [ -r /etc/os-release ]; then cat /etc/os-release >\"$d/os\"; else cat /usr/lib/os-release >\"$d/os\"; fi".to_string(),
        "echo \"$t:begin\"".to_string(),
        "base64 \"$d/os\" | sed \"s/^/$t:os /\"".to_string(),
        "base64 \"$d/dpkg\" | sed \"s/^/$t:dpkg /\"".to_string(),
        "echo \"$t:end $(sha256sum <\"$d/os\" | cut -c1-64) $(sha256sum <\"$d/dpkg\" | cut -c1-64)\"".to_string(),
        "rm -rf \"$d\"".to_string(),
    ]
    .into()
}

/// The customizer kiln appends.
pub fn step(nonce: &str) -> Value {
    json!({"type": "Shell", "name": STEP_NAME, "inline": script(nonce)})
}

/// A fresh nonce: 128 random bits, hex.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether the template builds a Linux image the step can run on: it has a
/// Shell step (AIB runs those on Linux only), no Windows step, and a
/// platform source that is not Windows. A Linux template with File steps
/// only gets no step, and so no SBOM: kiln cannot tell its OS safely, and a
/// Shell step on Windows would fail the build.
pub fn applies_to(body: &Value) -> bool {
    let steps = customizers(body);
    let kind = |c: &Value| {
        c.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let windows_step = steps.iter().any(|c| {
        matches!(
            kind(c).as_str(),
            "PowerShell" | "WindowsRestart" | "WindowsUpdate"
        )
    });
    let shell_step = steps.iter().any(|c| kind(c) == "Shell");
    let source = body.pointer("/properties/source");
    let windows_source = ["publisher", "offer", "sku"].iter().any(|k| {
        source
            .and_then(|s| s.get(*k))
            .and_then(Value::as_str)
            .is_some_and(|v| v.to_ascii_lowercase().contains("windows"))
    });
    let already = steps
        .iter()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(STEP_NAME));
    shell_step && !windows_step && !windows_source && !already
}

/// `body` with the step appended, when it applies.
pub fn with_step(body: &Value, nonce: &str) -> Value {
    let mut out = body.clone();
    if !applies_to(body) {
        return out;
    }
    if let Some(list) = out
        .pointer_mut("/properties/customize")
        .and_then(Value::as_array_mut)
    {
        list.push(step(nonce));
    }
    out
}

fn customizers(body: &Value) -> Vec<Value> {
    body.pointer("/properties/customize")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The nonce in a template's `kiln-sbom` step (from its GET), if it has one.
pub fn nonce_in(body: &Value) -> Option<String> {
    customizers(body)
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(STEP_NAME))
        .and_then(|c| c.get("inline"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|l| {
            l.strip_prefix(&format!("t='{TAG}:"))
                .and_then(|r| r.strip_suffix('\''))
                .map(str::to_string)
        })
}

/// What the block carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// The step ran and said why it printed nothing (no `dpkg-query`).
    Skipped {
        reason: String,
    },
    Inventory {
        os_release: String,
        dpkg: String,
    },
}

/// The lines the step prints for these inputs: what the simulator writes
/// into its log, and what a test compares with the real script's output.
pub fn render(nonce: &str, os_release: &[u8], dpkg: &[u8]) -> Vec<String> {
    let t = format!("{TAG}:{nonce}");
    let mut out = vec![format!("{t}:begin")];
    for (kind, bytes) in [("os", os_release), ("dpkg", dpkg)] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        // GNU base64 wraps at 76 columns; empty input prints nothing.
        for chunk in b64.as_bytes().chunks(76) {
            out.push(format!("{t}:{kind} {}", String::from_utf8_lossy(chunk)));
        }
    }
    out.push(format!(
        "{t}:end {} {}",
        hex::encode(Sha256::digest(os_release)),
        hex::encode(Sha256::digest(dpkg))
    ));
    out
}

struct Open {
    os: String,
    dpkg: String,
}

/// The last block with `nonce` in `log`: `None` when there is none; an
/// error (saying what is wrong) when the last one is cut or damaged.
pub fn find_block(log: &str, nonce: &str) -> Result<Option<Block>, String> {
    let tag = format!("{TAG}:{nonce}:");
    let mut last: Option<Result<Block, String>> = None;
    let mut open: Option<Open> = None;
    for (n, line) in log.lines().enumerate() {
        let Some(at) = line.find(&tag) else {
            continue;
        };
        let rest = &line[at + tag.len()..];
        let (kind, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        let kind = kind.trim_end();
        // Only the payload's own characters: a trailing `\r` or colour code goes.
        let token = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
                .collect()
        };
        match (kind, open.as_mut()) {
            ("begin", _) => {
                open = Some(Open {
                    os: String::new(),
                    dpkg: String::new(),
                })
            }
            ("skip", _) => {
                open = None;
                last = Some(Ok(Block::Skipped {
                    reason: arg.trim().to_string(),
                }));
            }
            ("os", Some(o)) => o.os.push_str(&token(arg)),
            ("dpkg", Some(o)) => o.dpkg.push_str(&token(arg)),
            ("end", Some(_)) => {
                let o = open.take().expect("matched Some");
                let sums: Vec<String> = arg.split_whitespace().map(token).collect();
                last = Some(close(&o, &sums, n + 1));
            }
            (other, _) => {
                last = Some(Err(format!(
                    "line {}: `{other}` outside a block or unknown",
                    n + 1
                )));
                open = None;
            }
        }
    }
    if open.is_some() {
        last = Some(Err("the block has no end line (the log is cut)".to_string()));
    }
    last.transpose()
}

fn close(o: &Open, sums: &[String], line: usize) -> Result<Block, String> {
    let decode = |what: &str, b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("line {line}: the {what} part is not base64: {e}"))
    };
    let os = decode("os-release", &o.os)?;
    let dpkg = decode("dpkg", &o.dpkg)?;
    let [os_sum, dpkg_sum] = sums else {
        return Err(format!(
            "line {line}: the end line should carry two sha256 sums, it has {}",
            sums.len()
        ));
    };
    for (what, bytes, sum) in [("os-release", &os, os_sum), ("dpkg", &dpkg, dpkg_sum)] {
        let got = hex::encode(Sha256::digest(bytes));
        if &got != sum {
            return Err(format!(
                "line {line}: the {what} part's sha256 is {got}, the end line says {sum}"
            ));
        }
    }
    let text = |what: &str, b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| format!("line {line}: the {what} part is not UTF-8"))
    };
    Ok(Block::Inventory {
        os_release: text("os-release", os)?,
        dpkg: text("dpkg", dpkg)?,
    })
}

/// `dpkg-query -W -f DPKG_FORMAT` output → installed packages (status
/// `?i?`: fully installed; removed packages with config files left are not
/// in the image's inventory). Licenses are not printed: NOASSERTION.
pub fn parse_dpkg_query(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [status, name, version, arch, source, source_version] = f[..] else {
            return Err(format!(
                "dpkg line {}: expected 6 tab-separated fields (status, package, version, architecture, source, source version), found {}",
                n + 1,
                f.len()
            ));
        };
        if status.chars().nth(1) != Some('i') {
            continue;
        }
        if name.is_empty() || version.is_empty() {
            return Err(format!(
                "dpkg line {}: a package without a name or version",
                n + 1
            ));
        }
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            source: if source.is_empty() { name } else { source }.to_string(),
            source_version: if source_version.is_empty() {
                version
            } else {
                source_version
            }
            .to_string(),
            license: None,
            manager: PackageManager::Dpkg,
        });
    }
    Ok(out)
}

/// The block's os-release, parsed.
pub fn os_of(os_release: &str) -> Option<OsRelease> {
    parse_os_release(os_release)
}

#[cfg(test)]
mod tests;
