//! Evidence for every published image: what is in it (SBOM), what changed
//! since the last version and since its base, whether a vulnerability feed
//! lets it be promoted, and signed provenance tying the disk to its
//! template. Pure: files are read by adapters and handed in as bytes.
//!
//! | idea | module |
//! |---|---|
//! | the inventory, format-neutral | [`sbom`] |
//! | OSV advisories and a feed of them | [`osv`] |
//! | matching an SBOM against a feed; the gate's policy and verdict | [`gate`] |

pub mod gate;
pub mod osv;
pub mod sbom;
