//! The local gallery: a version is published once, and versions are
//! updated, excluded from latest, deleted, and used as sources for builds.

use super::*;

#[tokio::test]
async fn a_gallery_version_is_never_published_twice() {
    let e = env().await;
    let explicit = |image: &str| {
        let mut b = template(image, json!([]));
        set(
            &mut b,
            "/properties/distribute/0/galleryImageId",
            json!(format!("{}/versions/2.0.0", def_id(image))),
        );
        b
    };
    let s = build(&e.p, "t-v1", &explicit("app")).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let s = build(&e.p, "t-v2", &explicit("app")).await;
    assert_eq!(s.run_state, RunState::Failed);
    assert!(
        s.message
            .contains("already exists (published by template t-v1)"),
        "{}",
        s.message
    );
    assert_eq!(e.p.list_versions(&def_id("app")).await.unwrap().len(), 1);
    // Without an explicit version, `Latest` versioning takes the next patch.
    let s = build(&e.p, "t-v3", &template("app", json!([]))).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let versions: Vec<String> =
        e.p.list_versions(&def_id("app"))
            .await
            .unwrap()
            .iter()
            .map(|v| v.version.to_string())
            .collect();
    assert_eq!(versions, ["2.0.0", "2.0.1"]);
}

#[tokio::test]
async fn gallery_versions_update_delete_and_feed_builds() {
    let e = env().await;
    for (n, v) in [("t-g1", "1.0.9"), ("t-g2", "1.0.10")] {
        let mut b = template(
            "base",
            json!([shell("mark", &[&format!("echo {v} > /etc/base-version")])]),
        );
        set(
            &mut b,
            "/properties/distribute/0/galleryImageId",
            json!(format!("{}/versions/{v}", def_id("base"))),
        );
        assert_eq!(build(&e.p, n, &b).await.run_state, RunState::Succeeded);
    }
    let latest =
        e.p.gallery_version(&format!("{}/versions/latest", def_id("base")))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(latest.version.version.to_string(), "1.0.10");
    assert_eq!(e.p.gallery_images().await.unwrap(), vec![def_id("base")]);

    // A build from `…/versions/latest` gets 1.0.10's content.
    let mut child = template(
        "child",
        json!([shell("from-parent", &["grep -qx 1.0.10 /etc/base-version"])]),
    );
    set(
        &mut child,
        "/properties/source",
        json!({"type": "SharedImageVersion", "imageVersionId": format!("{}/versions/latest", def_id("base"))}),
    );
    let s = build(&e.p, "t-child", &child).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let d = e.p.run_details("t-child").await.unwrap().unwrap();
    assert_eq!(
        d.source_exact_version,
        Some(format!("{}/versions/1.0.10", def_id("base")))
    );

    // Excluded from latest: latest falls back; the base catalog marks it.
    let v10: ImageVersion = "1.0.10".parse().unwrap();
    e.p.update_version(
        &def_id("base"),
        v10,
        &VersionUpdate {
            exclude_from_latest: Some(true),
            end_of_life: None,
            tags: None,
        },
    )
    .await
    .unwrap();
    let latest =
        e.p.gallery_version(&format!("{}/versions/latest", def_id("base")))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(latest.version.version.to_string(), "1.0.9");
    let src = Source::SharedImageVersion {
        image_version_id: format!("{}/versions/latest", def_id("base")),
        exact_version: None,
    };
    let vs = e.p.versions(&src).await.unwrap();
    assert!(vs.iter().any(|v| v.version == "1.0.10" && v.deprecated));

    // Delete removes files; deleting again is fine; ids compare case-insensitively.
    let path =
        e.p.gallery_version(&format!("{}/versions/1.0.10", def_id("base")))
            .await
            .unwrap()
            .unwrap()
            .path;
    e.p.delete_version(
        &def_id("base")
            .to_uppercase()
            .replace("/VERSIONS", "/versions"),
        v10,
    )
    .await
    .unwrap();
    assert!(!path.exists());
    e.p.delete_version(&def_id("base"), v10).await.unwrap();
    assert_eq!(e.p.list_versions(&def_id("base")).await.unwrap().len(), 1);
    assert!(e
        .p
        .update_version(&def_id("base"), v10, &VersionUpdate::default())
        .await
        .is_err());
}
