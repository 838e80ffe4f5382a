//! Implementations of the ports: the local provider (one machine) and Azure
//! (ARM REST for Image Builder, Compute Gallery, marketplace, Resource Graph;
//! Service Bus REST for queues), and the OSV feed's download.

pub mod azure;
pub mod evidence_blobs;
pub mod evidence_files;
pub mod local;
pub mod osv_feed;
pub mod vuln_feed;
