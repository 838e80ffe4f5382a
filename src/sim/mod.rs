//! Azure in a box: a loopback server that speaks the wire formats of the
//! Azure services kiln uses, and a Functions-host simulator that drives
//! `kiln serve` through the custom-handler protocol, so that the azure
//! provider can run whole builds on one machine. See docs/simulator.md.
//!
//! Image builds here are a scripted fake, not the local provider:
//! deterministic, without root tools, and fast under the clock factor. The
//! local provider already proves that a template makes a real image; the
//! simulator proves the wire, what kiln sends and how it reads each answer.
//!
//! | module | what |
//! |---|---|
//! | [`arm`] | ARM surfaces: Image Builder, Compute Gallery, marketplace, Resource Graph, the staging storage and its `customization.log` |
//! | [`bus`] | Service Bus REST: send with scheduled delivery, peek-lock receive |
//! | [`key_vault`] | Key Vault keys: get a P-256 key, sign ES256 |
//! | [`faults`] | scripted transport faults and the request log, as a layer over every route |
//! | [`server`] | [`server::Sim`]: one listener for all of it, plus the `/_sim` control API |
//! | [`functions_host`] | the Functions host: queue triggers by peek-lock, timers in sim time, Event Grid, HTTP forwarding |

pub mod arm;
pub mod bus;
pub mod factory;
pub mod faults;
pub mod functions_host;
pub mod key_vault;
pub mod server;
