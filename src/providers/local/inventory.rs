//! The SBOM of a captured root file system: its dpkg database, each
//! package's copyright file and its os-release, read from inside the root.
//!
//! Every path is the image's, resolved the way the image itself would
//! resolve it (as if the root were `/`): an absolute symlink in the image
//! points into the image, `..` stops at the image's root, and a symlink
//! can never take the host out of it (see [`resolve_in_image`]). That
//! matters here more than anywhere: `/etc/os-release` is a symlink to
//! `../usr/lib/os-release` on Debian, and a package's `/usr/share/doc/<pkg>`
//! may be a symlink to a sibling's, both legitimately.
//!
//! Blocking: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::util::resolve_inside;
use crate::domain::evidence::dpkg::{parse_copyright, parse_os_release, parse_status};
use crate::domain::evidence::sbom::{PlacedFile, Sbom};

/// dpkg's database of a large server image is a few MB.
const STATUS_LIMIT: u64 = 256 << 20;
/// The longest copyright files (firmware, office suites) are under 2 MB.
const COPYRIGHT_LIMIT: u64 = 8 << 20;
const OS_RELEASE_LIMIT: u64 = 64 << 10;
/// Symlinks followed for one path before giving up, as the kernel does.
const MAX_LINKS: usize = 40;

/// The inventory of the image whose root file system is `root`. A root
/// without a dpkg database (busybox, distroless) has no packages; a
/// database that cannot be parsed is an error, not an empty list.
pub(crate) fn read_sbom(
    root: &Path,
    subject: &str,
    files: Vec<PlacedFile>,
    created: DateTime<Utc>,
) -> anyhow::Result<Sbom> {
    let os = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| {
            read_in_image(root, p, OS_RELEASE_LIMIT)
                .ok()
                .flatten()
                .and_then(|b| parse_os_release(&String::from_utf8_lossy(&b)))
        });
    let status_path = "/var/lib/dpkg/status";
    let mut packages = match read_in_image(root, status_path, STATUS_LIMIT)
        .with_context(|| format!("reading {status_path} in the image at {}", root.display()))?
    {
        None => Vec::new(),
        Some(bytes) => parse_status(&String::from_utf8_lossy(&bytes))
            .with_context(|| format!("{status_path} in the image at {}", root.display()))?,
    };
    // One copyright per name: the architectures of a Multi-Arch: same
    // package share their doc folder.
    let mut licenses: HashMap<String, Option<String>> = HashMap::new();
    for p in &mut packages {
        p.license = licenses
            .entry(p.name.clone())
            .or_insert_with(|| copyright_license(root, &p.name))
            .clone();
    }
    let mut sbom = Sbom {
        subject: subject.to_string(),
        os,
        packages,
        files,
        created,
        tool: format!("kiln {}", env!("CARGO_PKG_VERSION")),
    };
    sbom.normalize();
    Ok(sbom)
}

/// The license `/usr/share/doc/<package>/copyright` declares; `None` when
/// it is missing, unreadable, too long or not machine-readable.
fn copyright_license(root: &Path, package: &str) -> Option<String> {
    // dpkg's names are `[a-z0-9][a-z0-9+.-]+`; anything else is not a
    // name to put in a path.
    let plain = !package.is_empty() && package != "." && package != ".." && !package.contains('/');
    if !plain {
        return None;
    }
    let path = format!("/usr/share/doc/{package}/copyright");
    let bytes = read_in_image(root, &path, COPYRIGHT_LIMIT).ok().flatten()?;
    parse_copyright(&String::from_utf8_lossy(&bytes))
}

/// The content of `inner` (a path in the image), or `None` when it does not
/// exist. Refused: more than `limit` bytes, and anything but a regular file.
fn read_in_image(root: &Path, inner: &str, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let resolved = match resolve_in_image(root, inner) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The resolved path has no symlink left in it; resolve_inside checks
    // the parents again, and O_NOFOLLOW the file itself, so that a link
    // swapped in meanwhile is refused rather than followed.
    let host = resolve_inside(root, &resolved, false)?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&host)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{inner}: not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{inner}: longer than {limit} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// `inner` with every symlink on the way replaced by its target, read as
/// the image reads it: an absolute target starts again at the image's root
/// and `..` never climbs above it. Each folder walked through is a real
/// folder under `root`, so the result names a file under `root` whatever
/// the links say. `NotFound` when a folder on the way is missing.
fn resolve_in_image(root: &Path, inner: &str) -> std::io::Result<String> {
    let mut todo: std::collections::VecDeque<OsString> = components(Path::new(inner)).into();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = done
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        // A missing part (the file, or a folder on the way) is NotFound:
        // the caller's "not there".
        let md = std::fs::symlink_metadata(&here)?;
        if md.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(std::io::Error::other(format!(
                    "{inner}: more than {MAX_LINKS} symlinks"
                )));
            }
            let target = std::fs::read_link(&here)?;
            if target.is_absolute() {
                done.clear();
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
        } else {
            if !todo.is_empty() && !md.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{inner}: a parent is not a folder"),
                ));
            }
            done.push(part);
        }
    }
    if done.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{inner}: names no file"),
        ));
    }
    let mut out = String::new();
    for c in &done {
        out.push('/');
        out.push_str(c.to_str().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{inner}: not UTF-8"),
            )
        })?);
    }
    Ok(out)
}

/// The names and `..`s of a path; the root and `.` are dropped.
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const DEP5_MIT: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
                            Files: *\nCopyright: someone\nLicense: Expat\n";
    const DEP5_GPL3: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
                             Files: *\nCopyright: outside\nLicense: GPL-3+\n";

    fn stanza(name: &str, version: &str) -> String {
        format!("Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n")
    }

    fn write(root: &Path, inner: &str, text: &str) {
        let p = root.join(inner.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn created() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

    /// A root laid out like a Debian image, and beside it (outside the
    /// root) a folder whose files must never be read.
    fn image() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        write(&outside, "copyright", DEP5_GPL3);
        write(&outside, "status", &stanza("smuggled", "6.6.6"));
        let status = [
            ("jq", "1.6-2.1"),
            ("libjq1", "1.6-2.1"),
            ("evil", "1"),
            ("evil2", "1"),
            ("nodoc", "1"),
        ]
        .map(|(n, v)| stanza(n, v))
        .concat();
        write(&root, "/var/lib/dpkg/status", &status);
        write(&root, "/usr/share/doc/jq/copyright", DEP5_MIT);
        // Debian policy: a doc folder may be a link to a sibling's.
        symlink("jq", root.join("usr/share/doc/libjq1")).unwrap();
        // Links that point out of the root: absolute (a host path) and by `..`.
        symlink(&outside, root.join("usr/share/doc/evil")).unwrap();
        symlink(
            "../../../../../../../../outside",
            root.join("usr/share/doc/evil2"),
        )
        .unwrap();
        write(
            &root,
            "/usr/lib/os-release",
            "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        );
        // As base-files ships it.
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        (dir, root, outside)
    }

    #[test]
    fn a_debian_root_gives_its_packages_licenses_and_os() {
        let (_dir, root, _) = image();
        let placed = vec![PlacedFile {
            path: "/etc/motd".into(),
            sha256: "ab".repeat(32),
        }];
        let s = read_sbom(&root, "web/1.0.0", placed.clone(), created()).unwrap();
        let names: Vec<&str> = s.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["evil", "evil2", "jq", "libjq1", "nodoc"]);
        let license = |n: &str| s.package(n).unwrap().license.as_deref();
        assert_eq!(license("jq"), Some("MIT"));
        assert_eq!(
            license("libjq1"),
            Some("MIT"),
            "a sibling's doc folder link is followed inside the image"
        );
        assert_eq!(license("nodoc"), None);
        let os = s.os.as_ref().unwrap();
        assert_eq!(
            (os.id.as_str(), os.version_id.as_deref()),
            ("debian", Some("12"))
        );
        assert_eq!(s.files, placed);
        assert_eq!(s.subject, "web/1.0.0");
        assert!(s.tool.starts_with("kiln "));
    }

    #[test]
    fn a_symlink_never_leads_out_of_the_root() {
        let (_dir, root, outside) = image();
        let s = read_sbom(&root, "x", vec![], created()).unwrap();
        // The file outside says GPL-3+; read inside the image there is nothing.
        assert_eq!(s.package("evil").unwrap().license, None);
        assert_eq!(s.package("evil2").unwrap().license, None);
        // The database itself as a link to a host file: read as the image's
        // path, which does not exist there.
        std::fs::remove_file(root.join("var/lib/dpkg/status")).unwrap();
        symlink(outside.join("status"), root.join("var/lib/dpkg/status")).unwrap();
        let s = read_sbom(&root, "x", vec![], created()).unwrap();
        assert!(s.packages.is_empty(), "{:?}", s.packages);
        // …and where the same path does exist inside the image, that is what is read.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        write(&inside, "status", &stanza("inside", "1"));
        let s = read_sbom(&root, "x", vec![], created()).unwrap();
        let names: Vec<&str> = s.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["inside"]);
    }

    #[test]
    fn a_root_without_dpkg_has_no_packages() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "/etc/os-release",
            "ID=alpine\nVERSION_ID=3.20.0\n",
        );
        write(dir.path(), "/bin/busybox", "");
        let s = read_sbom(dir.path(), "busybox", vec![], created()).unwrap();
        assert!(s.packages.is_empty());
        assert_eq!(s.os.unwrap().id, "alpine");
    }

    #[test]
    fn a_broken_database_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "/var/lib/dpkg/status",
            "Package: x\nStatus: install ok installed\n",
        );
        let e = format!(
            "{:#}",
            read_sbom(dir.path(), "x", vec![], created()).unwrap_err()
        );
        assert!(e.contains("/var/lib/dpkg/status"), "{e}");
        assert!(e.contains("has no Version field"), "{e}");
    }

    #[test]
    fn link_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
        symlink("status", dir.path().join("var/lib/dpkg/status")).unwrap();
        let e = read_sbom(dir.path(), "x", vec![], created()).unwrap_err();
        assert!(format!("{e:#}").contains("symlinks"), "{e:#}");
    }

    /// On a real Debian root (the host's by default; `KILN_INVENTORY_ROOT`
    /// names another): run with `--ignored --nocapture` to see the count
    /// and the time.
    #[test]
    #[ignore]
    fn reads_a_real_debian_root() {
        let root = std::env::var_os("KILN_INVENTORY_ROOT")
            .map_or_else(|| PathBuf::from("/"), PathBuf::from);
        let t = std::time::Instant::now();
        let s = read_sbom(&root, "host", vec![], created()).unwrap();
        let took = t.elapsed();
        let licensed = s.packages.iter().filter(|p| p.license.is_some()).count();
        println!(
            "{}: {} packages ({} with a machine-readable license), os {:?}, in {:?}",
            root.display(),
            s.packages.len(),
            licensed,
            s.os,
            took
        );
        assert!(!s.packages.is_empty());
    }
}
