//! `kiln preflight` against ARM: are the requirements of
//! [`crate::domain::permissions`] granted?
//!
//! kiln's own permissions come from the permissions API, which answers for
//! the caller at a scope (`GET {scope}/providers/Microsoft.Authorization/
//! permissions`, 2022-04-01: `{"value": [{"actions", "notActions",
//! "dataActions", "notDataActions"}]}`, one block per role assignment that
//! applies there, inherited ones included).
//!
//! The Image Builder identity's cannot be asked that way: the API only
//! speaks for the caller. So preflight reads the identity (its principal
//! id), lists the role assignments made to that principal that apply to the
//! scope (`$filter=principalId eq '…'` returns those at, above and below
//! it; those at or above count) and reads each role's definition. What that
//! cannot see: assignments through a group the identity is in, deny
//! assignments, role assignment conditions. It needs kiln to be allowed to
//! read the identity and the role assignments; where it is not, the check
//! is reported as not made, with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use super::arm::{ArmClient, ArmOptions};
use super::error::ArmError;
use super::identity::{token_source, TokenSource};
use super::AzureSettings;
use crate::domain::permissions::{allows, Permission, Principal, Requirement, Verdict};

pub const AUTHORIZATION_API: &str = "2022-04-01";
pub const IDENTITY_API: &str = "2023-01-31";

pub struct Preflight {
    arm: ArmClient,
}

impl Preflight {
    pub fn new(arm: ArmClient) -> Self {
        Self { arm }
    }

    /// A client with the configured credential (in Azure, the app's managed identity).
    pub fn from_settings(settings: &AzureSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("Cannot build the HTTP client")?;
        let tokens: Arc<dyn TokenSource> = token_source(&settings.credential, http.clone())?;
        // The configured ARM endpoint: Azure, or the simulator.
        Ok(Self::new(ArmClient::new(
            http,
            ArmOptions {
                base_url: settings.management_url.clone(),
                ..ArmOptions::management()
            },
            tokens,
        )))
    }

    /// Checks each requirement; calls are shared per scope and per identity.
    /// A call that got no answer at all (no token, no connection) ends the
    /// run: every further check would fail the same way.
    pub async fn check(
        &self,
        requirements: &[Requirement],
    ) -> Result<Vec<(Requirement, Verdict)>, ArmError> {
        let mut own: BTreeMap<String, Result<Vec<Permission>, String>> = BTreeMap::new();
        let mut principals: BTreeMap<String, Result<String, String>> = BTreeMap::new();
        let mut granted_to: BTreeMap<(String, String), Result<Vec<Permission>, String>> =
            BTreeMap::new();
        let mut out = Vec::with_capacity(requirements.len());
        for r in requirements {
            let permissions = match &r.who {
                Principal::Kiln => {
                    if !own.contains_key(&r.scope) {
                        own.insert(r.scope.clone(), self.own_permissions(&r.scope).await?);
                    }
                    own[&r.scope].clone()
                }
                Principal::Aib { identity_id } => {
                    if !principals.contains_key(identity_id) {
                        principals
                            .insert(identity_id.clone(), self.principal_id(identity_id).await?);
                    }
                    match principals[identity_id].clone() {
                        Err(e) => Err(e),
                        Ok(principal) => {
                            let key = (principal.clone(), r.scope.clone());
                            if !granted_to.contains_key(&key) {
                                let found = self.assigned_permissions(&principal, &r.scope).await?;
                                granted_to.insert(key.clone(), found);
                            }
                            granted_to[&key].clone()
                        }
                    }
                }
            };
            let verdict = match permissions {
                Ok(p) if allows(&p, r.plane, &r.action) => Verdict::Granted,
                Ok(_) => Verdict::Missing,
                Err(reason) => Verdict::Unknown(reason),
            };
            out.push((r.clone(), verdict));
        }
        Ok(out)
    }

    /// What the caller may do at `scope`.
    async fn own_permissions(&self, scope: &str) -> Checked<Vec<Permission>> {
        let target = format!(
            "{scope}/providers/Microsoft.Authorization/permissions?api-version={AUTHORIZATION_API}"
        );
        let items = match self.arm.list_all(&target).await {
            Ok(items) => items,
            Err(e) if e.is_not_found() => {
                return Ok(Err(format!(
                    "{scope} does not exist, or kiln cannot see it"
                )))
            }
            Err(e) => {
                let e = answered(e)?;
                return Ok(Err(format!(
                    "cannot read kiln's permissions at {scope}: {e}"
                )));
            }
        };
        Ok(blocks(&items).map_err(|e| format!("permissions at {scope}: {e}")))
    }

    /// The object id role assignments name the identity by.
    async fn principal_id(&self, identity_id: &str) -> Checked<String> {
        let target = format!("{identity_id}?api-version={IDENTITY_API}");
        let doc = match self.arm.get_json(&target).await {
            Ok(Some(doc)) => doc,
            Ok(None) => return Ok(Err(format!("the identity {identity_id} does not exist"))),
            Err(e) => {
                let e = answered(e)?;
                return Ok(Err(format!(
                    "cannot read the identity {identity_id} (so its roles were not checked): {e}"
                )));
            }
        };
        Ok(doc
            .pointer("/properties/principalId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("the identity {identity_id} has no properties.principalId")))
    }

    /// The permissions of every role assigned to `principal` at `scope` or above.
    async fn assigned_permissions(&self, principal: &str, scope: &str) -> Checked<Vec<Permission>> {
        let target = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments?api-version={AUTHORIZATION_API}&$filter=principalId%20eq%20'{principal}'"
        );
        let assignments = match self.arm.list_all(&target).await {
            Ok(a) => a,
            Err(e) => {
                let e = answered(e)?;
                return Ok(Err(format!(
                    "cannot list the role assignments at {scope} (kiln needs Microsoft.Authorization/roleAssignments/read there): {e}"
                )));
            }
        };
        let mut permissions = Vec::new();
        for a in &assignments {
            let props = a.get("properties").unwrap_or(&Value::Null);
            let applies = props
                .get("scope")
                .and_then(Value::as_str)
                .is_some_and(|s| covers(s, scope));
            let role = props.get("roleDefinitionId").and_then(Value::as_str);
            let (true, Some(role)) = (applies, role) else {
                continue;
            };
            let target = format!("{role}?api-version={AUTHORIZATION_API}");
            let def = match self.arm.get_json(&target).await {
                Ok(Some(def)) => def,
                Ok(None) => return Ok(Err(format!("the role definition {role} does not exist"))),
                Err(e) => {
                    let e = answered(e)?;
                    return Ok(Err(format!("cannot read the role definition {role}: {e}")));
                }
            };
            let list = def
                .pointer("/properties/permissions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match blocks(&list) {
                Ok(b) => permissions.extend(b),
                Err(e) => return Ok(Err(format!("{role}: {e}"))),
            }
        }
        Ok(Ok(permissions))
    }
}

/// Whether an assignment at `assigned` applies at `scope`: the same scope
/// or one above it, compared as ARM compares ids (without regard to case).
fn covers(assigned: &str, scope: &str) -> bool {
    let a = assigned.trim_end_matches('/').to_ascii_lowercase();
    let s = scope.trim_end_matches('/').to_ascii_lowercase();
    a.is_empty() || s == a || s.starts_with(&format!("{a}/"))
}

fn blocks(items: &[Value]) -> Result<Vec<Permission>, String> {
    items
        .iter()
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| format!("unreadable permission block: {e}"))
        })
        .collect()
}

/// Outer error: no answer from Azure (ends the run). Inner: this check
/// could not be made, and why.
type Checked<T> = Result<Result<T, String>, ArmError>;

/// An error Azure answered (a status) is one check's problem; one without
/// an answer (token, connection) is everyone's.
fn answered(e: ArmError) -> Result<ArmError, ArmError> {
    match e.status {
        Some(_) => Ok(e),
        None => Err(e),
    }
}

#[cfg(test)]
mod tests;
