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
//! from `/etc/skel`, and a sudoers drop-in of its own; afterwards exactly
//! the lines and files it added go. Nothing of the image is followed out of
//! it: files are created with `O_EXCL|O_NOFOLLOW`, owners set on the open
//! file, and symlinks in the image are resolved inside the image.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::namespace::Ids;
use super::util::resolve_inside;

pub(crate) const NAME: &str = "packer";
/// kiln's own drop-in (an image may already have cloud-init's).
const SUDOERS: &str = "/etc/sudoers.d/90-kiln-build-user";

/// The user customizers and validators run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepUser {
    pub name: String,
    pub ids: Ids,
    pub home: String,
    pub shell: String,
}

/// A user kiln made, with what it added to the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Created {
    pub user: StepUser,
    /// (database, line) appended.
    lines: Vec<(&'static str, String)>,
    /// `/home` did not exist and was made for the user.
    made_home_parent: bool,
}

/// What [`ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildUser {
    /// kiln made the user; [`remove`] takes it out again.
    Created(Created),
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
            BuildUser::Created(Created { user, .. }) | BuildUser::Existing(user) => Some(user),
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

/// Where `inner` leads inside the image at `root`, following symlinks the
/// way the image itself would (an absolute link is relative to the image's
/// `/`, `..` stops at it): merged-/usr images link `/bin` to `usr/bin`, and
/// sudo may be an alternatives link. `None` when it leads nowhere.
pub(crate) fn follow_in_image(root: &Path, inner: &str) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = Path::new(inner)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            at.pop();
            continue;
        }
        let here = at
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        let md = std::fs::symlink_metadata(&here).ok()?;
        if !md.file_type().is_symlink() {
            at.push(part);
            continue;
        }
        hops += 1;
        if hops > 32 {
            return None;
        }
        let target = std::fs::read_link(&here).ok()?;
        if target.is_absolute() {
            at.clear();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(p) => pending.push(p.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    Some(at.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn has_sudo(root: &Path) -> bool {
    ["/usr/bin/sudo", "/bin/sudo"].iter().any(|p| {
        follow_in_image(root, p)
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o4000 != 0)
    })
}

fn exists_in_image(root: &Path, inner: &str) -> bool {
    follow_in_image(root, inner)
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.is_file())
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, why)
}

/// A new file that nothing in the image can redirect.
fn create_new(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
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
                home: f.get(5).unwrap_or(&"").to_string(),
                shell: f
                    .get(6)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&"/bin/sh")
                    .to_string(),
            }));
        }
    }
    if entry(&group, NAME).is_some() {
        return Err(refuse(format!(
            "the image has a `{NAME}` group but no `{NAME}` user: AIB's build user cannot be made"
        )));
    }
    let home = format!("/home/{NAME}");
    let home_dir = resolve_inside(root, &home, false)?;
    if std::fs::symlink_metadata(&home_dir).is_ok() {
        return Err(refuse(format!(
            "the image has {home} but no `{NAME}` user: AIB's build user cannot be made"
        )));
    }
    let uid = free_id(&passwd);
    // The user's own group takes the same number when it is free.
    let gid = if group
        .lines()
        .any(|l| l.split(':').nth(2) == Some(&uid.to_string()))
    {
        free_id(&group)
    } else {
        uid
    };
    // Ubuntu's build user logs in with bash.
    let shell = if exists_in_image(root, "/bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let user = StepUser {
        name: NAME.into(),
        ids: Ids { uid, gid },
        home: home.clone(),
        shell: shell.into(),
    };
    // A locked password ("!"), as cloud-init's default user has: sudo does
    // not ask for it (NOPASSWD) and nobody can log in with one.
    let mut lines = vec![
        (
            "/etc/passwd",
            format!("{NAME}:x:{uid}:{gid}::{home}:{shell}"),
        ),
        ("/etc/group", format!("{NAME}:x:{gid}:")),
    ];
    if read(root, "/etc/shadow")?.is_some() {
        lines.push(("/etc/shadow", format!("{NAME}:!:19000:0:99999:7:::")));
    }
    if read(root, "/etc/gshadow")?.is_some() {
        lines.push(("/etc/gshadow", format!("{NAME}:!::")));
    }
    let sudoers = resolve_inside(root, SUDOERS, true)?;
    let mut f = create_new(&sudoers, 0o440).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create {SUDOERS} in the image: {e}"),
        )
    })?;
    use std::io::Write;
    f.write_all(
        format!("# AIB's build user (kiln local provider); removed before capture\n{NAME} ALL=(ALL) NOPASSWD:ALL\n")
            .as_bytes(),
    )?;
    for (db, line) in &lines {
        append(root, db, line)?;
    }
    let home_parent = resolve_inside(root, "/home", false)?;
    let made_home_parent = match std::fs::symlink_metadata(&home_parent) {
        Ok(_) => false,
        Err(_) => {
            std::fs::create_dir(&home_parent)?;
            true
        }
    };
    std::fs::create_dir(&home_dir)?;
    std::os::unix::fs::lchown(&home_dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(&home_dir, std::fs::Permissions::from_mode(0o750))?;
    copy_skel(root, &home_dir, user.ids)?;
    Ok(BuildUser::Created(Created {
        user,
        lines,
        made_home_parent,
    }))
}

/// `/etc/skel`'s plain files into the new home, owned by the user.
fn copy_skel(root: &Path, home: &Path, ids: Ids) -> io::Result<()> {
    let Some(skel) = follow_in_image(root, "/etc/skel") else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(skel) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let mut to = create_new(&home.join(e.file_name()), 0o644)?;
            std::io::copy(&mut std::fs::File::open(e.path())?, &mut to)?;
            std::os::unix::fs::fchown(&to, Some(ids.uid), Some(ids.gid))?;
        }
    }
    Ok(())
}

/// Removes a user kiln created (deprovisioning, as `waagent
/// -deprovision+user` does): the lines it appended, the user's name in
/// other groups' member lists (a step's `usermod -aG`), its home and its
/// sudoers drop-in. Returns what went, for the manifest.
pub(crate) fn remove(root: &Path, created: &Created) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    let name = created.user.name.as_str();
    for db in ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"] {
        let Some(text) = read(root, db)? else {
            continue;
        };
        let mut own: Vec<&str> = created
            .lines
            .iter()
            .filter(|(d, _)| *d == db)
            .map(|(_, l)| l.as_str())
            .collect();
        let members_field = match db {
            "/etc/group" => Some(3),
            "/etc/gshadow" => Some(3),
            _ => None,
        };
        let mut changed = false;
        let mut kept = Vec::new();
        for line in text.lines() {
            if let Some(i) = own.iter().position(|l| *l == line) {
                own.remove(i);
                changed = true;
                continue;
            }
            let stripped = members_field.and_then(|field| without_member(line, field, name));
            match stripped {
                Some(l) => {
                    changed = true;
                    kept.push(l);
                }
                None => kept.push(line.to_string()),
            }
        }
        if changed {
            let mut out = kept.join("\n");
            out.push('\n');
            write_keeping_mode(&resolve_inside(root, db, false)?, &out)?;
            done.push(format!("removed the build user from {db}"));
        }
    }
    let home = resolve_inside(root, &created.user.home, false)?;
    if std::fs::symlink_metadata(&home).is_ok() {
        // remove_dir_all does not follow a symlink a step may have put there.
        std::fs::remove_dir_all(&home).or_else(|_| std::fs::remove_file(&home))?;
        done.push(format!("removed {}", created.user.home));
    }
    if created.made_home_parent {
        let _ = std::fs::remove_dir(resolve_inside(root, "/home", false)?);
    }
    let sudoers = resolve_inside(root, SUDOERS, false)?;
    if std::fs::symlink_metadata(&sudoers).is_ok() {
        std::fs::remove_file(&sudoers)?;
        done.push(format!("removed {SUDOERS}"));
    }
    Ok(done)
}

/// `line` without `name` in its comma-separated member list (field
/// `field`), or `None` when the name is not there.
fn without_member(line: &str, field: usize, name: &str) -> Option<String> {
    let mut fields: Vec<&str> = line.split(':').collect();
    let members = fields.get(field)?;
    if !members.split(',').any(|m| m == name) {
        return None;
    }
    let rest: Vec<&str> = members.split(',').filter(|m| *m != name).collect();
    let joined = rest.join(",");
    fields[field] = &joined;
    Some(fields.join(":"))
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
        let BuildUser::Created(Created { user: u, .. }) = ensure(r).unwrap() else {
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
        let sudoers = std::fs::read_to_string(r.join("etc/sudoers.d/90-kiln-build-user")).unwrap();
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
    fn symlinks_in_the_image_are_followed_inside_it() {
        let d = image(true);
        let r = d.path();
        // Merged /usr: /bin -> usr/bin, and an alternatives link for sudo.
        std::fs::remove_file(r.join("bin/bash")).unwrap();
        std::fs::remove_dir(r.join("bin")).unwrap();
        std::fs::write(r.join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("etc/alternatives")).unwrap();
        std::fs::rename(r.join("usr/bin/sudo"), r.join("usr/bin/sudo.ws")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/sudo.ws", r.join("etc/alternatives/sudo")).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/sudo", r.join("usr/bin/sudo")).unwrap();
        assert_eq!(
            follow_in_image(r, "/bin/../bin/bash"),
            Some(r.join("usr/bin/bash"))
        );
        let BuildUser::Created(c) = ensure(r).unwrap() else {
            panic!("expected a new user")
        };
        assert_eq!(c.user.shell, "/bin/bash");
        // A link out of the image stays in it.
        std::os::unix::fs::symlink("/", r.join("etc/up")).unwrap();
        assert_eq!(follow_in_image(r, "/etc/up/etc"), Some(r.join("etc")));
    }

    #[test]
    fn what_kiln_would_overwrite_is_refused() {
        let d = image(true);
        let r = d.path();
        std::fs::create_dir_all(r.join("home/packer")).unwrap();
        assert!(ensure(r).unwrap_err().to_string().contains("/home/packer"));
        std::fs::remove_dir(r.join("home/packer")).unwrap();
        // A planted link where kiln writes its sudoers rule.
        std::os::unix::fs::symlink("/tmp/host-file", r.join("etc/sudoers.d/90-kiln-build-user"))
            .unwrap();
        assert!(ensure(r).is_err());
        assert!(!Path::new("/tmp/host-file").exists());
        assert!(!std::fs::read_to_string(r.join("etc/passwd"))
            .unwrap()
            .contains("packer"));
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
