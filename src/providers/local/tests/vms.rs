//! VMs made from published images: retention sees them as consumers, and a
//! boot test of an image without a kernel fails validation clearly.

use super::*;

#[tokio::test]
async fn vms_are_consumers_that_retention_sees() {
    let e = env().await;
    let mut b = template("app", json!([]));
    set(
        &mut b,
        "/properties/distribute/0/galleryImageId",
        json!(format!("{}/versions/1.0.0", def_id("app"))),
    );
    assert_eq!(build(&e.p, "t-vm", &b).await.run_state, RunState::Succeeded);
    let vid = format!("{}/versions/1.0.0", def_id("app"));
    let vm = e.p.vm_create(&vid, "web-1").await.unwrap();
    assert_eq!(vm.image_reference, vid);
    e.p.vm_create(&vid, "web-1").await.unwrap();
    e.p.vm_create(&format!("{}/versions/latest", def_id("app")), "web-2")
        .await
        .unwrap();
    assert!(e
        .p
        .vm_create(&format!("{}/versions/9.9.9", def_id("app")), "web-3")
        .await
        .is_err());
    assert!(e
        .p
        .vm_create(&format!("{}/versions/latest", def_id("app")), "web-1")
        .await
        .is_err());
    assert_eq!(e.p.vm_list().await.unwrap().len(), 2);
    let used = e.p.in_use().await.unwrap();
    assert!(used.versions.contains(&vid.to_ascii_lowercase()));
    assert!(used.uses_latest_of(&def_id("app")));
    assert!(e.p.vm_delete("web-2").await.unwrap());
    assert!(!e.p.vm_delete("web-2").await.unwrap());
    assert!(!e.p.in_use().await.unwrap().uses_latest_of(&def_id("app")));
    // A busybox image has no kernel to boot.
    let err =
        e.p.vm_run(&vid, "true", Duration::from_secs(5))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("has no kernel"), "{err}");
    // A boot test on it fails validation clearly.
    let mut b = template("app", json!([]));
    set(&mut b, "/tags/kiln.bootTest.check", json!("uname -r"));
    let s = build(&e.p, "t-boot-nokernel", &b).await;
    assert!(
        s.message
            .starts_with("validation: boot test: the image has no kernel"),
        "{}",
        s.message
    );
}
