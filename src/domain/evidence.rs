//! Evidence for every published image: what is in it (SBOM), what changed
//! since the last version and since its base, whether a vulnerability feed
//! lets it be promoted, and signed provenance tying the disk to its
//! template. Pure: files are read by adapters and handed in as bytes.
//!
//! | idea | module |
//! |---|---|
//! | the inventory, format-neutral | [`sbom`] |
//! | what a provider saw of a run | [`facts`] |

pub mod facts;
pub mod sbom;
