//! Generalization, in the spirit of `waagent -deprovision`: the image loses
//! what makes it one machine (machine id, SSH host keys, leases, random seed)
//! and what a build leaves behind (apt caches and lists, logs, shell
//! history, temporary files). Every removal is recorded for the manifest.
//!
//! Runs on the host against the staging root, so it never follows a symlink
//! (see [`resolve_inside`]): a path inside the image is the image's, never
//! the host's.

use std::io;
use std::path::Path;

use super::util::resolve_inside;

/// What generalization did, one line per path (`removed /etc/ssh/ssh_host_rsa_key`).
pub(crate) fn generalize(root: &Path) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    // Identity: an empty machine-id makes systemd generate one at first boot.
    truncate(root, "/etc/machine-id", &mut done)?;
    remove_file(root, "/var/lib/dbus/machine-id", &mut done)?;
    remove_file(root, "/var/lib/systemd/random-seed", &mut done)?;
    remove_matching(root, "/etc/ssh", |n| n.starts_with("ssh_host_"), &mut done)?;
    remove_matching(root, "/var/lib/dhcp", |n| n.ends_with(".leases"), &mut done)?;
    remove_tree_contents(root, "/var/lib/cloud/instances", &mut done)?;
    // Package manager leftovers.
    remove_matching(root, "/var/cache/apt", |n| n.ends_with(".bin"), &mut done)?;
    remove_matching(
        root,
        "/var/cache/apt/archives",
        |n| n.ends_with(".deb"),
        &mut done,
    )?;
    remove_matching(root, "/var/cache/apt/archives/partial", |_| true, &mut done)?;
    remove_matching(root, "/var/lib/apt/lists", |n| n != "lock", &mut done)?;
    // ldconfig's cache of library inodes and change times: different on
    // every build (a reproducible disk must not carry it); ldconfig
    // rebuilds it when it next runs.
    remove_file(root, "/var/cache/ldconfig/aux-cache", &mut done)?;
    // Logs: rotated ones go, live ones are emptied.
    clean_logs(root, "/var/log", &mut done)?;
    // Shell history of root and every user.
    for h in [
        ".bash_history",
        ".ash_history",
        ".sh_history",
        ".zsh_history",
        ".python_history",
        ".lesshst",
        ".viminfo",
    ] {
        remove_file(root, &format!("/root/{h}"), &mut done)?;
    }
    if let Ok(homes) = std::fs::read_dir(root.join("home")) {
        if !is_symlink(&root.join("home")) {
            for home in homes.flatten() {
                if home.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let user = home.file_name().to_string_lossy().to_string();
                    for h in [
                        ".bash_history",
                        ".ash_history",
                        ".sh_history",
                        ".zsh_history",
                    ] {
                        remove_file(root, &format!("/home/{user}/{h}"), &mut done)?;
                    }
                }
            }
        }
    }
    remove_tree_contents(root, "/tmp", &mut done)?;
    remove_tree_contents(root, "/var/tmp", &mut done)?;
    Ok(done)
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

/// Resolves `inner` or says "nothing to do" when a parent is missing or not
/// a real folder (then there is nothing of ours to clean there).
fn locate(root: &Path, inner: &str) -> Option<std::path::PathBuf> {
    resolve_inside(root, inner, false).ok()
}

fn truncate(root: &Path, inner: &str, done: &mut Vec<String>) -> io::Result<()> {
    let Some(p) = locate(root, inner) else {
        return Ok(());
    };
    match std::fs::symlink_metadata(&p) {
        Ok(md) if md.is_file() && md.len() > 0 => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)?;
            done.push(format!("emptied {inner}"));
        }
        _ => {}
    }
    Ok(())
}

fn remove_file(root: &Path, inner: &str, done: &mut Vec<String>) -> io::Result<()> {
    let Some(p) = locate(root, inner) else {
        return Ok(());
    };
    match std::fs::symlink_metadata(&p) {
        Ok(md) if !md.is_dir() => {
            std::fs::remove_file(&p)?;
            done.push(format!("removed {inner}"));
        }
        _ => {}
    }
    Ok(())
}

/// The entries of folder `dir` of the image, sorted by name, with its host
/// path; `None` when it is missing, unreadable or a symlink (which could
/// point out of the image).
fn entries_inside(root: &Path, dir: &str) -> Option<(std::path::PathBuf, Vec<std::fs::DirEntry>)> {
    let d = locate(root, &format!("{dir}/x")).and_then(|p| p.parent().map(Path::to_path_buf))?;
    if is_symlink(&d) {
        return None;
    }
    let mut entries: Vec<_> = std::fs::read_dir(&d).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    Some((d, entries))
}

/// Removes the non-folder entries of `dir` whose names match.
fn remove_matching(
    root: &Path,
    dir: &str,
    keep_if_false: impl Fn(&str) -> bool,
    done: &mut Vec<String>,
) -> io::Result<()> {
    let Some((d, entries)) = entries_inside(root, dir) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| keep_if_false(n))
        .collect();
    names.sort();
    for n in names {
        std::fs::remove_file(d.join(&n))?;
        done.push(format!("removed {dir}/{n}"));
    }
    Ok(())
}

/// Empties a folder (the folder itself stays).
fn remove_tree_contents(root: &Path, dir: &str, done: &mut Vec<String>) -> io::Result<()> {
    let Some((_, entries)) = entries_inside(root, dir) else {
        return Ok(());
    };
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        // remove_dir_all does not follow symlinks; a symlink is removed as a link.
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
        done.push(format!("removed {dir}/{name}"));
    }
    Ok(())
}

fn rotated(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or("");
    name.ends_with(".gz")
        || name.ends_with(".xz")
        || name.ends_with(".old")
        || (name.contains('.') && !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

fn clean_logs(root: &Path, dir: &str, done: &mut Vec<String>) -> io::Result<()> {
    let Some((_, entries)) = entries_inside(root, dir) else {
        return Ok(());
    };
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let inner = format!("{dir}/{name}");
        let ft = e.file_type()?;
        if ft.is_dir() {
            clean_logs(root, &inner, done)?;
        } else if ft.is_file() {
            if rotated(&name) {
                std::fs::remove_file(e.path())?;
                done.push(format!("removed {inner}"));
            } else {
                truncate(root, &inner, done)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_identity_caches_logs_and_history_but_never_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let host_file = outside.path().join("precious.log");
        std::fs::write(&host_file, "keep me").unwrap();
        let r = dir.path();
        for d in [
            "etc/ssh",
            "var/log/apt",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives",
            "root",
            "home/ann",
            "tmp",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("etc/machine-id"), "abc\n").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        std::fs::write(r.join("etc/ssh/sshd_config"), "c").unwrap();
        std::fs::write(r.join("var/log/apt/history.log"), "x").unwrap();
        std::fs::write(r.join("var/log/dpkg.log.1"), "x").unwrap();
        std::fs::write(r.join("var/lib/apt/lists/deb.debian.org_Packages"), "x").unwrap();
        std::fs::write(r.join("var/lib/apt/lists/lock"), "").unwrap();
        std::fs::write(r.join("var/cache/apt/pkgcache.bin"), "x").unwrap();
        std::fs::write(r.join("var/cache/apt/archives/curl.deb"), "x").unwrap();
        std::fs::write(r.join("root/.bash_history"), "ls").unwrap();
        std::fs::write(r.join("home/ann/.bash_history"), "ls").unwrap();
        std::fs::write(r.join("tmp/scratch"), "x").unwrap();
        // A symlink planted by a customizer pointing at a host folder.
        std::os::unix::fs::symlink(outside.path(), r.join("var/log/evil")).unwrap();

        let done = generalize(r).unwrap();
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap().len(), 0);
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert_eq!(
            std::fs::read(r.join("var/log/apt/history.log"))
                .unwrap()
                .len(),
            0
        );
        assert!(!r.join("var/log/dpkg.log.1").exists());
        assert!(!r.join("var/lib/apt/lists/deb.debian.org_Packages").exists());
        assert!(r.join("var/lib/apt/lists/lock").exists());
        assert!(!r.join("var/cache/apt/pkgcache.bin").exists());
        assert!(!r.join("var/cache/apt/archives/curl.deb").exists());
        assert!(!r.join("root/.bash_history").exists());
        assert!(!r.join("home/ann/.bash_history").exists());
        assert!(!r.join("tmp/scratch").exists());
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "keep me");
        assert!(done.contains(&"emptied /etc/machine-id".to_string()));
        assert!(done.contains(&"removed /etc/ssh/ssh_host_ed25519_key".to_string()));
    }
}
