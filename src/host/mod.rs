//! The two hosts: the Functions custom handler (`kiln serve`) and the local
//! host (`kiln local`), and what they share.
//!
//! - `serve.rs`: the custom-handler HTTP server the Functions host calls.
//! - `local.rs`: `kiln local`'s host: timers, queue consumers, the API.
//! - `function_json.rs`: the function definitions (`handlers/*/function.json`)
//!   and the queues' settings (`infra/queues.json`).
//! - `http.rs`: the HTTP server both run (per-connection tasks, header read timeout).
//! - `timers.rs`: NCRONTAB schedules.
//! - `wiring.rs`: builds the app from settings (store, providers, queue).

pub mod function_json;
pub mod http;
pub mod local;
pub mod serve;
pub mod timers;
pub mod wiring;
