//! `kiln preflight`: every permission kiln and the pipelines' Image Builder
//! identities need, checked against Azure, each one missing printed with
//! the `az` command that grants it. Exits 1 unless everything is granted.
//!
//! It checks the identity it runs as: in the Function App (SSH console) that
//! is the app's managed identity; on a laptop with `KILN_AZURE_CREDENTIAL=cli`
//! it is whoever `az login` signed in.

use std::path::{Path, PathBuf};

use crate::config::gather_env;
use crate::domain::permissions::{
    fix_command, passes, requirements, Deployment, Principal, Requirement, Verdict,
};
use crate::providers::azure::preflight::Preflight;
use crate::providers::azure::AzureSettings;

/// What preflight cannot see, said every time so that a pass is not read
/// as more than it is.
const NOT_CHECKED: &[&str] = &[
    "role assignments made to a group the Image Builder identity is in, deny assignments and role assignment conditions",
    "new role assignments can take minutes to apply: run preflight again before reading a miss as final",
    "Image Builder's own staging resource group, and the Functions host's storage roles (the host fails at start without them)",
];

pub struct Options {
    pub assignee: Option<String>,
    pub service_bus_id: Option<String>,
}

pub async fn run(opts: Options) -> anyhow::Result<super::exit::Exit> {
    let env = gather_env(Some(Path::new("local.settings.json")))?;
    let settings = AzureSettings::from_env(&env)?;
    let pipelines_dir = PathBuf::from(
        env.get("KILN_PIPELINES_DIR")
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty())
            .unwrap_or("pipelines"),
    );
    let pipelines = crate::host::wiring::load_pipelines(&pipelines_dir, None)?;
    let deployment = Deployment {
        service_bus_id: opts
            .service_bus_id
            .unwrap_or_else(|| service_bus_id(&settings)),
        subscription_id: settings.subscription_id.clone(),
        resource_group: settings.resource_group.clone(),
        inventory_subscriptions: settings.inventory_subscriptions.clone(),
    };
    let needed = requirements(&deployment, pipelines.iter());
    let found = Preflight::from_settings(&settings)?
        .check(&needed)
        .await
        .map_err(|e| anyhow::anyhow!("preflight stopped: {e}"))?;
    let assignee = opts
        .assignee
        .or_else(|| settings.client_id.clone())
        .unwrap_or_else(|| default_assignee(env.get("WEBSITE_SITE_NAME"), &settings));
    for line in report(&found, &assignee) {
        println!("{line}");
    }
    if settings.inventory_subscriptions.is_empty() {
        println!("note: KILN_AZURE_INVENTORY_SUBSCRIPTIONS is not set: retention reads every subscription kiln can, and preflight checked only {}", settings.subscription_id);
    }
    for n in NOT_CHECKED {
        println!("not checked: {n}");
    }
    Ok(super::exit::Exit::ok_if(passes(&found)))
}

/// `infra/main.bicep` puts the namespace in kiln's resource group; the
/// setting only has its host name.
fn service_bus_id(s: &AzureSettings) -> String {
    let name = s
        .service_bus_namespace
        .split('.')
        .next()
        .unwrap_or_default();
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ServiceBus/namespaces/{name}",
        s.subscription_id, s.resource_group
    )
}

/// The app's system-assigned identity, found by the app's name when
/// preflight runs in the app (App Service sets `WEBSITE_SITE_NAME`).
fn default_assignee(site: Option<&String>, s: &AzureSettings) -> String {
    let app = site.map(String::as_str).unwrap_or("<function app>");
    format!(
        "\"$(az functionapp identity show -g {} -n {app} --query principalId -o tsv)\"",
        s.resource_group
    )
}

fn who(r: &Requirement) -> String {
    match &r.who {
        Principal::Kiln => "kiln".to_string(),
        Principal::Aib { identity_id } => format!(
            "image builder ({})",
            identity_id.rsplit('/').next().unwrap_or(identity_id)
        ),
    }
}

/// One line per requirement; a fix command under each one missing.
fn report(found: &[(Requirement, Verdict)], assignee: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let (mut granted, mut missing, mut unknown) = (0, 0, 0);
    for (r, v) in found {
        let what = format!("{}  {}  at {}", who(r), r.action, r.scope);
        match v {
            Verdict::Granted => {
                granted += 1;
                lines.push(format!("ok           {what}"));
            }
            Verdict::Missing => {
                missing += 1;
                lines.push(format!("MISSING      {what}: {}", r.why));
                lines.push(format!("  fix: {}", fix_command(r, assignee)));
            }
            Verdict::Unknown(reason) => {
                unknown += 1;
                lines.push(format!("NOT CHECKED  {what}: {reason}"));
            }
        }
    }
    lines.push(format!(
        "preflight: {granted} granted, {missing} missing, {unknown} not checked"
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::permissions::Plane;

    fn req(who: Principal, action: &str) -> Requirement {
        Requirement {
            who,
            scope: "/subscriptions/s1".into(),
            plane: Plane::Control,
            action: action.into(),
            role: "Reader",
            why: "list marketplace versions".into(),
        }
    }

    #[test]
    fn each_miss_is_followed_by_its_fix_and_the_summary_counts_all() {
        let found = vec![
            (req(Principal::Kiln, "a/read"), Verdict::Granted),
            (req(Principal::Kiln, "b/read"), Verdict::Missing),
            (
                req(
                    Principal::Aib {
                        identity_id: "/x/userAssignedIdentities/id-aib".into(),
                    },
                    "c/write",
                ),
                Verdict::Unknown("cannot read the identity".into()),
            ),
        ];
        let lines = report(&found, "app-principal");
        assert_eq!(lines[0], "ok           kiln  a/read  at /subscriptions/s1");
        assert_eq!(
            lines[1],
            "MISSING      kiln  b/read  at /subscriptions/s1: list marketplace versions"
        );
        assert_eq!(
            lines[2],
            "  fix: az role assignment create --assignee app-principal --role \"Reader\" --scope /subscriptions/s1"
        );
        assert!(lines[3].starts_with("NOT CHECKED  image builder (id-aib)  c/write"));
        assert_eq!(
            lines.last().unwrap(),
            "preflight: 1 granted, 1 missing, 1 not checked"
        );
    }

    #[test]
    fn the_namespace_is_looked_for_in_kilns_resource_group() {
        let env: crate::config::Env = [
            (
                "AZURE_SUBSCRIPTION_ID",
                "11111111-2222-3333-4444-555555555555",
            ),
            ("KILN_AZURE_LOCATION", "westeurope"),
            ("KILN_AZURE_RESOURCE_GROUP", "rg-kiln"),
            (
                "ServiceBusConnection__fullyQualifiedNamespace",
                "kiln-sb-abc.servicebus.windows.net",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = AzureSettings::from_env(&env).unwrap();
        assert_eq!(
            service_bus_id(&s),
            "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-kiln/providers/Microsoft.ServiceBus/namespaces/kiln-sb-abc"
        );
        assert!(default_assignee(Some(&"kiln-func-abc".to_string()), &s)
            .contains("az functionapp identity show -g rg-kiln -n kiln-func-abc"));
    }
}
