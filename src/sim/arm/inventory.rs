//! What the simulated build VM's `kiln-sbom` step prints: the package
//! inventory of a small Ubuntu 22.04 image plus what the template's inline
//! steps `apt-get install`, in exactly the lines the real step prints
//! (`providers::azure::sbom_step::render`, checked against the real script
//! on a real dpkg database), so kiln's parser reads here what it reads in Azure.

use serde_json::Value;

use crate::providers::azure::sbom_step;

pub(crate) const OS_RELEASE: &str = "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nVERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\nVERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\nHOME_URL=\"https://www.ubuntu.com/\"\nUBUNTU_CODENAME=jammy\n";

/// (package, version, source, source version) of the simulated base image.
const BASE: &[(&str, &str, &str, &str)] = &[
    ("base-files", "12ubuntu4.6", "base-files", "12ubuntu4.6"),
    ("bash", "5.1-6ubuntu1.1", "bash", "5.1-6ubuntu1.1"),
    (
        "ca-certificates",
        "20240203~22.04.1",
        "ca-certificates",
        "20240203~22.04.1",
    ),
    (
        "coreutils",
        "8.32-4.1ubuntu1.2",
        "coreutils",
        "8.32-4.1ubuntu1.2",
    ),
    ("curl", "7.81.0-1ubuntu1.18", "curl", "7.81.0-1ubuntu1.18"),
    (
        "libcurl4",
        "7.81.0-1ubuntu1.18",
        "curl",
        "7.81.0-1ubuntu1.18",
    ),
    (
        "libssl3",
        "3.0.2-0ubuntu1.18",
        "openssl",
        "3.0.2-0ubuntu1.18",
    ),
    (
        "openssl",
        "3.0.2-0ubuntu1.18",
        "openssl",
        "3.0.2-0ubuntu1.18",
    ),
    (
        "tar",
        "1.34+dfsg-1ubuntu0.1.22.04.2",
        "tar",
        "1.34+dfsg-1ubuntu0.1.22.04.2",
    ),
    ("unzip", "6.0-26ubuntu3.2", "unzip", "6.0-26ubuntu3.2"),
];

/// Packages a step may install, with jammy's versions; others get a
/// made-up `1.0-1ubuntu1`.
const ARCHIVE: &[(&str, &str, &str, &str)] = &[
    ("jq", "1.6-2.1ubuntu3", "jq", "1.6-2.1ubuntu3"),
    ("libjq1", "1.6-2.1ubuntu3", "jq", "1.6-2.1ubuntu3"),
    ("nginx", "1.18.0-6ubuntu14.4", "nginx", "1.18.0-6ubuntu14.4"),
    ("git", "1:2.34.1-1ubuntu1.11", "git", "1:2.34.1-1ubuntu1.11"),
    ("zip", "3.0-12build2", "zip", "3.0-12build2"),
];

/// Package names after `apt-get install` (or `apt install`) in `line`,
/// options and anything after a shell operator left out.
pub(crate) fn apt_installs(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < words.len() {
        if matches!(words[i], "apt-get" | "apt") && words[i + 1] == "install" {
            for w in &words[i + 2..] {
                if matches!(*w, "&&" | "||" | ";" | "|") || w.ends_with(';') {
                    if let Some(name) = w.strip_suffix(';').filter(|n| !n.is_empty()) {
                        out.push(name.to_string());
                    }
                    break;
                }
                if !w.starts_with('-') && !w.contains('=') {
                    out.push((*w).to_string());
                }
            }
        }
        i += 1;
    }
    out
}

/// `dpkg-query -W -f DPKG_FORMAT` as the image would answer after `body`'s
/// inline steps ran.
pub(crate) fn dpkg_query(body: &Value) -> String {
    let mut rows: Vec<(String, String, String, String)> = BASE
        .iter()
        .map(|(n, v, s, sv)| (n.to_string(), v.to_string(), s.to_string(), sv.to_string()))
        .collect();
    let lines = body
        .pointer("/properties/customize")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) != Some(sbom_step::STEP_NAME))
        .filter_map(|c| c.get("inline").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str);
    for name in lines.flat_map(apt_installs) {
        if rows.iter().any(|r| r.0 == name) {
            continue;
        }
        let row = ARCHIVE
            .iter()
            .find(|a| a.0 == name)
            .map(|(n, v, s, sv)| (n.to_string(), v.to_string(), s.to_string(), sv.to_string()))
            .unwrap_or_else(|| {
                (
                    name.clone(),
                    "1.0-1ubuntu1".into(),
                    name.clone(),
                    "1.0-1ubuntu1".into(),
                )
            });
        rows.push(row);
    }
    // dpkg-query lists by name.
    rows.sort();
    rows.iter()
        .map(|(n, v, s, sv)| format!("ii \t{n}\t{v}\tamd64\t{s}\t{sv}\n"))
        .collect()
}

/// The lines the `kiln-sbom` step `c` prints for template `body`; none for another step.
pub(crate) fn block(body: &Value, c: &Value) -> Vec<String> {
    if c.get("name").and_then(Value::as_str) != Some(sbom_step::STEP_NAME) {
        return vec![];
    }
    let Some(nonce) = sbom_step::nonce_in(body) else {
        return vec![];
    };
    sbom_step::render(&nonce, OS_RELEASE.as_bytes(), dpkg_query(body).as_bytes())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::providers::azure::sbom_step::{find_block, parse_dpkg_query, Block};

    #[test]
    fn apt_get_install_lines_name_their_packages() {
        assert_eq!(
            apt_installs("sudo apt-get install -y jq unzip"),
            ["jq", "unzip"]
        );
        assert_eq!(
            apt_installs(
                "apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf x"
            ),
            ["nginx"]
        );
        assert_eq!(
            apt_installs("DEBIAN_FRONTEND=noninteractive apt install -qq git;"),
            ["git"]
        );
        assert!(apt_installs("apt-get update").is_empty());
    }

    #[test]
    fn the_steps_block_lists_the_base_and_what_steps_installed() {
        let body = crate::providers::azure::sbom_step::with_step(
            &json!({"properties": {"customize": [{"type": "Shell", "name": "tools", "inline": ["sudo apt-get install -y jq"]}]}}),
            "abc",
        );
        let step = body["properties"]["customize"][1].clone();
        let log: String = block(&body, &step)
            .iter()
            .map(|l| format!("2026/12/01 10:00:00 [azure-arm]     azure-arm: {l}\n"))
            .collect();
        let Some(Block::Inventory { os_release, dpkg }) = find_block(&log, "abc").unwrap() else {
            panic!("no block in {log}");
        };
        assert_eq!(os_release, OS_RELEASE);
        let p = parse_dpkg_query(&dpkg).unwrap();
        let jq = p.iter().find(|p| p.name == "jq").unwrap();
        assert_eq!(jq.version, "1.6-2.1ubuntu3");
        assert!(p.iter().any(|p| p.name == "curl") && p.iter().any(|p| p.name == "unzip"));
        assert!(block(&body, &body["properties"]["customize"][0]).is_empty());
    }
}
