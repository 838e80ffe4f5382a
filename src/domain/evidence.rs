//! Evidence for every published image: what is in it (SBOM), what changed
//! since the last version and since its base, whether a vulnerability feed
//! lets it be promoted, and signed provenance tying the disk to its
//! template. Pure: files are read by adapters and handed in as bytes.
//!
//! | idea | module |
//! |---|---|
//! | the inventory, format-neutral | [`sbom`] |
//! | what a provider saw of a run | [`facts`] |
//! | what a Debian image's files say (dpkg status, DEP-5 copyright, os-release) | [`dpkg`] |
//! | the SBOM as SPDX 2.3 JSON, and back | [`spdx`] |
//! | the SBOM as CycloneDX 1.5 JSON | [`cyclonedx`] |
//! | packages added, removed, upgraded, downgraded between two SBOMs | [`diff`] |
//! | OSV advisories and a feed of them | [`osv`] |
//! | matching an SBOM against a feed; the gate's policy and verdict | [`gate`] |
//! | what was built from what: in-toto Statement v1, SLSA provenance v1 | [`provenance`] |
//! | the signed envelope (DSSE) and its verification | [`dsse`] |
//! | whether a rebuild reproduces the signed version | [`reproduce`] |
//! | public keys: Ed25519, ECDSA P-256; ids and PEM | [`keys`] |

pub mod cyclonedx;
pub mod diff;
pub mod dpkg;
pub mod dsse;
pub mod facts;
pub mod gate;
pub mod keys;
pub mod osv;
pub mod provenance;
pub mod reproduce;
pub mod sbom;
pub mod spdx;
