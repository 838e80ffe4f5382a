//! kiln's Azure face end to end, on the simulator: `kiln serve` (the custom
//! handler, in this process) on the azure provider, driven by the simulated
//! Functions host through the custom-handler protocol, against the
//! simulated ARM, Compute Gallery, Resource Graph and Service Bus. Each test
//! runs a whole scenario in seconds of wall time on a clock 600 times faster.
//! `scale` instead runs three `kiln serve` processes behind the host, at 300×,
//! for about a minute.

#[path = "../common/mod.rs"]
mod common;

mod builds;
mod cycles;
mod dashboard;
mod evidence;
mod harness;
mod preflight;
mod retention;
mod scale;
mod sim_cli;
