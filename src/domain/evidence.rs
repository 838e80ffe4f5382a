//! Evidence for every published image: what is in it (SBOM), what changed
//! since the last version and since its base, whether a vulnerability feed
//! lets it be promoted, and signed provenance tying the disk to its
//! template. Pure: files are read by adapters and handed in as bytes.
//!
//! | idea | module |
//! |---|---|
//! | the inventory, format-neutral | [`sbom`] |
//! | what a Debian image's files say (dpkg status, DEP-5 copyright, os-release) | [`dpkg`] |
//! | the SBOM as SPDX 2.3 JSON, and back | [`spdx`] |
//! | the SBOM as CycloneDX 1.5 JSON | [`cyclonedx`] |
//! | packages added, removed, upgraded, downgraded between two SBOMs | [`diff`] |

pub mod cyclonedx;
pub mod diff;
pub mod dpkg;
pub mod sbom;
pub mod spdx;
