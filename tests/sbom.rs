//! The SPDX document kiln writes is valid SPDX 2.3 by the SPDX project's
//! own validator: `pyspdxtools` (PyPI `spdx-tools`, installed by
//! scripts/setup-debian.sh) exits 0 and reports nothing.

use std::path::PathBuf;
use std::process::Command;

use chrono::{TimeZone, Utc};
use kiln::domain::evidence::dpkg::{parse_copyright, parse_os_release, parse_status};
use kiln::domain::evidence::sbom::{PlacedFile, Sbom};
use kiln::domain::evidence::spdx::{from_spdx_json, to_spdx_bytes};

/// The validator: `KILN_PYSPDXTOOLS`, else the one the setup script
/// installs.
fn pyspdxtools() -> PathBuf {
    let path = std::env::var_os("KILN_PYSPDXTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/kiln-tools/venv/bin/pyspdxtools"));
    assert!(
        path.exists(),
        "{} not found: run scripts/setup-debian.sh (it installs spdx-tools in /opt/kiln-tools/venv)",
        path.display()
    );
    path
}

/// An inventory with what real images hold and SPDX is strict about:
/// LicenseRefs, an exception, OR groups, epochs, `+` and `~` in versions,
/// a name that cannot be an SPDXID as is, two architectures, a placed file.
fn inventory() -> Sbom {
    let status = "\
Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4

Package: libstdc++6
Status: install ok installed
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14+b1

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134

Package: sysvinit-utils
Status: install ok installed
Architecture: amd64
Source: sysvinit
Version: 1:3.06-4~bpo11+1
";
    let copyrights = [
        (
            "libc6",
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
             Files: *\nCopyright: FSF\nLicense: LGPL-2.1+\n\n\
             Files: debian/*\nCopyright: Debian\nLicense: GPL-2+ with Classpath-exception-2.0 exception\n\n\
             Files: x/*\nCopyright: x\nLicense: public-domain\n",
        ),
        (
            "adduser",
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
             Files: *\nCopyright: x\nLicense: GPL-2+ or Artistic, and BSD-3-clause\n\n\
             Files: y\nCopyright: y\nLicense: GPL-3+ with Autoconf-data exception\n",
        ),
    ];
    let mut packages = parse_status(status).unwrap();
    for p in &mut packages {
        p.license = copyrights
            .iter()
            .find(|(n, _)| *n == p.name)
            .and_then(|(_, text)| parse_copyright(text));
    }
    let mut sbom = Sbom {
        subject: "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/web/versions/1.0.3".into(),
        os: parse_os_release("ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
        packages,
        files: vec![
            PlacedFile {
                path: "/etc/motd".into(),
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            },
            PlacedFile {
                path: "/opt/app/config file.json".into(),
                sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
            },
        ],
        created: Utc.with_ymd_and_hms(2026, 12, 1, 22, 0, 0).unwrap(),
        tool: "kiln 0.1.0".into(),
    };
    sbom.normalize();
    sbom
}

#[test]
fn the_spdx_tools_find_nothing_wrong_with_kilns_document() {
    let bin = pyspdxtools();
    let sbom = inventory();
    // The inventory really holds what the validator must judge.
    let licenses: Vec<&str> = sbom
        .packages
        .iter()
        .filter_map(|p| p.license.as_deref())
        .collect();
    assert!(
        licenses.iter().any(|l| l.contains("LicenseRef-")),
        "{licenses:?}"
    );
    assert!(
        licenses.iter().any(|l| l.contains(" WITH ")),
        "{licenses:?}"
    );
    assert!(licenses.iter().any(|l| l.contains(" OR ")), "{licenses:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sbom.spdx.json");
    let bytes = to_spdx_bytes(&sbom);
    std::fs::write(&file, &bytes).unwrap();
    let out = Command::new(&bin).arg("-i").arg(&file).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} -i {}: {said}",
        bin.display(),
        file.display()
    );
    assert_eq!(said.trim(), "", "the validator reported something");

    let back = from_spdx_json(&serde_json::from_slice(&bytes).unwrap()).unwrap();
    assert_eq!(back, sbom);
}

#[test]
fn the_validator_does_reject_a_broken_document() {
    // The check above can fail: an unknown LicenseRef is an error to it.
    let bin = pyspdxtools();
    let mut doc: serde_json::Value = serde_json::from_slice(&to_spdx_bytes(&inventory())).unwrap();
    doc["packages"][2]["licenseDeclared"] = "LicenseRef-nowhere".into();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.spdx.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(&bin).arg("-i").arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LicenseRef-nowhere"));
}
