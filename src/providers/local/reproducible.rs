//! Reproducible capture: the same template on the same base gives the same
//! disk, where the tools allow it.
//!
//! What would differ between two captures of identical trees, and what is done:
//! - file times: every time in the tree newer than `SOURCE_DATE_EPOCH` is
//!   clamped to it (atime and mtime, without following symlinks), as the
//!   reproducible-builds convention says; the epoch is when the source
//!   version was made (imported or published), so it is fixed per base;
//! - inode change times, which the host sets on every change and mkfs.ext4
//!   copies: set to the epoch afterwards with `debugfs -w` (e2fsprogs 1.47.0
//!   has no option for it);
//! - the filesystem UUID and directory hash seed, random by default: derived
//!   from the customizers as they ran (names, kinds, digests) and the
//!   source's exact version, so a rebuild of the same inputs has the same ones;
//! - the superblock's creation and write times: `E2FSPROGS_FAKE_TIME`.
//!
//! mkfs.ext4 sorts directory entries itself, so creation order does not
//! matter. What this cannot fix is content that records the build: a step
//! writing `$(date)` into a file makes every disk different, and
//! `kiln verify --rebuild` then says the package set reproduces and the
//! disk does not.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// The epoch when nothing says when the source was made: 2000-01-01.
const FALLBACK_EPOCH: i64 = 946_684_800;

/// `SOURCE_DATE_EPOCH` for a build from a source made at `made_at`.
pub(crate) fn source_date_epoch(made_at: Option<DateTime<Utc>>) -> i64 {
    made_at.map_or(FALLBACK_EPOCH, |t| t.timestamp())
}

/// The filesystem UUID (also its directory hash seed) for these inputs.
pub(crate) fn filesystem_uuid(steps_sha256: &str, source_exact: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln ext4 uuid\0");
    h.update(steps_sha256.as_bytes());
    h.update(b"\0");
    h.update(source_exact.as_bytes());
    let mut b: [u8; 16] = h.finalize()[..16].try_into().expect("16 bytes");
    // An RFC 4122 version 4 layout, so tools that check the bits accept it.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// Clamps every atime and mtime under `root` (the root itself included) to
/// at most `epoch`, never following a symlink; returns the paths, relative
/// to the root as absolute image paths (`/etc/hostname`), sorted.
pub(crate) fn clamp_times(root: &Path, epoch: i64) -> std::io::Result<Vec<String>> {
    let mut paths = Vec::new();
    clamp_tree(root, String::new(), epoch, &mut paths)?;
    paths.push("/".to_string());
    paths.sort();
    Ok(paths)
}

/// Children first, then the folder: listing a folder after its times were
/// set would give it a new access time (relatime updates an atime that is
/// not newer than the change time, which setting the times just made now).
fn clamp_tree(
    dir: &Path,
    inner: String,
    epoch: i64,
    paths: &mut Vec<String>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let inner_path = format!("{inner}/{}", entry.file_name().to_string_lossy());
        // file_type() does not follow symlinks.
        if entry.file_type()?.is_dir() {
            clamp_tree(&path, inner_path.clone(), epoch, paths)?;
        } else {
            clamp_one(&path, epoch)?;
        }
        paths.push(inner_path);
    }
    clamp_one(dir, epoch)
}

fn clamp_one(path: &Path, epoch: i64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path)?;
    let mtime = md.mtime().min(epoch);
    if md.mtime() <= epoch && md.atime() == md.mtime() && md.mtime_nsec() == 0 {
        return Ok(());
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} has a NUL byte", path.display())))?;
    let t = libc::timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two timespecs,
    // as utimensat(2) requires; AT_SYMLINK_NOFOLLOW sets a link's own times.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// debugfs commands that set every listed inode's change time to `epoch`,
/// plus `lost+found`, which mkfs.ext4 makes itself. A path debugfs cannot
/// quote (a `"` or a newline in it) is returned apart: it keeps its time and
/// the caller says so.
pub(crate) fn ctime_script(paths: &[String], epoch: i64) -> (String, Vec<String>) {
    let mut script = String::new();
    let mut skipped = Vec::new();
    for p in paths.iter().map(String::as_str).chain(["/lost+found"]) {
        if p.contains(['"', '\n', '\r']) {
            skipped.push(p.to_string());
            continue;
        }
        script.push_str(&format!("sif \"{p}\" ctime @{epoch}\n"));
    }
    (script, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_uuid_depends_on_the_inputs_only() {
        let a = filesystem_uuid("abc", "12.0.1");
        assert_eq!(a, filesystem_uuid("abc", "12.0.1"));
        assert_ne!(a, filesystem_uuid("abd", "12.0.1"));
        assert_ne!(a, filesystem_uuid("abc", "12.0.2"));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    #[test]
    fn times_newer_than_the_epoch_are_clamped_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(&outside, "host").unwrap();
        std::fs::write(root.join("etc/new"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/link")).unwrap();
        let before_outside = std::fs::metadata(&outside).unwrap().mtime();
        let epoch = 1_700_000_000;
        let paths = clamp_times(&root, epoch).unwrap();
        assert_eq!(paths, vec!["/", "/etc", "/etc/link", "/etc/new"]);
        for p in ["", "etc", "etc/new", "etc/link"] {
            let md = std::fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!(md.mtime(), epoch, "{p}");
            assert_eq!(md.atime(), epoch, "{p}");
        }
        // The link's target, outside the root, kept its time.
        assert_eq!(std::fs::metadata(&outside).unwrap().mtime(), before_outside);
    }

    #[test]
    fn older_times_stay_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("old");
        std::fs::write(&f, "x").unwrap();
        let old = libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        };
        let c = CString::new(f.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path and two timespecs.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [old, old].as_ptr(), 0) },
            0
        );
        clamp_times(dir.path(), 1_700_000_000).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mtime(), 1_000_000_000);
    }

    #[test]
    fn the_ctime_script_quotes_paths_and_sets_lost_and_found_aside_the_unquotable() {
        let paths = vec![
            "/".to_string(),
            "/a b".to_string(),
            "/bad\"name".to_string(),
        ];
        let (script, skipped) = ctime_script(&paths, 5);
        assert_eq!(
            script,
            "sif \"/\" ctime @5\nsif \"/a b\" ctime @5\nsif \"/lost+found\" ctime @5\n"
        );
        assert_eq!(skipped, vec!["/bad\"name".to_string()]);
    }
}
