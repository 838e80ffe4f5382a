//! Azure in a box: a loopback server that speaks the wire formats of the
//! Azure services kiln uses, and a Functions-host simulator that drives
//! `kiln serve` through the custom-handler protocol, so that the azure
//! provider can run whole builds on one machine. See docs/simulator.md.
//!
//! | module | what |
//! |---|---|
//! | [`arm`] | ARM surfaces: Image Builder, Compute Gallery, marketplace, Resource Graph, the staging storage and its `customization.log` |
//! | [`bus`] | Service Bus REST: send with scheduled delivery, peek-lock receive |
//! | [`faults`] | scripted transport faults and the request log, as a layer over every route |
//! | [`server`] | [`server::Sim`]: one listener for all of it, plus the `/_sim` control API |
//! | [`functions_host`] | the Functions host: queue triggers, timers, Event Grid, HTTP forwarding |

pub mod arm;
pub mod bus;
pub mod faults;
pub mod functions_host;
pub mod server;
