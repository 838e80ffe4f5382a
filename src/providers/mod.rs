//! Implementations of the ports: the local provider (and, later, Azure).

pub mod local;
