//! The checks of a pipeline file that serde cannot express: the template's
//! identity, staging resource group, customizers and distribution targets,
//! a misplaced `kiln` section, the `kiln` settings' ranges, and the gate's
//! accepted findings.

use super::read;
use super::{field, FieldError, KilnSection, KILN_KEY};
use crate::domain::evidence::gate::GatePolicy;
use crate::domain::template::{Customizer, Distributor, GalleryImageRef, Identity, IdentityType};

/// Why a fixed `stagingResourceGroup` cannot work with kiln. Deriving one per
/// build would mean kiln creates resource groups and grants the build
/// identity Contributor on each, so the field is refused instead.
const STAGING_RG_REFUSED: &str = "must be empty (or absent): kiln runs concurrent builds and \
a new image template for every attempt, and Image Builder needs its staging resource group \
empty and used by one template at a time, so a fixed group fails the next build or attempt \
as a validation error; remove the field and Image Builder creates and deletes a group for \
each template";

/// The checks serde cannot express, over whatever parts of the template parsed.
pub(super) fn check_template(t: &read::TemplateParts) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(location) = &t.location {
        if location.trim().is_empty() {
            errors.push(field("location", "expected an Azure region name"));
        }
    }
    if let Some(identity) = &t.identity {
        errors.extend(check_identity(identity));
    }
    if let Some(m) = t.build_timeout_in_minutes {
        if m > 960 {
            errors.push(field(
                "properties.buildTimeoutInMinutes",
                format!("expected 0..=960 minutes, got {m}"),
            ));
        }
    }
    if let Some(rg) = t.staging_resource_group.as_deref() {
        if !rg.trim().is_empty() {
            errors.push(field("properties.stagingResourceGroup", STAGING_RG_REFUSED));
        }
    }
    errors.extend(check_distribute(&t.distribute));
    let validators = t
        .validate
        .as_ref()
        .map_or(&[][..], |v| &v.in_vm_validations);
    for (at, c) in crate::domain::template::step_paths(&t.customize, validators) {
        if let Some(Customizer::Shell {
            inline, script_uri, ..
        }) = c
        {
            if inline.is_some() == script_uri.is_some() {
                errors.push(field(
                    at,
                    "a Shell step needs exactly one of `inline` and `scriptUri`",
                ));
            }
        }
    }
    errors
}

/// AIB builds as a user-assigned managed identity, and takes exactly one.
fn check_identity(identity: &Identity) -> Vec<FieldError> {
    match identity.kind {
        IdentityType::UserAssigned => {}
        IdentityType::None => {
            return vec![field(
                "identity.type",
                "expected `UserAssigned`: Azure VM Image Builder runs the build as a user-assigned identity",
            )]
        }
    }
    match identity.user_assigned_identities.len() {
        1 => vec![],
        0 => vec![field(
            "identity.userAssignedIdentities",
            "expected the resource id of the user-assigned identity the build runs as",
        )],
        n => vec![field(
            "identity.userAssignedIdentities",
            format!("expected exactly one user-assigned identity (Azure VM Image Builder takes one), got {n}"),
        )],
    }
}

/// A `kiln` section under another spelling or inside `properties` would be
/// kept as an unknown template field and submitted to AIB, and every kiln
/// setting would silently take its default.
pub(super) fn misplaced_kiln_keys(
    doc: &serde_json::Map<String, serde_json::Value>,
) -> Vec<FieldError> {
    let looks_like = |k: &str| k.trim().eq_ignore_ascii_case(KILN_KEY);
    let top = doc.keys().filter(|k| looks_like(k)).map(|k| {
        field(
            k.as_str(),
            format!("expected the key `{KILN_KEY}` (lower case, no spaces) for kiln's section"),
        )
    });
    let nested = doc
        .get("properties")
        .and_then(|p| p.as_object())
        .into_iter()
        .flat_map(|p| p.keys())
        .filter(|k| looks_like(k))
        .map(|k| {
            field(
                format!("properties.{k}"),
                format!(
                    "kiln's section belongs at the top level, beside `properties`, as `{KILN_KEY}`"
                ),
            )
        });
    top.chain(nested).collect()
}

/// `distribute` holds each target that parsed (`None`: reported already) at its index.
fn check_distribute(distribute: &[Option<Distributor>]) -> Vec<FieldError> {
    // An empty list is reported by the reader (which also reports a missing
    // or malformed one), so that one problem is one error.
    let mut errors = Vec::new();
    let mut outputs = std::collections::BTreeSet::new();
    for (i, d) in distribute.iter().enumerate() {
        let Some(d) = d else { continue };
        let at = format!("properties.distribute[{i}]");
        if !outputs.insert(d.run_output_name().to_string()) {
            errors.push(field(
                format!("{at}.runOutputName"),
                format!(
                    "`{}` is used twice; run output names must be unique",
                    d.run_output_name()
                ),
            ));
        }
        if let Distributor::SharedImage {
            gallery_image_id,
            target_regions,
            replication_regions,
            ..
        } = d
        {
            // API 2025-10-01: the deprecated list "can be specified only if
            // targetRegions is not specified" (AIB refuses the template).
            if !target_regions.is_empty() && !replication_regions.is_empty() {
                errors.push(field(
                    format!("{at}.replicationRegions"),
                    "expected either targetRegions or the deprecated replicationRegions, not both",
                ));
            }
            match GalleryImageRef::parse(gallery_image_id) {
                None => errors.push(field(
                    format!("{at}.galleryImageId"),
                    "expected /subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/galleries/G/images/D",
                )),
                Some(r) if r.version.is_some() => errors.push(field(
                    format!("{at}.galleryImageId"),
                    "expected an image definition id without /versions/…: kiln assigns the version (see kiln.versioning)",
                )),
                Some(_) => {}
            }
        }
    }
    errors
}

pub(super) fn check_kiln(k: &KilnSection) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(s) = &k.triggers.schedule {
        if let Err(e) = crate::domain::schedule::Schedule::from_spec(s) {
            errors.push(field("kiln.triggers.schedule", e));
        }
    }
    if k.build.max_attempts == 0 || k.build.max_attempts > 10 {
        errors.push(field("kiln.build.maxAttempts", "expected 1..=10"));
    }
    if k.build.max_concurrent == 0 {
        errors.push(field("kiln.build.maxConcurrent", "expected at least 1"));
    }
    if let Some(gate) = &k.gate {
        errors.extend(check_gate(gate));
    }
    errors
}

/// An accepted finding needs an advisory id and a reason a reviewer can
/// read; serde sees only that the strings are there. (A malformed `until`
/// is reported by its deserializer, with the path.)
fn check_gate(gate: &GatePolicy) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, entry) in gate.ignore.iter().enumerate() {
        let at = format!("kiln.gate.ignore[{i}]");
        if entry.id.trim().is_empty() {
            errors.push(field(
                format!("{at}.id"),
                "expected the advisory id or CVE id the entry accepts (`DSA-5587-1`, `CVE-2024-2398`)",
            ));
        } else if !seen.insert(entry.id.trim()) {
            errors.push(field(
                format!("{at}.id"),
                format!(
                    "`{}` is listed twice; keep one entry with one reason and date",
                    entry.id
                ),
            ));
        }
        if entry.reason.trim().is_empty() {
            errors.push(field(
                format!("{at}.reason"),
                "expected why the finding is accepted (a ticket, or why it does not apply to this image)",
            ));
        }
    }
    errors
}
