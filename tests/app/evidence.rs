//! Evidence end to end on the local factory: the SBOM of a published
//! version, the diff between two versions and against the base, the
//! vulnerability gate holding promotion under `enforce` and only reporting
//! under `audit`, the summary in the completion event, and `kiln verify`
//! passing on the published disk and failing after one byte of it changed.
//!
//! The base is a busybox root with a Debian 12 package database (jq, curl,
//! libcurl4, unzip at bookworm's versions) and os-release: what the SBOM,
//! diff and gate read, built in milliseconds. The seed lab's real apt
//! install is the demo's (`scripts/demo.sh`) and the local provider's
//! Debian test's.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::harness::{tiny, Factory, Options};
use crate::common::{bounded, repo};
use kiln::providers::local::BaseFrom;

const URN: (&str, &str, &str) = ("kiln", "debian-fake", "12");

fn stanza(name: &str, version: &str, source: Option<&str>) -> String {
    let source = source.map(|s| format!("Source: {s}\n")).unwrap_or_default();
    format!(
        "Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\n{source}Version: {version}\nDescription: {name}\n\n"
    )
}

/// A tarball of the busybox base plus a Debian 12 package database.
fn fake_debian(busybox_root: &Path, work: &Path) -> std::path::PathBuf {
    let root = work.join("fake-root");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(busybox_root)
        .arg(&root)
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/doc/jq")).unwrap();
    let status = [
        stanza("curl", "7.88.1-10+deb12u5", None),
        stanza("jq", "1.6-2.1", None),
        stanza("libcurl4", "7.88.1-10+deb12u5", Some("curl")),
        stanza("libjq1", "1.6-2.1", Some("jq")),
        stanza("unzip", "6.0-28", None),
    ]
    .concat();
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("usr/share/doc/jq/copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: 2012 Stephen Dolan\nLicense: MIT\n",
    )
    .unwrap();
    let tar = work.join("fake-debian.tar");
    assert!(std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    tar
}

/// A pipeline on the fake base whose one step may add a package (as apt
/// would: a stanza in dpkg's database).
fn lab(name: &str, add: Option<&str>, gate: Value) -> (String, Value) {
    let (n, mut doc) = tiny(name, json!({"gate": gate}));
    if gate.is_null() {
        doc["kiln"].as_object_mut().unwrap().remove("gate");
    }
    doc["properties"]["source"] = json!({"type": "PlatformImage", "publisher": URN.0, "offer": URN.1, "sku": URN.2, "version": "latest"});
    let mut inline = vec!["echo 'baseline' > /etc/aib-build-info".to_string()];
    if let Some(pkg) = add {
        inline.push(format!(
            "printf 'Package: {pkg}\\nStatus: install ok installed\\nArchitecture: amd64\\nVersion: 2.1.0-1\\nDescription: x\\n\\n' >> /var/lib/dpkg/status"
        ));
    }
    doc["properties"]["customize"] =
        json!([{"type": "Shell", "name": "baseline", "inline": inline}]);
    (n, doc)
}

fn version_of(build: &Value) -> String {
    build["build"]["state"]["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["artifact_id"].as_str()))
        .unwrap_or_else(|| panic!("no published version in {build:#}"))
        .to_string()
}

fn kiln(data: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_DATA_DIR", data)
        .env_remove("KILN_SIGNING_KEY")
        .current_dir(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_version_gets_an_sbom_a_diff_a_gate_verdict_and_signed_provenance() {
    bounded(async {
        let gate = |mode: &str| json!({"mode": mode, "maxSeverity": "medium"});
        let f = Factory::start(Options {
            pipelines: vec![
                lab("lab-enforce", None, gate("enforce")),
                lab("lab-audit", None, gate("audit")),
                lab("lab-plus", Some("tree"), Value::Null),
            ],
            env: vec![(
                "KILN_OSV_FEED",
                repo().join("tests/fixtures/osv").display().to_string(),
            )],
            ..Options::default()
        })
        .await;
        let bases = f.provider.list_bases().await.unwrap();
        let tar = fake_debian(&bases[0].path, f.dir.path());
        f.provider
            .import_base(
                &format!("{}:{}:{}", URN.0, URN.1, URN.2),
                "12.0.1",
                BaseFrom::Tar(tar),
            )
            .await
            .unwrap();

        let done = f.expect_event("dev.kiln.build.succeeded");
        let enforce = f.build("lab-enforce", None).await;
        let enforce = f.wait_terminal(&enforce, Duration::from_secs(120)).await;
        assert_eq!(enforce["state"], "succeeded", "{enforce:#}");
        let event = done.within(Duration::from_secs(10)).await;
        let audit = f.build("lab-audit", None).await;
        let audit = f.wait_terminal(&audit, Duration::from_secs(120)).await;
        assert_eq!(audit["state"], "succeeded", "{audit:#}");
        let plus = f.build("lab-plus", None).await;
        let plus = f.wait_terminal(&plus, Duration::from_secs(120)).await;
        assert_eq!(plus["state"], "succeeded", "{plus:#}");

        // The completion event carries the summary: the SBOM's digest and
        // size, what changed since the base, and the gate's verdict.
        let ev = &event.data["evidence"];
        assert_eq!(ev["sbom"]["packages"], 5, "{ev:#}");
        assert_eq!(ev["gate"]["mode"], "enforce", "{ev:#}");
        assert_eq!(ev["gate"]["verdict"], "fail", "{ev:#}");
        assert_eq!(ev["promoted"], false);
        assert_eq!(ev["provenance"]["signed"], true, "{ev:#}");
        assert_eq!(ev["errors"], json!([]), "{ev:#}");
        let blocking = ev["gate"]["blocking"].to_string();
        assert!(
            blocking.contains("DSA-9901-1"),
            "curl's high finding blocks: {blocking}"
        );
        assert!(
            !blocking.contains("DEBIAN-CVE-2099-0001"),
            "jq's medium one does not: {blocking}"
        );

        let v_enforce = version_of(&enforce);
        let v_audit = version_of(&audit);
        let v_plus = version_of(&plus);
        let gallery = f.get("/api/gallery").await;
        let find = |id: &str| -> Value {
            gallery
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|d| d["versions"].as_array().unwrap().iter())
                .find(|v| {
                    id.ends_with(&format!(
                        "/{}/versions/{}",
                        image_of(&v["definitionId"]),
                        v["version"].as_str().unwrap()
                    ))
                })
                .cloned()
                .unwrap_or_else(|| panic!("{id} not in {gallery:#}"))
        };
        // enforce: published held back from latest, and left there; audit:
        // the same findings, reported, and the version is latest.
        assert_eq!(find(&v_enforce)["excludeFromLatest"], true);
        assert_eq!(find(&v_audit)["excludeFromLatest"], false);
        let audit_ev = f.get(&format!("/api/evidence?version={v_audit}")).await;
        assert_eq!(
            audit_ev["summary"]["gate"]["verdict"], "fail",
            "{audit_ev:#}"
        );
        assert_eq!(audit_ev["summary"]["promoted"], false);
        assert!(
            audit_ev["findings"]["findings"].as_array().unwrap().len() >= 4,
            "{audit_ev:#}"
        );
        // The SBOM's digest is a lineage tag of the version.
        let sbom_sha = event.data["evidence"]["sbom"]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            find(&v_enforce)["tags"]["kiln.sbom.sha256"],
            sbom_sha.as_str()
        );
        // The gallery listing (and so the dashboard) shows it in short:
        // curl and libcurl4 block.
        assert_eq!(
            find(&v_enforce)["evidence"],
            json!({"packages": 5, "sbomSha256": sbom_sha, "gate": {"mode": "enforce", "verdict": "fail", "blocking": 2}, "signed": true})
        );

        let data = f.dir.path().join("data");
        // The SBOM lists the image's packages with their versions.
        let (ok, table) = kiln(&data, &["sbom", &v_enforce]);
        assert!(ok, "{table}");
        for line in [
            "jq\t1.6-2.1\tamd64\tjq\tMIT",
            "curl\t7.88.1-10+deb12u5",
            "unzip\t6.0-28",
        ] {
            assert!(table.contains(line), "`{line}` missing from:\n{table}");
        }
        // What one build added over another: exactly that package.
        let (ok, d) = kiln(&data, &["diff", &v_audit, &v_plus]);
        assert!(ok, "{d}");
        assert_eq!(d.trim(), "+ tree 2.1.0-1");
        let (ok, d) = kiln(&data, &["diff", &v_plus]);
        assert!(ok, "{d}");
        assert_eq!(d.trim(), "+ tree 2.1.0-1", "against its base");
        let api_diff = f
            .get(&format!("/api/evidence/diff?from={v_audit}&to={v_plus}"))
            .await;
        assert_eq!(
            api_diff["added"],
            json!([{"name": "tree", "arch": "amd64", "to": "2.1.0-1"}])
        );
        assert_eq!(api_diff["removed"], json!([]));

        // Signed provenance: verifies on the published disk, and not after
        // one byte of that disk changed.
        let (ok, out) = kiln(&data, &["verify", &v_enforce]);
        assert!(ok, "{out}");
        assert!(
            out.contains("verified") && out.contains("signature: good"),
            "{out}"
        );
        // Built again from the template kept with it, on the same base
        // version: the same packages and a byte-identical disk, and nothing
        // published or left behind.
        let versions = |g: Value| -> Vec<(Value, Value)> {
            g.as_array()
                .unwrap()
                .iter()
                .flat_map(|d| d["versions"].as_array().unwrap().iter())
                .map(|v| (v["definitionId"].clone(), v["version"].clone()))
                .collect()
        };
        let published_before = versions(f.get("/api/gallery").await);
        let (ok, out) = kiln(&data, &["verify", &v_enforce, "--rebuild"]);
        assert!(ok, "{out}");
        assert!(out.contains("rebuild: packages: the same"), "{out}");
        assert!(out.contains("identical to the signed disk"), "{out}");
        assert!(out.lines().any(|l| l == "reproduces"), "{out}");
        assert_eq!(versions(f.get("/api/gallery").await), published_before);
        let vhd = data.join("vhd");
        assert!(
            !vhd.exists() || std::fs::read_dir(&vhd).unwrap().next().is_none(),
            "the rebuild's scratch disk is removed"
        );
        // Nor its template, staging, facts or log.
        let leftovers: Vec<String> = walk(&data)
            .into_iter()
            .filter(|p| p.contains("kiln-rebuild-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // The template kept for it is kiln's user's alone (it may hold a SAS).
        let published = f.provider.gallery_version(&v_enforce).await.unwrap().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(published.path.join("template.json"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let (ok, out) = kiln(&data, &["verify", &v_enforce, "--rebuild", "--json"]);
        assert!(ok, "{out}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["reproduces"], true, "{report:#}");
        assert_eq!(report["rebuild"]["disks"][0]["name"], "disk.qcow2");

        let disk = f
            .provider
            .gallery_version(&v_enforce)
            .await
            .unwrap()
            .unwrap()
            .disk;
        flip_one_byte(&disk);
        let (ok, out) = kiln(&data, &["verify", &v_enforce]);
        assert!(!ok, "a changed disk must not verify: {out}");
        assert!(out.contains("disk.qcow2: sha256 is"), "{out}");
        let (ok, out) = kiln(&data, &["verify", &v_enforce, "--rebuild"]);
        assert!(!ok, "{out}");
        assert!(out.contains("rebuild: not tried"), "{out}");
        // A stranger's key does not verify it either.
        let stranger = f.dir.path().join("stranger.pub.pem");
        std::fs::write(
            &stranger,
            kiln::domain::evidence::dsse::PublicKey::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                    .verifying_key()
                    .to_bytes(),
            )
            .to_pem()
            .unwrap(),
        )
        .unwrap();
        let (ok, out) = kiln(
            &data,
            &["verify", &v_audit, "--key", stranger.to_str().unwrap()],
        );
        assert!(
            !ok && out.contains("no signature is from a trusted key"),
            "{out}"
        );
        f.stop().await;
    })
    .await
}

fn image_of(def: &Value) -> String {
    def.as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// Every path under `dir`, as text.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out
}

fn flip_one_byte(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

/// After publish: a feed that gains a finding above the line makes the
/// re-check report the version and, with `revoke`, exclude it from latest
/// with an end of life; a held (`enforce`) version whose blocking advisory
/// is withdrawn is promoted. Nothing changes when the feed did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_revokes_a_version_that_newly_fails_and_promotes_one_that_now_passes() {
    bounded(async {
        let feed = tempfile::tempdir().unwrap();
        let fixtures = repo().join("tests/fixtures/osv");
        let copy = |name: &str| {
            std::fs::copy(fixtures.join(name), feed.path().join(name)).unwrap();
        };
        // jq's medium finding only: within the policy.
        copy("DEBIAN-CVE-2099-0001.json");
        let env = vec![("KILN_OSV_FEED", feed.path().display().to_string())];
        let policy = |mode: &str| json!({"mode": mode, "maxSeverity": "medium", "revoke": true});
        let pipelines = vec![
            lab("lab-revoke", None, policy("audit")),
            lab("lab-held", None, policy("enforce")),
            lab(
                "lab-pass",
                None,
                json!({"mode": "enforce", "maxSeverity": "critical"}),
            ),
        ];
        let f = Factory::start(Options {
            pipelines: pipelines.clone(),
            env: env.clone(),
            ..Options::default()
        })
        .await;
        let bases = f.provider.list_bases().await.unwrap();
        let tar = fake_debian(&bases[0].path, f.dir.path());
        f.provider
            .import_base(
                &format!("{}:{}:{}", URN.0, URN.1, URN.2),
                "12.0.1",
                BaseFrom::Tar(tar),
            )
            .await
            .unwrap();
        let revoke = f.build("lab-revoke", None).await;
        let revoke = version_of(&f.wait_terminal(&revoke, Duration::from_secs(120)).await);
        // Enforced and passing at build time: promoted by the evidence step.
        let pass = f.build("lab-pass", None).await;
        let pass = version_of(&f.wait_terminal(&pass, Duration::from_secs(120)).await);
        // Held: curl's high finding is in the feed when it is built.
        copy("DSA-9901-1.json");
        let held = f.build("lab-held", None).await;
        let held = version_of(&f.wait_terminal(&held, Duration::from_secs(120)).await);

        // A second instance of the factory on the same data runs the timer.
        let rt = super::harness::runtime(
            f.dir.path(),
            &Options {
                pipelines,
                env,
                ..Options::default()
            },
        )
        .await;
        let gallery = |id: String| {
            let p = f.provider.clone();
            async move { p.gallery_version(&id).await.unwrap().unwrap().version }
        };
        assert!(!gallery(revoke.clone()).await.exclude_from_latest);
        assert!(gallery(held.clone()).await.exclude_from_latest);
        let p = gallery(pass.clone()).await;
        assert!(!p.exclude_from_latest, "passed the enforced gate: promoted");
        assert_eq!(p.tags["kiln.gate"], "passed");
        // An operator takes it out of latest again: no re-check may undo that.
        let (status, v) = f
            .post(
                "/api/gallery/promote",
                &json!({"versionId": pass, "demote": true}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert!(gallery(pass.clone()).await.exclude_from_latest);

        // A VM still runs lab-revoke's version: the report names it.
        f.provider.vm_create(&revoke, "web-1").await.unwrap();
        // The feed gained curl's finding since lab-revoke was published.
        super::triggers::tick(&rt.app, kiln::app::wire::FunctionName::EvidenceRecheck).await;
        let v = gallery(revoke.clone()).await;
        assert!(v.exclude_from_latest, "revoked: excluded from latest");
        assert!(v.end_of_life.is_some(), "revoked: given an end of life");
        let events = std::fs::read_to_string(f.dir.path().join("data/events.jsonl")).unwrap();
        let vulnerable: Vec<Value> = events
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["type"] == "dev.kiln.version.vulnerable")
            .collect();
        assert_eq!(vulnerable.len(), 1, "{vulnerable:#?}");
        assert_eq!(vulnerable[0]["data"]["version"], revoke.as_str());
        assert_eq!(vulnerable[0]["data"]["revoked"], true);
        assert_eq!(vulnerable[0]["data"]["inUse"], true);
        assert_eq!(vulnerable[0]["data"]["consumers"], json!(["web-1"]));
        assert!(vulnerable[0]["data"]["blocking"]
            .to_string()
            .contains("DSA-9901-1"));
        assert!(
            gallery(held.clone()).await.exclude_from_latest,
            "still blocked: still held"
        );

        // The same feed again: nothing changes, nothing is reported twice.
        super::triggers::tick(&rt.app, kiln::app::wire::FunctionName::EvidenceRecheck).await;
        let events = std::fs::read_to_string(f.dir.path().join("data/events.jsonl")).unwrap();
        assert_eq!(events.matches("dev.kiln.version.vulnerable").count(), 1);

        // curl's advisory is withdrawn from the feed: the held version passes now.
        std::fs::remove_file(feed.path().join("DSA-9901-1.json")).unwrap();
        super::triggers::tick(&rt.app, kiln::app::wire::FunctionName::EvidenceRecheck).await;
        assert!(
            !gallery(held.clone()).await.exclude_from_latest,
            "promoted once the gate passes"
        );
        let events = std::fs::read_to_string(f.dir.path().join("data/events.jsonl")).unwrap();
        assert!(events.contains("dev.kiln.version.promoted"), "{events}");
        // A revoked version stays revoked, and a demoted one demoted: only
        // what the gate held is the gate's to promote.
        assert!(gallery(revoke.clone()).await.exclude_from_latest);
        assert!(
            gallery(pass.clone()).await.exclude_from_latest,
            "the operator's demotion stands"
        );
        f.stop().await;
    })
    .await
}
