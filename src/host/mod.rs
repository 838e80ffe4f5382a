//! The two hosts: the Functions custom handler (`kiln serve`) and the local host (`kiln local`).

pub mod catalog;
pub mod local;
pub mod serve;
pub mod timers;
pub mod wiring;
