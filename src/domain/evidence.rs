//! Evidence for every published image: what is in it (SBOM), what changed
//! since the last version and since its base, whether a vulnerability feed
//! lets it be promoted, and signed provenance tying the disk to its
//! template. Pure: files are read by adapters and handed in as bytes.
//!
//! | idea | module |
//! |---|---|
//! | the inventory, format-neutral | [`sbom`] |
//! | what was built from what: in-toto Statement v1, SLSA provenance v1 | [`provenance`] |
//! | the signed envelope (DSSE) and its verification | [`dsse`] |
//! | public keys: Ed25519, ECDSA P-256; ids and PEM | [`keys`] |

pub mod dsse;
pub mod keys;
pub mod provenance;
pub mod sbom;
