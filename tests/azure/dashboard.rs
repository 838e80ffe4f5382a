//! The dashboard behind the Functions host: the host forwards only `/api/*`
//! to the custom handler, so the page, its assets and its own JSON route
//! must all answer there, with their headers.

use super::harness::{bounded, World};

#[tokio::test]
async fn the_dashboard_and_its_assets_answer_through_the_functions_host() {
    bounded(async {
        let w = World::start().await;
        let base = w.host.app_url();
        let page = w.http.get(format!("{base}/api/ui/")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert!(page.headers().contains_key("content-security-policy"));
        assert!(page.headers().contains_key("etag"));
        let html = page.text().await.unwrap();
        let start = html
            .find("/api/ui/assets/app.js?v=")
            .expect("the page links its script");
        let url = &html[start..start + html[start..].find('"').unwrap()];
        let script = w.http.get(format!("{base}{url}")).send().await.unwrap();
        assert_eq!(script.status(), 200);
        assert!(script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        assert!(script.text().await.unwrap().contains("/api/builds"));
        // The consumers come from the Azure inventory (Resource Graph) here.
        let in_use = w.api_get("/api/ui/in-use").await;
        assert!(in_use["versions"].is_array(), "{in_use}");
    })
    .await;
}
