//! The gate, as specifications: what matches, how severe it is, and what
//! the policy lets through.

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::domain::evidence::sbom::PackageManager;

fn pkg(name: &str, version: &str, source: &str, source_version: &str) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        source: source.into(),
        source_version: source_version.into(),
        license: None,
        manager: PackageManager::Dpkg,
    }
}

fn image(id: &str, version_id: &str, packages: Vec<Package>) -> Sbom {
    let mut s = Sbom {
        subject: "seed-lab".into(),
        os: Some(OsRelease {
            id: id.into(),
            version_id: Some(version_id.into()),
            pretty_name: None,
        }),
        packages,
        files: vec![],
        created: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        tool: "kiln test".into(),
    };
    s.normalize();
    s
}

/// A bookworm image with curl (two binaries from one source) and jq.
fn bookworm() -> Sbom {
    image(
        "debian",
        "12",
        vec![
            pkg("curl", "7.88.1-10+deb12u8", "curl", "7.88.1-10+deb12u8"),
            pkg("libcurl4", "7.88.1-10+deb12u8", "curl", "7.88.1-10+deb12u8"),
            pkg("jq", "1.6-2.1", "jq", "1.6-2.1"),
            pkg("libjq1", "1.6-2.1", "jq", "1.6-2.1"),
            pkg("unzip", "6.0-28", "unzip", "6.0-28"),
        ],
    )
}

/// An advisory against `source` in `ecosystem` with the given `affected` tail.
fn advisory(id: &str, ecosystem: &str, source: &str, affected_tail: &str, top: &str) -> String {
    format!(
        r#"{{"id": "{id}", "modified": "2026-11-01T00:00:00Z", "published": "2026-11-01T00:00:00Z",
            "summary": "{id} summary", {top}
            "affected": [{{"package": {{"ecosystem": "{ecosystem}", "name": "{source}"}} {affected_tail}}}]}}"#
    )
}

fn fixed_at(fix: &str) -> String {
    format!(
        r#", "ranges": [{{"type": "ECOSYSTEM", "events": [{{"introduced": "0"}}, {{"fixed": "{fix}"}}]}}]"#
    )
}

fn feed(records: &[String]) -> Feed {
    Feed::parse_file("test.json", format!("[{}]", records.join(",")).as_bytes()).unwrap()
}

const HIGH_V31: &str = r#""severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}],"#;

fn ids(findings: &[Finding]) -> Vec<(&str, &str)> {
    findings
        .iter()
        .map(|f| (f.id.as_str(), f.package.as_str()))
        .collect()
}

// --- matching ---------------------------------------------------------------

#[test]
fn an_advisory_on_a_source_package_finds_each_of_its_binaries_below_the_fix() {
    let f = feed(&[advisory(
        "DSA-9901-1",
        "Debian:12",
        "curl",
        &fixed_at("7.88.1-10+deb12u99"),
        HIGH_V31,
    )]);
    let found = match_sbom(&bookworm(), &f);
    assert_eq!(
        ids(&found),
        [("DSA-9901-1", "curl"), ("DSA-9901-1", "libcurl4")]
    );
    let curl = &found[0];
    assert_eq!(curl.source, "curl");
    assert_eq!(curl.installed_version, "7.88.1-10+deb12u8");
    assert_eq!(curl.fixed_version.as_deref(), Some("7.88.1-10+deb12u99"));
    assert_eq!(
        curl.fix_published,
        Some(Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(curl.summary.as_deref(), Some("DSA-9901-1 summary"));
}

#[test]
fn a_version_at_the_fix_is_not_a_finding() {
    let f = feed(&[advisory(
        "DSA-9901-1",
        "Debian:12",
        "curl",
        &fixed_at("7.88.1-10+deb12u8"),
        "",
    )]);
    assert_eq!(match_sbom(&bookworm(), &f), []);
}

#[test]
fn versions_compare_by_dpkg_rules_not_as_text() {
    // As text "deb12u10" < "deb12u8"; as Debian versions it is above.
    let f = feed(&[advisory(
        "DSA-9901-1",
        "Debian:12",
        "curl",
        &fixed_at("7.88.1-10+deb12u10"),
        "",
    )]);
    assert_eq!(match_sbom(&bookworm(), &f).len(), 2);
    // A tilde sorts before the empty string: 6.0-28~bpo is below 6.0-28.
    let f = feed(&[advisory(
        "DEBIAN-CVE-2099-0003",
        "Debian:12",
        "unzip",
        &fixed_at("6.0-28~bpo1"),
        "",
    )]);
    assert_eq!(match_sbom(&bookworm(), &f), []);
}

#[test]
fn a_version_after_last_affected_is_not_a_finding_and_one_at_it_is_without_a_fix() {
    let range = |last: &str| {
        format!(
            r#", "ranges": [{{"type": "ECOSYSTEM", "events": [{{"introduced": "0"}}, {{"last_affected": "{last}"}}]}}]"#
        )
    };
    let at = feed(&[advisory(
        "DEBIAN-CVE-2099-0003",
        "Debian:12",
        "unzip",
        &range("6.0-28"),
        "",
    )]);
    let found = match_sbom(&bookworm(), &at);
    assert_eq!(ids(&found), [("DEBIAN-CVE-2099-0003", "unzip")]);
    assert_eq!(found[0].fixed_version, None);
    assert_eq!(found[0].fix_published, None);
    let before = feed(&[advisory(
        "DEBIAN-CVE-2099-0003",
        "Debian:12",
        "unzip",
        &range("6.0-27"),
        "",
    )]);
    assert_eq!(match_sbom(&bookworm(), &before), []);
}

#[test]
fn an_explicit_versions_list_matches_only_the_versions_it_names() {
    let listed = |v: &str| format!(r#", "versions": ["1.5-1", "{v}"]"#);
    let f = feed(&[advisory(
        "DEBIAN-CVE-2099-0001",
        "Debian:12",
        "jq",
        &listed("1.6-2.1"),
        "",
    )]);
    assert_eq!(
        ids(&match_sbom(&bookworm(), &f)),
        [
            ("DEBIAN-CVE-2099-0001", "jq"),
            ("DEBIAN-CVE-2099-0001", "libjq1")
        ]
    );
    let f = feed(&[advisory(
        "DEBIAN-CVE-2099-0001",
        "Debian:12",
        "jq",
        &listed("1.6-2.1+deb12u1"),
        "",
    )]);
    assert_eq!(match_sbom(&bookworm(), &f), []);
}

#[test]
fn an_introduced_event_above_the_installed_version_does_not_match() {
    let tail = r#", "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.7-1"}, {"fixed": "1.7-3"}]}]"#;
    assert_eq!(
        match_sbom(
            &bookworm(),
            &feed(&[advisory("DSA-9902-1", "Debian:12", "jq", tail, "")])
        ),
        []
    );
}

#[test]
fn a_limit_ends_the_range_and_git_ranges_are_not_compared() {
    let limited = r#", "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"limit": "1.6-1"}]}]"#;
    assert_eq!(
        match_sbom(
            &bookworm(),
            &feed(&[advisory("DSA-9903-1", "Debian:12", "jq", limited, "")])
        ),
        []
    );
    let git = r#", "ranges": [{"type": "GIT", "repo": "https://example.invalid/jq", "events": [{"introduced": "0"}]}]"#;
    assert_eq!(
        match_sbom(
            &bookworm(),
            &feed(&[advisory("DSA-9904-1", "Debian:12", "jq", git, "")])
        ),
        []
    );
}

#[test]
fn a_withdrawn_advisory_matches_nothing() {
    let withdrawn = advisory(
        "DSA-9905-1",
        "Debian:12",
        "curl",
        &fixed_at("7.88.1-10+deb12u99"),
        r#""withdrawn": "2026-11-02T00:00:00Z","#,
    );
    assert_eq!(match_sbom(&bookworm(), &feed(&[withdrawn])), []);
}

#[test]
fn another_ecosystems_advisory_does_not_match() {
    let fix = fixed_at("7.88.1-10+deb12u99");
    let others = [
        advisory("DSA-9906-1", "Debian:11", "curl", &fix, ""),
        advisory("UBUNTU-CVE-2099-0006", "Ubuntu:22.04:LTS", "curl", &fix, ""),
        advisory("GHSA-xxxx-0006", "PyPI", "curl", &fix, ""),
        advisory("DSA-9907-1", "Debian", "curl", &fix, ""),
    ];
    assert_eq!(match_sbom(&bookworm(), &feed(&others)), []);
}

#[test]
fn an_ubuntu_image_matches_its_release_with_the_lts_suffix() {
    let jammy = image(
        "ubuntu",
        "22.04",
        vec![pkg(
            "curl",
            "7.81.0-1ubuntu1.15",
            "curl",
            "7.81.0-1ubuntu1.15",
        )],
    );
    let fix = fixed_at("7.81.0-1ubuntu1.99");
    let f = feed(&[
        advisory("UBUNTU-CVE-2099-0010", "Ubuntu:22.04:LTS", "curl", &fix, ""),
        advisory("UBUNTU-CVE-2099-0011", "Ubuntu:24.04:LTS", "curl", &fix, ""),
        advisory(
            "UBUNTU-CVE-2099-0012",
            "Ubuntu:Pro:FIPS:22.04:LTS",
            "curl",
            &fix,
            "",
        ),
    ]);
    assert_eq!(
        ids(&match_sbom(&jammy, &f)),
        [("UBUNTU-CVE-2099-0010", "curl")]
    );
}

#[test]
fn ubuntu_pro_entries_count_only_where_the_release_has_no_standard_one() {
    let jammy = image(
        "ubuntu",
        "22.04",
        vec![pkg("vips", "8.12.1-1", "vips", "8.12.1-1")],
    );
    let both = r#"{"id": "UBUNTU-CVE-2099-0013", "modified": "2026-11-01T00:00:00Z", "affected": [
        {"package": {"ecosystem": "Ubuntu:22.04:LTS", "name": "vips"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}], "versions": ["8.12.1-1"]},
        {"package": {"ecosystem": "Ubuntu:Pro:22.04:LTS", "name": "vips"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "8.12.1-1ubuntu0.1~esm1"}]}]}]}"#;
    let found = match_sbom(&jammy, &feed(&[both.to_string()]));
    assert_eq!(found.len(), 1);
    // The standard pocket has no fix; Pro's is not this image's to install.
    assert_eq!(found[0].fixed_version, None);
    let pro_only = advisory(
        "UBUNTU-CVE-2099-0014",
        "Ubuntu:Pro:22.04:LTS",
        "vips",
        &fixed_at("8.12.1-1ubuntu0.1~esm1"),
        "",
    );
    let found = match_sbom(&jammy, &feed(&[pro_only]));
    assert_eq!(
        found[0].fixed_version.as_deref(),
        Some("8.12.1-1ubuntu0.1~esm1")
    );
}

#[test]
fn an_image_without_a_release_cannot_be_matched_and_says_why() {
    let mut sid = bookworm();
    sid.os = Some(OsRelease {
        id: "debian".into(),
        version_id: None,
        pretty_name: None,
    });
    assert_eq!(
        try_match(&sid, &Feed::default()),
        Err(Unmatchable::NoVersionId("debian".into()))
    );
    sid.os = None;
    assert_eq!(
        try_match(&sid, &Feed::default()),
        Err(Unmatchable::NoOsRelease)
    );
    sid.os = Some(OsRelease {
        id: "alpine".into(),
        version_id: Some("3.20".into()),
        pretty_name: None,
    });
    assert_eq!(
        try_match(&sid, &Feed::default()),
        Err(Unmatchable::Distribution("alpine".into()))
    );
    assert_eq!(match_sbom(&sid, &Feed::default()), []);
}

#[test]
fn aliases_and_upstream_ids_are_kept_so_an_ignore_may_name_the_cve() {
    let top = r#""aliases": ["DEBIAN-CVE-2099-0002"], "upstream": ["CVE-2099-0002", "DEBIAN-CVE-2099-0002"],"#;
    let f = feed(&[advisory(
        "DSA-9901-1",
        "Debian:12",
        "curl",
        &fixed_at("7.88.1-10+deb12u99"),
        top,
    )]);
    assert_eq!(
        match_sbom(&bookworm(), &f)[0].aliases,
        ["CVE-2099-0002", "DEBIAN-CVE-2099-0002"]
    );
}

// --- severity ---------------------------------------------------------------

fn severity_of(top: &str, affected_extra: &str) -> (Severity, SeverityFrom) {
    let tail = format!("{}{affected_extra}", fixed_at("7.88.1-10+deb12u99"));
    let found = match_sbom(
        &bookworm(),
        &feed(&[advisory("DSA-9901-1", "Debian:12", "curl", &tail, top)]),
    );
    (found[0].severity, found[0].severity_from.clone())
}

#[test]
fn a_cvss_v3_vector_is_scored_and_rated() {
    let (s, from) = severity_of(HIGH_V31, "");
    assert_eq!(s, Severity::High);
    assert_eq!(
        from,
        SeverityFrom::Cvss {
            vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N".into(),
            score: "7.5".into()
        }
    );
}

#[test]
fn a_cvss_v4_vector_wins_over_v3_and_over_the_debian_urgency() {
    let top = r#""severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"},
                              {"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"}],"#;
    let (s, from) = severity_of(top, r#", "ecosystem_specific": {"urgency": "low"}"#);
    assert_eq!(s, Severity::Critical);
    assert!(
        matches!(from, SeverityFrom::Cvss { ref vector, .. } if vector.starts_with("CVSS:4.0")),
        "{from:?}"
    );
}

#[test]
fn a_package_level_severity_replaces_the_advisorys() {
    let low = r#", "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}]"#;
    assert_eq!(severity_of(HIGH_V31, low).0, Severity::Low);
}

#[test]
fn without_a_vector_the_database_severity_then_the_debian_urgency_rate_it() {
    let (s, from) = severity_of(
        r#""database_specific": {"severity": "MODERATE"},"#,
        r#", "ecosystem_specific": {"urgency": "high"}"#,
    );
    assert_eq!(
        (s, from),
        (
            Severity::Medium,
            SeverityFrom::DatabaseSeverity {
                value: "MODERATE".into()
            }
        )
    );
    let (s, from) = severity_of("", r#", "ecosystem_specific": {"urgency": "high**"}"#);
    assert_eq!(
        (s, from),
        (
            Severity::High,
            SeverityFrom::DebianUrgency {
                value: "high**".into()
            }
        )
    );
    assert_eq!(
        severity_of("", r#", "ecosystem_specific": {"urgency": "unimportant"}"#).0,
        Severity::None
    );
}

#[test]
fn an_unparsable_vector_falls_through_and_nothing_rated_is_unknown() {
    let broken = r#""severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}],"#;
    assert_eq!(
        severity_of(broken, r#", "ecosystem_specific": {"urgency": "low"}"#).0,
        Severity::Low
    );
    assert_eq!(
        severity_of(
            broken,
            r#", "ecosystem_specific": {"urgency": "not yet assigned"}"#
        ),
        (Severity::Unknown, SeverityFrom::None)
    );
}

#[test]
fn ubuntu_priorities_rate_when_there_is_no_vector() {
    let top = r#""severity": [{"type": "Ubuntu", "score": "medium"}],"#;
    assert_eq!(severity_of(top, "").0, Severity::Medium);
}

// --- the policy ---------------------------------------------------------------

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn finding(severity: Severity, fixed: Option<&str>, fix_days_ago: Option<i64>) -> Finding {
    Finding {
        id: "DSA-9901-1".into(),
        aliases: vec!["CVE-2099-0002".into()],
        package: "curl".into(),
        installed_version: "7.88.1-10+deb12u8".into(),
        source: "curl".into(),
        source_version: "7.88.1-10+deb12u8".into(),
        fixed_version: fixed.map(str::to_string),
        severity,
        severity_from: SeverityFrom::None,
        fix_published: fix_days_ago.map(|d| now() - chrono::Duration::days(d)),
        summary: None,
    }
}

fn policy(json: &str) -> GatePolicy {
    serde_json::from_str(json).unwrap()
}

fn enforce() -> GatePolicy {
    policy(r#"{"mode": "enforce"}"#)
}

#[test]
fn the_defaults_are_medium_require_fix_no_fix_age_and_unknown_as_medium() {
    let p = enforce();
    assert_eq!(
        (
            p.max_severity,
            p.require_fix,
            p.fix_age_days,
            p.unknown_severity,
            p.revoke
        ),
        (Level::Medium, true, 0, Level::Medium, false)
    );
    assert!(
        serde_json::from_str::<GatePolicy>(r#"{"maxSeverity": "high"}"#).is_err(),
        "mode is required"
    );
}

#[test]
fn a_finding_above_max_severity_blocks() {
    let high = finding(Severity::High, Some("7.88.1-10+deb12u99"), Some(30));
    assert_eq!(enforce().decide(&high, now()), Decision::Blocks);
    assert_eq!(
        evaluate(&enforce(), std::slice::from_ref(&high), now()),
        GateVerdict::Fail {
            blocking: vec![high]
        }
    );
}

#[test]
fn a_finding_at_max_severity_does_not_block() {
    let medium = finding(Severity::Medium, Some("7.88.1-10+deb12u99"), Some(30));
    assert_eq!(enforce().decide(&medium, now()), Decision::WithinSeverity);
    assert_eq!(
        evaluate(&enforce(), &[medium], now()),
        GateVerdict::Pass { findings: 1 }
    );
}

#[test]
fn require_fix_lets_an_unfixed_finding_through_and_false_makes_it_block() {
    let unfixed = finding(Severity::Critical, None, None);
    assert_eq!(enforce().decide(&unfixed, now()), Decision::NoFix);
    let strict = policy(r#"{"mode": "enforce", "requireFix": false, "fixAgeDays": 30}"#);
    assert_eq!(strict.decide(&unfixed, now()), Decision::Blocks);
}

#[test]
fn fix_age_days_gives_a_fix_time_before_its_finding_blocks() {
    let p = policy(r#"{"mode": "enforce", "fixAgeDays": 7}"#);
    let young = finding(Severity::High, Some("7.88.1-10+deb12u99"), Some(3));
    assert_eq!(p.decide(&young, now()), Decision::FixTooRecent { days: 3 });
    let old = finding(Severity::High, Some("7.88.1-10+deb12u99"), Some(7));
    assert_eq!(p.decide(&old, now()), Decision::Blocks);
    // An advisory without a publication time gives no grace.
    let undated = finding(Severity::High, Some("7.88.1-10+deb12u99"), None);
    assert_eq!(p.decide(&undated, now()), Decision::Blocks);
}

#[test]
fn unknown_severity_counts_as_the_policy_says() {
    let unknown = finding(Severity::Unknown, Some("7.88.1-10+deb12u99"), Some(30));
    assert_eq!(enforce().decide(&unknown, now()), Decision::WithinSeverity);
    let p = policy(r#"{"mode": "enforce", "unknownSeverity": "high"}"#);
    assert_eq!(p.decide(&unknown, now()), Decision::Blocks);
}

#[test]
fn an_ignore_with_a_reason_lets_the_finding_through_by_id_or_alias() {
    let high = finding(Severity::High, Some("7.88.1-10+deb12u99"), Some(30));
    for id in ["DSA-9901-1", "CVE-2099-0002"] {
        let p = policy(&format!(
            r#"{{"mode": "enforce", "ignore": [{{"id": "{id}", "reason": "curl is not reachable from the network here", "until": "2026-12-01"}}]}}"#
        ));
        assert_eq!(
            p.decide(&high, now()),
            Decision::Ignored {
                reason: "curl is not reachable from the network here".into()
            }
        );
        assert_eq!(
            evaluate(&p, std::slice::from_ref(&high), now()),
            GateVerdict::Pass { findings: 1 }
        );
    }
    let other = policy(
        r#"{"mode": "enforce", "ignore": [{"id": "CVE-2099-9999", "reason": "another one"}]}"#,
    );
    assert_eq!(other.decide(&high, now()), Decision::Blocks);
}

#[test]
fn an_expired_ignore_stops_ignoring_the_day_after_until() {
    let p = policy(
        r#"{"mode": "enforce", "ignore": [{"id": "DSA-9901-1", "reason": "accepted for November", "until": "2026-11-30"}]}"#,
    );
    let high = finding(Severity::High, Some("7.88.1-10+deb12u99"), Some(30));
    assert_eq!(p.decide(&high, now()), Decision::Blocks);
}

#[test]
fn an_ignore_needs_a_reason_and_a_real_date() {
    let no_reason =
        serde_json::from_str::<GatePolicy>(r#"{"mode": "audit", "ignore": [{"id": "DSA-1"}]}"#)
            .unwrap_err();
    assert!(no_reason.to_string().contains("reason"), "{no_reason}");
    let bad_date = serde_json::from_str::<GatePolicy>(
        r#"{"mode": "audit", "ignore": [{"id": "DSA-1", "reason": "r", "until": "2026-02-30"}]}"#,
    )
    .unwrap_err();
    assert!(bad_date.to_string().contains("YYYY-MM-DD"), "{bad_date}");
}

#[test]
fn the_verdict_lists_only_the_blocking_findings() {
    let high = finding(Severity::High, Some("7.88.1-10+deb12u99"), Some(30));
    let low = finding(Severity::Low, Some("7.88.1-10+deb12u99"), Some(30));
    let unfixed = finding(Severity::Critical, None, None);
    assert_eq!(
        evaluate(&enforce(), &[low, high.clone(), unfixed], now()),
        GateVerdict::Fail {
            blocking: vec![high]
        }
    );
    assert_eq!(
        evaluate(&enforce(), &[], now()),
        GateVerdict::Pass { findings: 0 }
    );
}

// --- the fixture feed (tests/fixtures/osv) --------------------------------------

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv")
}

/// The seed lab's packages at bookworm's versions.
fn seed_lab() -> Sbom {
    image(
        "debian",
        "12",
        vec![
            pkg("curl", "7.88.1-10+deb12u15", "curl", "7.88.1-10+deb12u15"),
            pkg(
                "libcurl4",
                "7.88.1-10+deb12u15",
                "curl",
                "7.88.1-10+deb12u15",
            ),
            pkg("jq", "1.6-2.1+deb12u1", "jq", "1.6-2.1+deb12u1"),
            pkg("libjq1", "1.6-2.1+deb12u1", "jq", "1.6-2.1+deb12u1"),
            pkg("unzip", "6.0-28", "unzip", "6.0-28"),
            pkg("bash", "5.2.15-2+b8", "bash", "5.2.15-2"),
        ],
    )
}

#[test]
fn the_fixture_feed_finds_curl_jq_and_unzip_in_a_bookworm_image_and_blocks_on_curl() {
    let feed = crate::domain::evidence::osv::load(&fixture_dir()).unwrap();
    assert_eq!((feed.len(), feed.withdrawn()), (5, 1));
    let found = match_sbom(&seed_lab(), &feed);
    assert_eq!(
        ids(&found),
        [
            ("DEBIAN-CVE-2099-0001", "jq"),
            ("DEBIAN-CVE-2099-0001", "libjq1"),
            ("DEBIAN-CVE-2099-0003", "unzip"),
            ("DSA-9901-1", "curl"),
            ("DSA-9901-1", "libcurl4"),
        ]
    );
    let severities: Vec<Severity> = found.iter().map(|f| f.severity).collect();
    assert_eq!(
        severities,
        [
            Severity::Medium,
            Severity::Medium,
            Severity::High,
            Severity::High,
            Severity::High
        ]
    );
    match evaluate(&enforce(), &found, now()) {
        GateVerdict::Fail { blocking } => assert_eq!(
            ids(&blocking),
            [("DSA-9901-1", "curl"), ("DSA-9901-1", "libcurl4")]
        ),
        GateVerdict::Pass { findings } => panic!("passed with {findings} findings"),
    }
}

#[test]
fn the_fixture_feed_zipped_is_the_same_feed() {
    use std::io::Write;
    let dir = crate::domain::evidence::osv::load(&fixture_dir()).unwrap();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut names: Vec<_> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.reverse();
    for p in names
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
    {
        w.start_file(
            p.file_name().unwrap().to_str().unwrap(),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.write_all(&std::fs::read(p).unwrap()).unwrap();
    }
    let zipped = Feed::parse_file("all.zip", &w.finish().unwrap().into_inner()).unwrap();
    assert_eq!(zipped.digest(), dir.digest());
    assert_eq!(zipped.len(), dir.len());
}
