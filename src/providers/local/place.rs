//! Putting files into the image being built, as AIB would over SSH: the
//! File customizer's uploads (as the build user, into folders that user may
//! write, never through a symlink) and a step's script copied into `/tmp`.
//! Kept apart from the build run in `engine.rs`, which calls these.

use std::path::{Path, PathBuf};

use super::build_user::StepUser;
use super::util::resolve_inside;

/// Writes `src` to `dest` (absolute, inside `root`): no `..`, no symlink in
/// the way, mode 0644. As AIB's File customizer (Packer's file provisioner
/// over SSH) writes as the build user, with a `user` the destination's
/// folder must exist and be writable by that user, and the file is theirs;
/// without one (an image with no sudo), parents are created as root.
pub(crate) fn place_file(
    root: &Path,
    src: &Path,
    dest: &str,
    user: Option<&StepUser>,
) -> std::io::Result<()> {
    let no_folder = || {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "its folder does not exist (AIB's File customizer does not create folders)",
        )
    };
    let target =
        resolve_inside(root, dest, user.is_none()).map_err(|e| match (user, e.kind()) {
            (Some(_), std::io::ErrorKind::NotFound) => no_folder(),
            _ => e,
        })?;
    if let Some(u) = user {
        let parent = target.parent().unwrap_or(root);
        match std::fs::metadata(parent) {
            Ok(md) if writable_by(&md, u) => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "its folder is not writable by the build user {} (AIB's File customizer uploads as that user: upload to /tmp and move it with sudo in a Shell step)",
                        u.name
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_folder()),
            Err(e) => return Err(e),
        }
        // Replacing a file needs write access to it, and in a sticky folder
        // (/tmp) it must be the user's own, as for an upload over SSH.
        if let Ok(existing) = std::fs::symlink_metadata(&target) {
            use std::os::unix::fs::MetadataExt;
            let sticky = std::fs::metadata(parent).is_ok_and(|m| m.mode() & 0o1000 != 0);
            if !writable_by(&existing, u) || (sticky && existing.uid() != u.ids.uid) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "it exists and the build user {} may not replace it (AIB's File customizer uploads as that user)",
                        u.name
                    ),
                ));
            }
        }
    }
    match std::fs::symlink_metadata(&target) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the destination is a symlink",
            ))
        }
        Ok(md) if md.is_dir() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the destination is a folder",
            ))
        }
        _ => {}
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)?;
    let mut input = std::fs::File::open(src)?;
    std::io::copy(&mut input, &mut out)?;
    if let Some(u) = user {
        std::os::unix::fs::fchown(&out, Some(u.ids.uid), Some(u.ids.gid))?;
    }
    Ok(())
}

/// Copies a step's script into the image at `inside` (a path in `/tmp`),
/// executable and owned by the step's user, never through a symlink; returns
/// where it is on the host.
pub(super) fn upload(
    root: &Path,
    script: &Path,
    inside: &str,
    user: Option<&StepUser>,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = resolve_inside(root, inside, false)?;
    let _ = std::fs::remove_file(&target);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)?;
    std::io::copy(&mut std::fs::File::open(script)?, &mut out)?;
    if let Some(u) = user {
        std::os::unix::fs::fchown(&out, Some(u.ids.uid), Some(u.ids.gid))?;
    }
    Ok(target)
}

/// Whether the owner, group or other write bit lets `u` write a file or folder.
fn writable_by(md: &std::fs::Metadata, u: &StepUser) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = md.mode();
    (md.uid() == u.ids.uid && mode & 0o200 != 0)
        || (md.gid() == u.ids.gid && mode & 0o020 != 0)
        || mode & 0o002 != 0
}
