//! Scripts and files a build fetches (`scriptUri`, `sourceUri`): checksums
//! verified before use, and HTTP sources served by a small local server.

use super::*;

#[tokio::test]
async fn checksums_are_verified_before_a_script_or_file_is_used() {
    let e = env().await;
    let script = e.dir.path().join("s.sh");
    std::fs::write(&script, "echo hi\n").unwrap();
    let wrong = "0".repeat(64);
    let body = template(
        "app",
        json!([{"type": "Shell", "name": "s", "scriptUri": script.display().to_string(), "sha256Checksum": wrong}]),
    );
    let s = build(&e.p, "t-sum", &body).await;
    assert!(
        s.message
            .starts_with("customizer: step 's': sha256 mismatch: expected 0000"),
        "{}",
        s.message
    );
    let body = template(
        "app",
        json!([{"type": "File", "name": "f", "sourceUri": script.display().to_string(), "destination": "/etc/x", "sha256Checksum": wrong}]),
    );
    let s = build(&e.p, "t-sum2", &body).await;
    assert!(s.message.contains("sha256 mismatch"), "{}", s.message);
    let body = template(
        "app",
        json!([{"type": "File", "name": "f", "sourceUri": "/nonexistent/file", "destination": "/etc/x"}]),
    );
    // A local file that is not there is refused with the template, before
    // any build starts.
    let err = e.p.put_template("t-missing", &body).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("`/nonexistent/file` is not a file on this machine"),
        "{err:#}"
    );
}

/// A one-request-at-a-time HTTP server: path → (status, body).
async fn http_server(routes: Vec<(&'static str, u16, &'static str)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            // Routes match the path; a query (a SAS token) is ignored.
            let target = req.split_whitespace().nth(1).unwrap_or("/");
            let path = target.split('?').next().unwrap_or("/").to_string();
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, *b))
                .unwrap_or((404, "not found"));
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_files_come_over_http_with_their_checksums() {
    let e = env().await;
    let script = "echo over-http > /etc/http-script\n";
    let base = http_server(vec![("/s.sh", 200, script), ("/boom", 503, "busy")]).await;
    let body = template(
        "app",
        json!([
            {"type": "Shell", "name": "remote", "scriptUri": format!("{base}/s.sh"), "sha256Checksum": sha256(script.as_bytes())},
            {"type": "File", "name": "remote-file", "sourceUri": format!("{base}/s.sh"), "destination": "/srv/s.sh"}
        ]),
    );
    let s = build(&e.p, "t-http", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let body = template(
        "app",
        json!([{"type": "Shell", "name": "gone", "scriptUri": format!("{base}/nope.sh")}]),
    );
    let s = build(&e.p, "t-http404", &body).await;
    assert!(
        s.message
            .starts_with("customizer: step 'gone': cannot download"),
        "{}",
        s.message
    );
    let body = template(
        "app",
        json!([{"type": "Shell", "name": "busy", "scriptUri": format!("{base}/boom")}]),
    );
    let s = build(&e.p, "t-http503", &body).await;
    assert!(
        s.message
            .starts_with("network: step 'busy': cannot download"),
        "{}",
        s.message
    );
    assert!(classify(&s.message).is_transient());
}

/// A SAS token in a `sourceUri` or `scriptUri` is used for the download and
/// written nowhere: not in the customization log, the provenance manifest or
/// a failure message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_token_in_a_uri_stays_out_of_the_log_the_provenance_and_errors() {
    let e = env().await;
    let sig = "sig=Zm9vYmFyLXNhcy1zZWNyZXQtNDcxMQ%3D%3D";
    let sas = format!("?sv=2022-11-02&se=2026-12-31&sp=r&{sig}");
    let script = "echo fetched > /etc/with-sas\n";
    let base = http_server(vec![("/s.sh", 200, script), ("/boom", 503, "busy")]).await;
    let body = template(
        "app",
        json!([
            {"type": "Shell", "name": "remote", "scriptUri": format!("{base}/s.sh{sas}")},
            {"type": "File", "name": "remote-file", "sourceUri": format!("{base}/s.sh{sas}"), "destination": "/srv/s.sh"}
        ]),
    );
    let s = build(&e.p, "t-sas", &body).await;
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    let log = std::fs::read_to_string(e.p.log_path("t-sas")).unwrap();
    assert!(
        log.contains("/s.sh?sv=REDACTED&se=REDACTED&sp=REDACTED&sig=REDACTED"),
        "{log}"
    );
    assert!(!log.contains("Zm9vYmFy"), "{log}");
    let details = e.p.run_details("t-sas").await.unwrap().unwrap();
    let manifest = details.manifest.expect("a manifest").to_string();
    assert!(manifest.contains("sig=REDACTED"), "{manifest}");
    assert!(!manifest.contains("Zm9vYmFy"), "{manifest}");
    // A failed download names the file, not the token.
    for (name, path) in [("t-sas404", "/nope.sh"), ("t-sas503", "/boom")] {
        let body = template(
            "app",
            json!([{"type": "File", "name": "f", "sourceUri": format!("{base}{path}{sas}"), "destination": "/srv/x"}]),
        );
        let s = build(&e.p, name, &body).await;
        assert_eq!(s.run_state, RunState::Failed);
        assert!(s.message.contains("sig=REDACTED"), "{}", s.message);
        assert!(!s.message.contains("Zm9vYmFy"), "{}", s.message);
    }
}
