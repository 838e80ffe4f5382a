//! The yardstick for `kiln serve`'s start-up (scripts/bench-startup.sh): the
//! least an axum server on tokio's multi-threaded runtime does before its
//! first answer. Listens on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT, as
//! `kiln serve` does, and answers `GET /`.

use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("FUNCTIONS_CUSTOMHANDLER_PORT: a port number");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free");
    let app = Router::new().route("/", get(|| async { "ready" }));
    axum::serve(listener, app).await.expect("serving");
}
