//! The web dashboard: how it is served (HTTP) and what it does in a real
//! browser against a running factory, with screenshots of its views.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{json, Value};

use crate::browser::{Browser, WAIT};
use crate::harness::{bounded, tiny, Factory, Options};

/// `tiny` with a Patch Tuesday schedule (so there is a next fire time) and
/// a step that takes a few seconds between two lines of output (so its log
/// can be seen growing), and `broken`, whose one step fails.
fn pipelines() -> Vec<(String, Value)> {
    let (name, mut scheduled) = tiny(
        "tiny",
        json!({ "triggers": { "schedule": { "patchTuesday": { "offsetDays": 1, "at": "03:00", "timeZone": "Europe/Berlin" } } } }),
    );
    scheduled["properties"]["customize"] = json!([
        { "type": "Shell", "name": "hello", "inline": ["echo 'hello from kiln' > /etc/kiln-hello", "echo step one done", "sleep 8", "echo step two done"] }
    ]);
    let scheduled = (name, scheduled);
    let (name, mut broken) = tiny("broken", json!({ "build": { "maxAttempts": 1 } }));
    broken["properties"]["customize"] = json!([
        { "type": "Shell", "name": "configure", "inline": ["echo configuring the image", "echo 'no such package: kiln-missing' >&2", "exit 3"] }
    ]);
    vec![scheduled, (name, broken)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_is_served_as_cacheable_static_files_with_a_strict_policy() {
    bounded(async {
        let f = Factory::start(Options::default()).await;
        let no_redirect = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        // `kiln local`'s root leads to the dashboard.
        let root = no_redirect.get(format!("{}/", f.api)).send().await.unwrap();
        assert!(root.status().is_redirection(), "{}", root.status());
        assert_eq!(root.headers()["location"], "/api/ui/");

        let page = f
            .http
            .get(format!("{}/api/ui/", f.api))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let h = page.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        let etag = h["etag"].to_str().unwrap().to_string();
        assert!(etag.starts_with('"'), "a strong ETag: {etag}");
        let html = page.text().await.unwrap();
        assert!(!html.contains("<script>"), "no inline script: {html}");
        // The old entry serves the same page.
        let old = f
            .http
            .get(format!("{}/api/dashboard", f.api))
            .send()
            .await
            .unwrap();
        assert_eq!(old.headers()["etag"].to_str().unwrap(), etag);
        let again = f
            .http
            .get(format!("{}/api/ui/", f.api))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);

        // The script and style sheet, at the versioned URLs the page links.
        for (name, kind) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
            let start = html
                .find(&format!("/api/ui/assets/{name}?v="))
                .unwrap_or_else(|| panic!("{name} not linked: {html}"));
            let url = &html[start..start + html[start..].find('"').unwrap()];
            let r = f.http.get(format!("{}{url}", f.api)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with(kind),
                "{url}"
            );
            assert!(
                r.headers()["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("immutable"),
                "{url}"
            );
            let tag = r.headers()["etag"].to_str().unwrap().to_string();
            assert_eq!(format!("\"{}\"", &url[url.find("?v=").unwrap() + 3..]), tag);
            // Without the version it must be revalidated.
            let plain = f
                .http
                .get(format!("{}/api/ui/assets/{name}", f.api))
                .send()
                .await
                .unwrap();
            assert_eq!(plain.headers()["cache-control"], "no-cache");
        }
        let missing = f
            .http
            .get(format!("{}/api/ui/assets/secret.txt", f.api))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);

        // The consumers the gallery view joins in.
        let in_use = f.get("/api/ui/in-use").await;
        assert!(
            in_use["versions"].is_array() && in_use["definitions"].is_array(),
            "{in_use}"
        );
        f.stop().await;
    })
    .await;
}

/// Loads the dashboard, requests builds from it, follows them to their end,
/// opens a build's page and the gallery, and saves screenshots of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_browser_the_dashboard_builds_follows_and_shows_the_gallery() {
    bounded(async {
        let f = Factory::start(Options {
            pipelines: pipelines(),
            ..Options::default()
        })
        .await;
        let b = Browser::start(1280, 1000).await;
        let c = &b.client;
        c.goto(&format!("{}/", f.api)).await.unwrap();
        b.wait_for("#view-builds:not([hidden])").await;
        assert_eq!(
            c.current_url().await.unwrap().path(),
            "/api/ui/",
            "`/` leads to the dashboard"
        );

        // A build that fails, requested through the form.
        b.wait_for("#build-pipeline option[value='broken']").await;
        c.find(Locator::Id("build-pipeline"))
            .await
            .unwrap()
            .select_by_value("broken")
            .await
            .unwrap();
        c.find(Locator::Id("build-reason"))
            .await
            .unwrap()
            .send_keys("dashboard test: a failing step")
            .await
            .unwrap();
        // Submitted from the keyboard: Enter in the reason field.
        c.find(Locator::Id("build-reason"))
            .await
            .unwrap()
            .send_keys("\u{E007}")
            .await
            .unwrap();
        let broken = requested_build(&b, None).await;

        // A build that succeeds, requested with a pipeline's "Build now".
        c.find(Locator::Id("nav-gallery"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_for("button.build-now[data-pipeline='tiny']")
            .await
            .click()
            .await
            .unwrap();
        let id = requested_build(&b, Some(&broken)).await;

        // Its page follows the log while the step runs.
        b.click("#status a#requested-build").await;
        wait_text(&b, "#build-log", "step one done").await;
        let running = f.build_state(&id).await;
        let log_state = c
            .find(Locator::Id("log-state"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let shown = c
            .find(Locator::Id("build-log"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !shown.contains("step two done") && log_state.contains("following"),
            "the page should show the log as it grows: {log_state}; {shown}"
        );
        assert!(
            !matches!(
                running["state"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ),
            "the build ended before its page was read: {running:#}"
        );
        b.wait_for("#timeline li[data-state='queued']").await;
        b.screenshot("build-following").await;

        // The list follows both to their end without a reload.
        c.find(Locator::Id("nav-builds"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_for(&format!("tr[data-build='{id}'][data-state='succeeded']"))
            .await;
        b.wait_for(&format!("tr[data-build='{broken}'][data-state='failed']"))
            .await;
        assert_eq!(f.wait_terminal(&id, WAIT).await["state"], "succeeded");
        let row = c
            .find(Locator::Css(&format!("tr[data-build='{id}']")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            row.contains("succeeded")
                && row.contains("tiny")
                && row.contains("1.0.0")
                && row.contains("manual, by dashboard"),
            "{row}"
        );
        audit(&b, "builds").await;
        let builds_png = b.screenshot("builds").await;

        // The failed build's page says why.
        b.click(&format!("a[data-focus='b:{broken}']")).await;
        let failure = b
            .wait_for("#build-failure:not([hidden])")
            .await
            .text()
            .await
            .unwrap();
        let api = f.build_state(&broken).await;
        let category = api["build"]["state"]["category"].as_str().unwrap();
        assert!(
            failure.contains(category),
            "{failure} lacks {category}: {api:#}"
        );
        b.wait_for("#log-state").await;
        wait_text(&b, "#build-log", "no such package: kiln-missing").await;

        // The successful build's page: a bar per state visited, and its log.
        b.click("a[href='#/builds']").await;
        b.click(&format!("a[data-focus='b:{id}']")).await;
        b.wait_for("#timeline li[data-state='succeeded']").await;
        wait_text(&b, "#log-state", "complete").await;
        let api = f.build_state(&id).await;
        let visited: Vec<String> = api["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["to"].as_str().unwrap().to_string())
            .collect();
        let mut drawn = Vec::new();
        for li in c.find_all(Locator::Css("#timeline li")).await.unwrap() {
            drawn.push(li.attr("data-state").await.unwrap().unwrap_or_default());
            li.find(Locator::Css(".bar"))
                .await
                .expect("every state has a bar");
        }
        assert_eq!(drawn, visited, "one bar per state visited, in order");
        assert!(
            visited.len() >= 3 && visited[0] == "queued" && visited.last().unwrap() == "succeeded",
            "{visited:?}"
        );
        let log = f
            .http
            .get(format!("{}/api/builds/{id}/log", f.api))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!log.trim().is_empty());
        let shown = c
            .find(Locator::Id("build-log"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(shown.trim(), log.trim(), "the page shows the whole log");
        audit(&b, "build").await;
        c.set_window_size(1280, 1300).await.unwrap();
        let timeline_png = b.screenshot("build-timeline").await;

        // The gallery: the version with its lineage, consumers and retention.
        c.find(Locator::Id("nav-gallery"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let version = b
            .wait_for("div.definition[data-definition$='/images/tiny'] tr[data-version='1.0.0']")
            .await;
        let text = version.text().await.unwrap();
        version
            .find(Locator::Css(&format!("a[href='#/builds/{id}']")))
            .await
            .expect("the version links the build that made it");
        let plan = f.get("/api/retention/plan").await;
        let action = plan
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["definitionId"]
                    .as_str()
                    .unwrap()
                    .ends_with("/images/tiny")
            })
            .map(|p| {
                p["items"][0]["action"]["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .unwrap();
        assert!(
            text.contains(&action) && text.contains("none found"),
            "{text}"
        );
        // What the version changed, read from the evidence API when opened:
        // the busybox image has no package database, so nothing changed.
        version
            .find(Locator::Css("details.changes summary"))
            .await
            .expect("a version with evidence discloses its changes")
            .click()
            .await
            .unwrap();
        wait_text(
            &b,
            "div.definition[data-definition$='/images/tiny'] tr[data-version='1.0.0'] div.changes",
            "no package added, removed or changed",
        )
        .await;
        let pipeline = b
            .wait_for("#pipelines-body tr[data-pipeline='tiny']")
            .await
            .text()
            .await
            .unwrap();
        let next = f.get("/api/pipelines/tiny/schedule?count=1").await;
        assert!(
            pipeline.contains(next[0]["cycle"].as_str().unwrap()) && pipeline.contains("armed"),
            "{pipeline} vs {next}"
        );
        audit(&b, "gallery").await;
        // Tall enough for the pipelines and both definitions.
        c.set_window_size(1280, 1500).await.unwrap();
        let gallery_png = b.screenshot("gallery").await;

        // A phone-sized window: nothing scrolls sideways.
        c.set_window_size(390, 844).await.unwrap();
        assert_fits(&b, "gallery").await;
        b.screenshot("gallery-narrow").await;
        c.find(Locator::Id("nav-builds"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_for(&format!("tr[data-build='{id}'][data-state='succeeded']"))
            .await;
        assert_fits(&b, "builds").await;
        b.screenshot("builds-narrow").await;

        for p in [builds_png, timeline_png, gallery_png] {
            assert!(
                std::fs::metadata(&p).unwrap().len() > 10_000,
                "{} looks empty",
                p.display()
            );
        }
        b.close().await;
        f.stop().await;
    })
    .await;
}

/// What the page must hold to be usable without sight of colour or a
/// mouse: text contrast of at least 4.5:1 (WCAG AA) against the nearest
/// opaque background, a label for every field, a name for every control.
const AUDIT: &str = r#"
const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
const lum = (c) => {
  const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const background = (e) => {
  for (; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c;
  }
  return [255, 255, 255];
};
const shown = (e) => e.getClientRects().length > 0 && !e.closest("[hidden]");
const lowContrast = [];
for (const e of document.querySelectorAll("body *")) {
  if (!shown(e) || ![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
  const a = lum(rgb(getComputedStyle(e).color)), b = lum(background(e));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) lowContrast.push(`${e.tagName}.${e.className} ${ratio.toFixed(2)}: ${e.textContent.trim().slice(0, 40)}`);
}
const unlabelled = [...document.querySelectorAll("input, select, textarea")]
  .filter((e) => shown(e) && !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).map((e) => e.id || e.name);
const nameless = [...document.querySelectorAll("button, a[href]")]
  .filter((e) => shown(e) && !(e.getAttribute("aria-label") || e.textContent.trim())).map((e) => e.outerHTML.slice(0, 80));
return { lowContrast, unlabelled, nameless };
"#;

async fn audit(b: &Browser, view: &str) {
    let found = b.client.execute(AUDIT, vec![]).await.unwrap();
    for (what, list) in found.as_object().unwrap() {
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(0),
            "{view} view: {what}: {list}"
        );
    }
}

/// Fails when the page is wider than the window, naming what sticks out.
async fn assert_fits(b: &Browser, view: &str) {
    b.wait_for(&format!("#view-{view}:not([hidden])")).await;
    let overflow = b
        .client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    let wide = b
        .client
        .execute(
            "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id).join(', ')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow.as_i64(),
        Some(0),
        "the {view} view scrolls sideways: {wide}"
    );
}

/// The build the status message links after a request (not `previous`).
async fn requested_build(b: &Browser, previous: Option<&str>) -> String {
    let css = match previous {
        Some(p) => format!("#status a#requested-build:not([data-build='{p}'])"),
        None => "#status a#requested-build".to_string(),
    };
    b.wait_for(&css)
        .await
        .attr("data-build")
        .await
        .unwrap()
        .expect("the link names its build")
}

/// Waits until the element's text contains `needle`.
async fn wait_text(b: &Browser, css: &str, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = b.wait_for(css).await.text().await.unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{css}` never showed {needle:?}; it shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
