//! The local base images: version ordering, pinned and missing versions, and
//! tarball import.

use super::*;

#[tokio::test]
async fn the_base_catalog_orders_versions_and_records_the_exact_one() {
    let e = env().await;
    e.p.import_base(URN, "1.0.10", BaseFrom::Busybox)
        .await
        .unwrap();
    e.p.import_base(URN, "1.0.9", BaseFrom::Busybox)
        .await
        .unwrap();
    assert!(e
        .p
        .import_base(URN, "1.0.9", BaseFrom::Busybox)
        .await
        .is_err());
    assert!(e
        .p
        .import_base("no-colons", "1", BaseFrom::Busybox)
        .await
        .is_err());
    let bases = e.p.list_bases().await.unwrap();
    assert_eq!(
        bases.iter().map(|b| b.version.as_str()).collect::<Vec<_>>(),
        ["1.0.0", "1.0.9", "1.0.10"]
    );
    assert!(bases[0].path.join("bin/busybox").is_file());
    let src = Source::PlatformImage {
        publisher: "kiln".into(),
        offer: "busybox".into(),
        sku: "test".into(),
        version: "latest".into(),
        exact_version: None,
    };
    assert_eq!(e.p.versions(&src).await.unwrap().len(), 3);
    let s = build(&e.p, "t-latest", &template("app", json!([]))).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let d = e.p.run_details("t-latest").await.unwrap().unwrap();
    assert_eq!(d.source_exact_version.as_deref(), Some("1.0.10"));
    assert_eq!(d.manifest.unwrap()["source"]["exactVersion"], "1.0.10");
    // A pinned version, and a missing one.
    let mut b = template("app", json!([]));
    set(&mut b, "/properties/source/version", json!("1.0.9"));
    build(&e.p, "t-pinned", &b).await;
    assert_eq!(
        e.p.run_details("t-pinned")
            .await
            .unwrap()
            .unwrap()
            .source_exact_version
            .as_deref(),
        Some("1.0.9")
    );
    set(&mut b, "/properties/source/version", json!("9.9.9"));
    let s = build(&e.p, "t-nobase", &b).await;
    assert!(s.message.starts_with("internal: source: base image kiln:busybox:test version 9.9.9 is not in the local catalog"), "{}", s.message);
    // Tarball import.
    let tar = e.dir.path().join("root.tar");
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&bases[0].path)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let t =
        e.p.import_base("kiln:tar:test", "1", BaseFrom::Tar(tar))
            .await
            .unwrap();
    assert!(t.path.join("bin/busybox").is_file());
}
