//! Small helpers shared by the local provider's modules: hashing, canonical
//! JSON, version ordering, safe path components, process identity.

use std::cmp::Ordering;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Instants in the provider's tables, in kiln's one stored format.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    crate::domain::stored_time::format(t)
}

pub(crate) fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    crate::domain::stored_time::parse(s)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file, streamed (blocking: call from `spawn_blocking`).
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// JSON with object keys sorted at every level: the same document always
/// hashes the same, whatever order its keys were written in.
pub(crate) fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// Orders base-image versions the way marketplace versions read:
/// dot/dash separated parts, numeric parts compared as numbers
/// (`22.04.202410020` > `22.04.202409300`, `1.0.10` > `1.0.9`).
pub(crate) fn cmp_versions(a: &str, b: &str) -> Ordering {
    let split = |s: &str| -> Vec<String> {
        s.split(['.', '-', '+', '_'])
            .map(|p| p.to_string())
            .collect()
    };
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.parse::<u128>(), y.parse::<u128>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// A name that is safe as one path component: 1-128 of `A-Za-z0-9._-`,
/// and not `.` or `..`.
pub(crate) fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// A folder name for an arbitrary id (e.g. a managed image resource id).
pub(crate) fn slug(s: &str) -> String {
    let mut out: String = s
        .trim_matches('/')
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.len() > 120 {
        let h = sha256_hex(s.as_bytes());
        out.truncate(100);
        out.push('-');
        out.push_str(&h[..12]);
    }
    out
}

/// Region names come as "West US" or "westus": compare them as `westus`.
pub(crate) fn normalize_region(r: &str) -> String {
    r.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Start time of a process (field 22 of `/proc/PID/stat`), used with the pid
/// to tell a live process from a reused pid.
pub(crate) fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(|s| s.to_string())
}

pub(crate) fn process_alive(pid: u32, start: &str) -> bool {
    process_start(pid).as_deref() == Some(start)
}

/// Apparent size of a tree in bytes (files rounded up to 4 KiB blocks, plus
/// a block per directory, symlink and special file). Blocking.
pub(crate) fn tree_size(root: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let md = entry.metadata()?; // does not follow symlinks
            total += 4096;
            if md.is_dir() {
                stack.push(entry.path());
            } else if md.is_file() {
                total += md.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}

/// The last `n` lines of `text`, joined with " | " for a one-line message.
pub(crate) fn tail_lines(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" | ")
}

/// The host path of `inner` (an absolute path in the image) under `root`,
/// refusing to pass through a symlink or `..`: a path the image controls must
/// never lead the host outside the image (an absolute symlink inside the
/// image would be read by the host as a host path). With `create`, missing
/// parent folders are made (mode 0755). The last component itself is not
/// checked: callers look at it with `symlink_metadata`.
pub(crate) fn resolve_inside(
    root: &Path,
    inner: &str,
    create: bool,
) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{inner}: {why}"),
        )
    };
    let parts: Vec<&std::ffi::OsStr> = Path::new(inner)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(Ok(p)),
            Component::RootDir | Component::CurDir => None,
            Component::ParentDir | Component::Prefix(_) => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|_| bad("`..` is not allowed"))?;
    let Some((last, parents)) = parts.split_last() else {
        return Err(bad("names no file"));
    };
    let mut cur = root.to_path_buf();
    for p in parents {
        cur.push(p);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(bad("a parent folder is a symlink"))
            }
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(bad("a parent is not a folder")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&cur)?;
            }
            Err(e) => return Err(e),
        }
    }
    cur.push(last);
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert_eq!(cmp_versions("1.0.10", "1.0.9"), Ordering::Greater);
        assert_eq!(
            cmp_versions("22.04.202410020", "22.04.202409300"),
            Ordering::Greater
        );
        assert_eq!(cmp_versions("12.20241201", "12.20241201"), Ordering::Equal);
        assert_eq!(cmp_versions("1.0", "1.0.1"), Ordering::Less);
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[{"q":1,"p":2}]}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":[{"p":2,"q":1}],"y":2},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn components_and_slugs() {
        assert!(safe_component("ubuntu-22_04.lts"));
        assert!(!safe_component(".."));
        assert!(!safe_component("a/b"));
        assert_eq!(
            slug("/subscriptions/s/resourceGroups/RG/providers/Microsoft.Compute/images/img1"),
            "subscriptions_s_resourcegroups_rg_providers_microsoft.compute_images_img1"
        );
        assert_eq!(normalize_region("West US 2"), "westus2");
    }

    #[test]
    fn resolving_never_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        assert_eq!(
            resolve_inside(root, "/etc/motd", false).unwrap(),
            root.join("etc/motd")
        );
        assert!(resolve_inside(root, "/escape/etc/passwd", true).is_err());
        assert!(resolve_inside(root, "/etc/../../x", true).is_err());
        assert_eq!(
            resolve_inside(root, "/opt/app/x", true).unwrap(),
            root.join("opt/app/x")
        );
        assert!(root.join("opt/app").is_dir());
        assert!(resolve_inside(root, "/", false).is_err());
    }

    #[test]
    fn this_process_is_alive() {
        let pid = std::process::id();
        let start = process_start(pid).unwrap();
        assert!(process_alive(pid, &start));
        assert!(!process_alive(pid, "0"));
    }
}
