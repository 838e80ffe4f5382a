//! What kiln and the Image Builder identity must be allowed to do in Azure,
//! and whether a set of Azure RBAC permissions allows it (`kiln preflight`).
//!
//! The requirements follow what the Azure adapters call
//! (`src/providers/azure/*.rs`): image templates in kiln's resource group,
//! gallery versions of each pipeline's image definitions, the marketplace
//! version lists (a subscription-scope read), Resource Graph over the
//! inventory subscriptions (it returns only what the caller can read),
//! Service Bus send and receive (data actions), and naming each pipeline's
//! user-assigned identity in a template (an `assign` action on it), and the
//! build's log in the staging group's storage (a data action). The Image
//! Builder identity must write versions to each target and read a gallery
//! source.
//!
//! Matching is ARM's: an action is allowed when some permission block lists
//! a pattern that matches it (`*` matches any run of characters, `/`
//! included, without regard to case) and the same block's `notActions` do
//! not; `notActions` subtract within their block, they are no deny.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::pipeline::Pipeline;
use super::template::{GalleryImageRef, Source};

/// One permission block, as ARM's permissions and role definition APIs
/// return it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

/// Control-plane actions (ARM) and data actions (Service Bus messages) are
/// granted in separate lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Plane {
    Control,
    Data,
}

/// Whose permission it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Principal {
    /// The identity `kiln preflight` runs as (in Azure, the app's).
    Kiln,
    /// A pipeline's `identity.userAssignedIdentities` entry, by resource id.
    Aib { identity_id: String },
}

/// One action that must be allowed at one scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requirement {
    pub who: Principal,
    pub scope: String,
    pub plane: Plane,
    pub action: String,
    /// A built-in role that grants it, for the fix command.
    pub role: &'static str,
    /// What fails without it.
    pub why: String,
}

/// What `kiln preflight` checks against: the Azure provider's settings.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub subscription_id: String,
    /// Where kiln's image templates live.
    pub resource_group: String,
    /// Resource id of the Service Bus namespace.
    pub service_bus_id: String,
    /// Where retention looks for consumers; empty means kiln's subscription
    /// (all the identity can read, of which preflight sees only that one).
    pub inventory_subscriptions: Vec<String>,
}

const READER: &str = "Reader";
const CONTRIBUTOR: &str = "Contributor";

/// Whether `pattern` (with `*` wildcards) matches `action`, without regard to case.
pub fn pattern_matches(pattern: &str, action: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let a: Vec<char> = action.to_ascii_lowercase().chars().collect();
    // Greedy glob with one backtrack point: linear enough for action names.
    let (mut pi, mut ai) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ai < a.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ai));
            pi += 1;
        } else if pi < p.len() && p[pi] == a[ai] {
            pi += 1;
            ai += 1;
        } else if let Some((sp, sa)) = star {
            pi = sp + 1;
            ai = sa + 1;
            star = Some((sp, sa + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `permissions` allow `action` on `plane`.
pub fn allows(permissions: &[Permission], plane: Plane, action: &str) -> bool {
    permissions.iter().any(|p| {
        let (granted, denied) = match plane {
            Plane::Control => (&p.actions, &p.not_actions),
            Plane::Data => (&p.data_actions, &p.not_data_actions),
        };
        granted.iter().any(|g| pattern_matches(g, action))
            && !denied.iter().any(|d| pattern_matches(d, action))
    })
}

/// Everything kiln and the pipelines' Image Builder identities need, sorted
/// and without repeats.
pub fn requirements<'a>(
    d: &Deployment,
    pipelines: impl IntoIterator<Item = &'a Pipeline>,
) -> Vec<Requirement> {
    let mut out = BTreeSet::new();
    let kiln = |scope: &str, plane, action: &str, role, why: &str| Requirement {
        who: Principal::Kiln,
        scope: scope.to_string(),
        plane,
        action: action.to_string(),
        role,
        why: why.to_string(),
    };
    let templates = format!(
        "/subscriptions/{}/resourceGroups/{}",
        d.subscription_id, d.resource_group
    );
    for (action, why) in [
        ("read", "read a build's template status"),
        ("write", "create a build's image template"),
        ("delete", "delete a finished attempt's template"),
        ("run/action", "start a build"),
        ("cancel/action", "cancel a build"),
        ("runOutputs/read", "read a build's run outputs"),
    ] {
        out.insert(kiln(
            &templates,
            Plane::Control,
            &format!("Microsoft.VirtualMachineImages/imageTemplates/{action}"),
            CONTRIBUTOR,
            why,
        ));
    }
    for (action, role, why) in [
        (
            "send/action",
            "Azure Service Bus Data Sender",
            "send build requests and follow-up polls",
        ),
        (
            "receive/action",
            "Azure Service Bus Data Receiver",
            "receive messages (the Functions host's triggers, as the app)",
        ),
    ] {
        out.insert(kiln(
            &d.service_bus_id,
            Plane::Data,
            &format!("Microsoft.ServiceBus/namespaces/messages/{action}"),
            role,
            why,
        ));
    }
    let inventory: Vec<String> = if d.inventory_subscriptions.is_empty() {
        vec![d.subscription_id.clone()]
    } else {
        d.inventory_subscriptions.clone()
    };
    for sub in &inventory {
        for kind in [
            "virtualMachines",
            "virtualMachineScaleSets",
            "virtualMachineScaleSets/virtualMachines",
        ] {
            out.insert(kiln(
                &format!("/subscriptions/{sub}"),
                Plane::Control,
                &format!("Microsoft.Compute/{kind}/read"),
                READER,
                "Resource Graph shows retention only the consumers it can read",
            ));
        }
        // The inventory maps shared and community gallery references back
        // through the galleries Resource Graph shows, and refuses to count a
        // listed subscription it cannot read.
        for (action, why) in [
            (
                "Microsoft.Compute/galleries/read",
                "map shared and community gallery references back to galleries",
            ),
            (
                "Microsoft.Resources/subscriptions/read",
                "check that each inventory subscription is readable",
            ),
        ] {
            out.insert(kiln(
                &format!("/subscriptions/{sub}"),
                Plane::Control,
                action,
                READER,
                why,
            ));
        }
    }
    for p in pipelines {
        for target in p.gallery_targets() {
            let def = target.definition_id();
            for (action, why) in [
                ("read", "list the versions retention plans over"),
                ("write", "deprecate and exclude versions from latest"),
                ("delete", "delete versions retention retires"),
            ] {
                out.insert(kiln(
                    &def,
                    Plane::Control,
                    &format!("Microsoft.Compute/galleries/images/versions/{action}"),
                    CONTRIBUTOR,
                    why,
                ));
            }
        }
        match &p.template.properties.source {
            Source::PlatformImage { .. } => {
                out.insert(kiln(
                    &format!("/subscriptions/{}", d.subscription_id),
                    Plane::Control,
                    "Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read",
                    READER,
                    "list marketplace versions (a floating `latest` source fails 403 without it)",
                ));
            }
            Source::SharedImageVersion {
                image_version_id, ..
            } => {
                if let Some(src) = GalleryImageRef::parse(image_version_id) {
                    out.insert(kiln(
                        &src.definition_id(),
                        Plane::Control,
                        "Microsoft.Compute/galleries/images/versions/read",
                        READER,
                        "list the source gallery's versions",
                    ));
                }
            }
            Source::ManagedImage { .. } => {}
        }
        // AIB writes the run's customization.log into a storage account of
        // the staging group: the template's `stagingResourceGroup`, else a
        // group it creates per template (anywhere in the subscription).
        let staging = p
            .template
            .properties
            .staging_resource_group
            .clone()
            .filter(|g| !g.trim().is_empty())
            .unwrap_or_else(|| format!("/subscriptions/{}", d.subscription_id));
        out.insert(kiln(
            &staging,
            Plane::Control,
            "Microsoft.Storage/storageAccounts/read",
            READER,
            "find the staging storage account holding the run's customization.log",
        ));
        out.insert(kiln(
            &staging,
            Plane::Data,
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
            "Storage Blob Data Reader",
            "read the run's customization.log (kiln logs, and the copy kept when the template goes)",
        ));
        for identity in p.template.identity.user_assigned_identities.keys() {
            out.insert(kiln(
                identity,
                Plane::Control,
                "Microsoft.ManagedIdentity/userAssignedIdentities/read",
                "Managed Identity Operator",
                "read the Image Builder identity the pipeline names",
            ));
            out.insert(kiln(
                identity,
                Plane::Control,
                "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
                "Managed Identity Operator",
                "name the identity in an image template",
            ));
            let aib = |scope: String, action: &str, role, why: &str| Requirement {
                who: Principal::Aib {
                    identity_id: identity.clone(),
                },
                scope,
                plane: Plane::Control,
                action: action.to_string(),
                role,
                why: why.to_string(),
            };
            for target in p.gallery_targets() {
                out.insert(aib(
                    target.definition_id(),
                    "Microsoft.Compute/galleries/images/versions/write",
                    CONTRIBUTOR,
                    "Image Builder publishes the build's version",
                ));
            }
            if let Source::SharedImageVersion {
                image_version_id, ..
            } = &p.template.properties.source
            {
                if let Some(src) = GalleryImageRef::parse(image_version_id) {
                    out.insert(aib(
                        src.definition_id(),
                        "Microsoft.Compute/galleries/images/versions/read",
                        READER,
                        "Image Builder reads the source version",
                    ));
                }
            }
        }
    }
    // One line per action and scope, whatever the number of reasons.
    let mut reqs: Vec<Requirement> = out.into_iter().collect();
    reqs.dedup_by(|b, a| {
        a.who == b.who && a.scope == b.scope && a.plane == b.plane && a.action == b.action
    });
    reqs
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    Missing,
    /// The check itself could not be made (and why).
    Unknown(String),
}

/// The `az` command that grants `r`: `kiln` names kiln's own principal (the
/// app identity's object id, or a placeholder saying where to find it); an
/// Image Builder identity is looked up by its resource id.
pub fn fix_command(r: &Requirement, kiln: &str) -> String {
    let assignee = match &r.who {
        Principal::Kiln => kiln.to_string(),
        Principal::Aib { identity_id } => {
            format!("\"$(az identity show --ids {identity_id} --query principalId -o tsv)\"")
        }
    };
    format!(
        "az role assignment create --assignee {assignee} --role \"{}\" --scope {}",
        r.role, r.scope
    )
}

/// Whether preflight passes: every requirement granted.
pub fn passes(verdicts: &[(Requirement, Verdict)]) -> bool {
    verdicts.iter().all(|(_, v)| match v {
        Verdict::Granted => true,
        Verdict::Missing | Verdict::Unknown(_) => false,
    })
}

#[cfg(test)]
mod tests;
