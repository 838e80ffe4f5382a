//! AIB's build user, made in the image for the customizers and removed
//! before capture.
//!
//! Azure VM Image Builder runs customizers through Packer's azure-arm
//! builder, which logs in over SSH as a non-root admin user (packer-plugin-
//! azure's default user name is `packer`) that the Azure Linux agent or
//! cloud-init gives passwordless sudo (`/etc/sudoers.d/90-cloud-init-users`).
//! Steps start in that user's home, and files the File customizer uploads
//! belong to it. At the end AIB deprovisions the VM (`waagent -deprovision+user`),
//! which deletes the user again, so the published image has no trace of it.
//!
//! kiln does the same with plain file edits (no `useradd` needed in the
//! image): a `packer` user and group with the next free id from 1000, a home
//! from `/etc/skel`, and a sudoers drop-in; afterwards exactly those lines
//! and files go.

use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use super::namespace::Ids;
use super::util::resolve_inside;

pub(crate) const NAME: &str = "packer";
const SUDOERS: &str = "/etc/sudoers.d/90-cloud-init-users";

/// The user customizers and validators run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepUser {
    pub name: String,
    pub ids: Ids,
    pub home: String,
    pub shell: String,
}

/// What [`ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildUser {
    /// kiln made the user; [`remove`] takes it out again.
    Created(StepUser),
    /// The image already has a `packer` user (a parent image of kiln's that
    /// kept it, or the image's own); it is used and left alone.
    Existing(StepUser),
    /// The image has no `sudo` (a busybox test root, say): a non-root user
    /// could not become root, so steps run as root.
    NoSudo,
}

impl BuildUser {
    pub fn step_user(&self) -> Option<&StepUser> {
        match self {
            BuildUser::Created(u) | BuildUser::Existing(u) => Some(u),
            BuildUser::NoSudo => None,
        }
    }
}

fn read(root: &Path, inner: &str) -> io::Result<Option<String>> {
    let p = resolve_inside(root, inner, false)?;
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn append(root: &Path, inner: &str, line: &str) -> io::Result<()> {
    let p = resolve_inside(root, inner, false)?;
    let mut text = std::fs::read_to_string(&p)?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_keeping_mode(&p, &text)
}

/// Rewrites a file in place so that its mode and owner stay (`/etc/shadow`
/// is 0640 root:shadow).
fn write_keeping_mode(p: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)?;
    f.write_all(text.as_bytes())
}

/// The fields of `name`'s line in a colon-separated database.
fn entry<'a>(db: &'a str, name: &str) -> Option<Vec<&'a str>> {
    db.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
}

/// The lowest id from 1000 that no line of `db` uses (field 2).
fn free_id(db: &str) -> u32 {
    let used: std::collections::BTreeSet<u32> = db
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (1000..).find(|id| !used.contains(id)).unwrap_or(1000)
}

fn has_sudo(root: &Path) -> bool {
    ["/usr/bin/sudo", "/bin/sudo"].iter().any(|p| {
        resolve_inside(root, p, false)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o4000 != 0)
    })
}

/// Makes (or finds) the build user in the image at `root`.
pub(crate) fn ensure(root: &Path) -> io::Result<BuildUser> {
    if !has_sudo(root) {
        return Ok(BuildUser::NoSudo);
    }
    let passwd = read(root, "/etc/passwd")?.unwrap_or_default();
    let group = read(root, "/etc/group")?.unwrap_or_default();
    if let Some(f) = entry(&passwd, NAME) {
        let parse = |i: usize| f.get(i).and_then(|s| s.parse::<u32>().ok());
        if let (Some(uid), Some(gid)) = (parse(2), parse(3)) {
            return Ok(BuildUser::Existing(StepUser {
                name: NAME.into(),
                ids: Ids { uid, gid },
                home: f.get(5).unwrap_or(&"/").to_string(),
                shell: f.get(6).unwrap_or(&"/bin/sh").to_string(),
            }));
        }
    }
    let uid = free_id(&passwd);
    // The user's own group takes the same number when it is free.
    let group_ids = free_id(&group);
    let gid = if uid >= group_ids
        && !group
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string()))
    {
        uid
    } else {
        group_ids
    };
    let shell = if resolve_inside(root, "/bin/bash", false).is_ok_and(|p| p.exists()) {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = format!("/home/{NAME}");
    append(
        root,
        "/etc/passwd",
        &format!("{NAME}:x:{uid}:{gid}::{home}:{shell}"),
    )?;
    append(root, "/etc/group", &format!("{NAME}:x:{gid}:"))?;
    // A locked password ("!"), as cloud-init's default user has: sudo does
    // not ask for it (NOPASSWD) and nobody can log in with one.
    if read(root, "/etc/shadow")?.is_some() {
        append(root, "/etc/shadow", &format!("{NAME}:!:19000:0:99999:7:::"))?;
    }
    if read(root, "/etc/gshadow")?.is_some() {
        append(root, "/etc/gshadow", &format!("{NAME}:!::"))?;
    }
    let home_dir = resolve_inside(root, &home, true)?;
    std::fs::create_dir_all(&home_dir)?;
    copy_skel(root, &home_dir, uid, gid)?;
    chown(&home_dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(&home_dir, std::fs::Permissions::from_mode(0o750))?;
    let sudoers = resolve_inside(root, SUDOERS, true)?;
    std::fs::write(
        &sudoers,
        format!("# AIB's build user (kiln local provider); removed before capture\n{NAME} ALL=(ALL) NOPASSWD:ALL\n"),
    )?;
    std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440))?;
    Ok(BuildUser::Created(StepUser {
        name: NAME.into(),
        ids: Ids { uid, gid },
        home,
        shell: shell.into(),
    }))
}

/// `/etc/skel`'s plain files into the new home, owned by the user.
fn copy_skel(root: &Path, home: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let Ok(skel) = resolve_inside(root, "/etc/skel", false) else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(skel) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let to = home.join(e.file_name());
            std::fs::copy(e.path(), &to)?;
            chown(&to, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Removes a user kiln created (deprovisioning, as `waagent
/// -deprovision+user` does); returns what went, for the manifest.
pub(crate) fn remove(root: &Path, user: &StepUser) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    for db in ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"] {
        let Some(text) = read(root, db)? else {
            continue;
        };
        let prefix = format!("{}:", user.name);
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
        if kept.len() != text.lines().count() {
            let mut out = kept.join("\n");
            out.push('\n');
            write_keeping_mode(&resolve_inside(root, db, false)?, &out)?;
            done.push(format!("removed the build user from {db}"));
        }
    }
    let home = resolve_inside(root, &user.home, false)?;
    if home.is_dir() {
        std::fs::remove_dir_all(&home)?;
        done.push(format!("removed {}", user.home));
    }
    let sudoers = resolve_inside(root, SUDOERS, false)?;
    if sudoers.is_file() {
        std::fs::remove_file(&sudoers)?;
        done.push(format!("removed {SUDOERS}"));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(with_sudo: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["etc/sudoers.d", "etc/skel", "usr/bin", "bin", "home"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nalice:x:1000:\n").unwrap();
        std::fs::write(r.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(r.join("etc/skel/.profile"), "# profile\n").unwrap();
        std::fs::write(r.join("bin/bash"), "").unwrap();
        if with_sudo {
            std::fs::write(r.join("usr/bin/sudo"), "").unwrap();
            std::fs::set_permissions(
                r.join("usr/bin/sudo"),
                std::fs::Permissions::from_mode(0o4755),
            )
            .unwrap();
        }
        d
    }

    #[test]
    fn the_build_user_gets_the_next_free_id_a_home_and_passwordless_sudo() {
        let d = image(true);
        let r = d.path();
        let BuildUser::Created(u) = ensure(r).unwrap() else {
            panic!("expected a new user")
        };
        assert_eq!(
            u.ids,
            Ids {
                uid: 1001,
                gid: 1001
            }
        );
        assert_eq!(u.home, "/home/packer");
        assert_eq!(u.shell, "/bin/bash");
        let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
        assert!(passwd.ends_with("packer:x:1001:1001::/home/packer:/bin/bash\n"));
        assert!(std::fs::read_to_string(r.join("etc/shadow"))
            .unwrap()
            .contains("packer:!:"));
        let sudoers = std::fs::read_to_string(r.join("etc/sudoers.d/90-cloud-init-users")).unwrap();
        assert!(sudoers.contains("packer ALL=(ALL) NOPASSWD:ALL"));
        assert!(r.join("home/packer/.profile").is_file());
    }

    #[test]
    fn removing_the_build_user_leaves_the_image_as_it_was() {
        let d = image(true);
        let r = d.path();
        let before = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
        let BuildUser::Created(u) = ensure(r).unwrap() else {
            panic!("expected a new user")
        };
        let done = remove(r, &u).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.join("etc/passwd")).unwrap(),
            before
        );
        assert!(!r.join("home/packer").exists());
        assert!(!r.join("etc/sudoers.d/90-cloud-init-users").exists());
        assert!(done.iter().any(|d| d.contains("/etc/shadow")), "{done:?}");
    }

    #[test]
    fn an_image_without_sudo_runs_steps_as_root() {
        let d = image(false);
        assert_eq!(ensure(d.path()).unwrap(), BuildUser::NoSudo);
    }

    #[test]
    fn an_existing_packer_user_is_used_and_kept() {
        let d = image(true);
        let r = d.path();
        append(r, "/etc/passwd", "packer:x:1500:1500::/home/packer:/bin/sh").unwrap();
        let BuildUser::Existing(u) = ensure(r).unwrap() else {
            panic!("expected the existing user")
        };
        assert_eq!(u.ids.uid, 1500);
    }
}
