//! Shell lint of a template's Shell steps: which scripts to lint, and what
//! shellcheck's findings (its `json1` output) mean for an AIB build.
//!
//! AIB's Shell customizer is Packer's shell provisioner: the `inline` lines
//! are joined with newlines into one file and run with its default
//! `inline_shebang`, `/bin/sh -e`, which is dash on Ubuntu. So inline steps
//! are linted as `sh`. A `scriptUri` script runs by its own shebang, which
//! shellcheck reads.
//!
//! Findings are warnings, except the few that dash definitely rejects when it
//! reaches them (see [`DashFailure`]): the step, and so the build, fails.

use std::path::PathBuf;

use serde::Deserialize;

use super::finding::Finding;
use super::template::{step_paths, Customizer, ImageTemplate, Source};

/// What `/bin/sh` is in the image a template builds from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemSh {
    /// Ubuntu and Debian: what dash rejects stops the step.
    Dash,
    /// Another shell, or not known (a gallery image, RHEL's bash, busybox's
    /// ash): the same findings are warnings that say what dash would do.
    NotKnownDash,
}

/// Read off the template's source: marketplace publishers whose images link
/// `/bin/sh` to dash. A gallery or managed image could be anything.
pub fn system_sh(t: &ImageTemplate) -> SystemSh {
    match &t.properties.source {
        Source::PlatformImage { publisher, .. }
            if ["canonical", "debian"].contains(&publisher.to_ascii_lowercase().as_str()) =>
        {
            SystemSh::Dash
        }
        Source::PlatformImage { .. }
        | Source::SharedImageVersion { .. }
        | Source::ManagedImage { .. } => SystemSh::NotKnownDash,
    }
}

/// A script to lint, located by the JSON path of its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// An inline Shell step: its lines, run as one `/bin/sh -e` script.
    Inline { at: String, lines: Vec<String> },
    /// A Shell step whose `scriptUri` is a local path or `file://` URI.
    File { at: String, path: PathBuf },
}

impl Script {
    /// Where a problem with the script as a whole (unreadable, lint failed) is reported.
    pub fn field(&self) -> String {
        match self {
            Script::Inline { at, .. } => format!("{at}.inline"),
            Script::File { at, .. } => format!("{at}.scriptUri"),
        }
    }
}

/// Every inline Shell step and every local `scriptUri`, customizers first,
/// then in-VM validators. Remote scripts are not fetched for lint.
pub fn scripts(t: &ImageTemplate) -> Vec<Script> {
    let p = &t.properties;
    let validators = p
        .validate
        .as_ref()
        .map_or(&[][..], |v| &v.in_vm_validations);
    let mut out = Vec::new();
    for (at, c) in step_paths(&p.customize, validators) {
        match c {
            Customizer::Shell {
                inline, script_uri, ..
            } => {
                if let Some(lines) = inline.as_ref().filter(|l| !l.is_empty()) {
                    out.push(Script::Inline {
                        at: at.clone(),
                        lines: lines.clone(),
                    });
                }
                if let Some(path) = script_uri.as_deref().and_then(local_path) {
                    out.push(Script::File { at, path });
                }
            }
            // Not shell scripts (PowerShell is not linted), or files copied as they are.
            Customizer::File { .. }
            | Customizer::PowerShell { .. }
            | Customizer::WindowsRestart { .. }
            | Customizer::WindowsUpdate { .. } => {}
        }
    }
    out
}

/// The local file a `scriptUri` names: an absolute path or `file:///…`.
fn local_path(uri: &str) -> Option<PathBuf> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// The inline lines as the one script Packer writes.
pub fn joined(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// One comment of `shellcheck --format=json1`.
#[derive(Debug, Deserialize)]
struct Comment {
    line: usize,
    code: u32,
    message: String,
    /// error, warning, info or style.
    #[serde(default)]
    level: String,
}

#[derive(Debug, Deserialize)]
struct Json1 {
    comments: Vec<Comment>,
}

/// What dash does with a construct shellcheck flags as undefined in POSIX sh,
/// for the codes where dash's answer is a hard failure (each checked against
/// dash). Everything else stays a warning: dash may accept it, or the script
/// may merely behave differently.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DashFailure {
    /// SC3040 `set -o <option>`: dash stops with `set: Illegal option -o <option>`.
    SetOption(String),
    /// SC3001 process substitution, SC3011 here-strings, SC3030 arrays: `Syntax error`.
    Syntax,
    /// SC3053 `${!x}`, SC3054 `${a[0]}`, SC3057 `${x:1:2}`, SC3059 `${x^^}`,
    /// SC3060 `${x//a/b}`: `Bad substitution`.
    Substitution,
    /// SC3019 `**` in `$(( ))`: an arithmetic error.
    Arithmetic,
    /// SC2113 `function f { …; }`: `Syntax error: "}" unexpected`.
    FunctionKeyword,
    /// SC1xxx at level error: shellcheck could not parse the script, and
    /// neither can any sh (an unclosed `if`, quote or brace).
    Parse,
}

/// bash options of `set -o` that dash rejects. SC3040 also fires for options
/// dash accepts (`emacs`, `nolog`, `debug`, …); those stay warnings.
const BASH_ONLY_SET_OPTIONS: &[&str] = &[
    "pipefail",
    "errtrace",
    "functrace",
    "posix",
    "history",
    "histexpand",
    "braceexpand",
    "hashall",
    "keyword",
    "onecmd",
    "physical",
];

fn dash_failure(c: &Comment) -> Option<DashFailure> {
    match c.code {
        3040 => {
            // "In POSIX sh, set option pipefail is undefined."
            let option = c
                .message
                .split_whitespace()
                .skip_while(|w| *w != "option")
                .nth(1)?;
            BASH_ONLY_SET_OPTIONS
                .contains(&option)
                .then(|| DashFailure::SetOption(option.to_string()))
        }
        3001 | 3011 | 3030 => Some(DashFailure::Syntax),
        3053 | 3054 | 3057 | 3059 | 3060 => Some(DashFailure::Substitution),
        3019 => Some(DashFailure::Arithmetic),
        2113 => Some(DashFailure::FunctionKeyword),
        1000..=1999 if c.level == "error" => Some(DashFailure::Parse),
        _ => None,
    }
}

/// The error text for a finding that stops the step under dash.
fn failure_message(script: &Script, c: &Comment, f: &DashFailure) -> String {
    let (runs, fix) = match script {
        Script::Inline { .. } => (
            "AIB runs inline Shell steps with `/bin/sh -e` (dash on Ubuntu)",
            "or move the step to a scriptUri script that starts with `#!/bin/bash`",
        ),
        Script::File { .. } => (
            "the script's shebang runs it with sh (dash on Ubuntu)",
            "or start the script with `#!/bin/bash`",
        ),
    };
    let (rejects, change) = match f {
        DashFailure::SetOption(o) => (
            format!("which rejects `set -o {o}` and stops the build"),
            // `sh -e` already stops at the first failing line.
            format!("drop `{o}` (for `set -euxo {o}` write `set -eux`)"),
        ),
        DashFailure::Syntax => (
            "which cannot parse this and stops the build".to_string(),
            "rewrite it for sh".to_string(),
        ),
        DashFailure::Substitution => (
            "which stops the build here with `Bad substitution`".to_string(),
            "rewrite it for sh".to_string(),
        ),
        DashFailure::Arithmetic => (
            "which stops the build here with an arithmetic error".to_string(),
            "rewrite it for sh".to_string(),
        ),
        DashFailure::FunctionKeyword => (
            "which cannot parse `function` and stops the build".to_string(),
            "write `name() { …; }`".to_string(),
        ),
        DashFailure::Parse => (
            "which cannot parse it either and stops the build".to_string(),
            "fix the syntax".to_string(),
        ),
    };
    format!(
        "SC{}: {} {runs}, {rejects}: {change}, {fix}",
        c.code, c.message
    )
}

/// Maps shellcheck's `json1` output for `script` to findings at the step's
/// path, for an image whose `/bin/sh` is dash (see [`findings_on`]).
pub fn findings(script: &Script, json1: &str) -> Result<Vec<Finding>, String> {
    findings_on(script, json1, SystemSh::Dash)
}

/// Maps shellcheck's `json1` output for `script` to findings at the step's
/// path: for inline steps the line of `inline` (shellcheck's line N of the
/// joined script is `inline[N-1]`, counting lines that hold newlines
/// themselves), for files `scriptUri` with the line number in the message.
/// What dash rejects is an error where `/bin/sh` is dash; elsewhere it is a
/// warning that says so (a parse error is an error in any shell).
pub fn findings_on(script: &Script, json1: &str, sh: SystemSh) -> Result<Vec<Finding>, String> {
    let out: Json1 = serde_json::from_str(json1)
        .map_err(|e| format!("unexpected shellcheck output ({e}): {json1}"))?;
    Ok(out
        .comments
        .iter()
        .map(|c| {
            let (path, prefix) = match script {
                Script::Inline { at, lines } => (
                    format!("{at}.inline[{}]", inline_index(lines, c.line)),
                    String::new(),
                ),
                Script::File { at, .. } => {
                    (format!("{at}.scriptUri"), format!("line {}: ", c.line))
                }
            };
            match (dash_failure(c), sh) {
                (Some(f), SystemSh::Dash) => {
                    Finding::error(path, format!("{prefix}{}", failure_message(script, c, &f)))
                }
                (Some(DashFailure::Parse), SystemSh::NotKnownDash) => Finding::error(
                    path,
                    format!(
                        "{prefix}{}",
                        failure_message(script, c, &DashFailure::Parse)
                    ),
                ),
                (Some(f), SystemSh::NotKnownDash) => Finding::warning(
                    path,
                    format!(
                        "{prefix}{} (where /bin/sh is dash, as on Ubuntu and Debian)",
                        failure_message(script, c, &f)
                    ),
                ),
                (None, _) => Finding::warning(path, format!("{prefix}SC{}: {}", c.code, c.message)),
            }
        })
        .collect())
}

/// The `inline` element holding line `line` (1-based) of the joined script.
fn inline_index(lines: &[String], line: usize) -> usize {
    let mut end = 0;
    for (i, l) in lines.iter().enumerate() {
        end += l.split('\n').count();
        if line <= end {
            return i;
        }
    }
    lines.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(code: u32, level: &str, message: &str) -> String {
        serde_json::json!({"comments": [{"line": 1, "code": code, "level": level, "message": message}]})
            .to_string()
    }

    #[test]
    fn what_dash_rejects_is_an_error_only_where_sh_is_dash() {
        let script = inline(&["set -euxo pipefail"]);
        let out = comment(
            3040,
            "warning",
            "In POSIX sh, set option pipefail is undefined.",
        );
        let on_ubuntu = findings_on(&script, &out, SystemSh::Dash).unwrap();
        assert!(on_ubuntu[0].is_error());
        assert!(
            on_ubuntu[0].to_string().contains("set -eux"),
            "{}",
            on_ubuntu[0]
        );
        // RHEL's /bin/sh is bash, busybox's is ash: both accept pipefail.
        let elsewhere = findings_on(&script, &out, SystemSh::NotKnownDash).unwrap();
        assert!(!elsewhere[0].is_error());
        assert!(elsewhere[0].to_string().contains("where /bin/sh is dash"));
    }

    #[test]
    fn a_script_no_shell_can_parse_is_an_error_everywhere() {
        let script = inline(&["if true; then echo"]);
        let out = comment(1046, "error", "Couldn't find 'fi' for this 'if'.");
        for sh in [SystemSh::Dash, SystemSh::NotKnownDash] {
            assert!(findings_on(&script, &out, sh).unwrap()[0].is_error());
        }
        // A parse *warning* (SC1xxx at level warning) stays a warning.
        let out = comment(
            1091,
            "info",
            "Not following: ./x was not specified as input.",
        );
        assert!(!findings_on(&script, &out, SystemSh::Dash).unwrap()[0].is_error());
    }

    #[test]
    fn the_source_says_whether_sh_is_dash() {
        let t = |publisher: &str| -> ImageTemplate {
            serde_json::from_value(serde_json::json!({
                "location": "westeurope",
                "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
                "properties": {
                    "source": {"type": "PlatformImage", "publisher": publisher, "offer": "o", "sku": "s", "version": "latest"},
                    "distribute": []
                }
            }))
            .unwrap()
        };
        assert_eq!(system_sh(&t("Canonical")), SystemSh::Dash);
        assert_eq!(system_sh(&t("Debian")), SystemSh::Dash);
        assert_eq!(system_sh(&t("RedHat")), SystemSh::NotKnownDash);
    }

    fn inline(lines: &[&str]) -> Script {
        Script::Inline {
            at: "properties.customize[0]".into(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    /// What shellcheck 0.9 prints for `set -euxo pipefail` / `echo $foo` under `--shell=sh`.
    const PIPEFAIL_AND_UNQUOTED: &str = r#"{"comments":[
      {"file":"-","line":1,"endLine":1,"column":11,"endColumn":19,"level":"warning","code":3040,"message":"In POSIX sh, set option pipefail is undefined.","fix":null},
      {"file":"-","line":2,"endLine":2,"column":6,"endColumn":10,"level":"warning","code":2154,"message":"foo is referenced but not assigned.","fix":null},
      {"file":"-","line":2,"endLine":2,"column":6,"endColumn":10,"level":"info","code":2086,"message":"Double quote to prevent globbing and word splitting.","fix":{"replacements":[]}}]}"#;

    #[test]
    fn pipefail_in_an_inline_step_is_an_error_that_says_why_and_what_to_do() {
        let f = findings(
            &inline(&["set -euxo pipefail", "echo $foo"]),
            PIPEFAIL_AND_UNQUOTED,
        )
        .unwrap();
        assert_eq!(f[0].path, "properties.customize[0].inline[0]");
        assert!(f[0].is_error());
        for needed in [
            "/bin/sh -e",
            "dash on Ubuntu",
            "set -o pipefail",
            "scriptUri",
            "#!/bin/bash",
        ] {
            assert!(f[0].message.contains(needed), "{needed}: {}", f[0].message);
        }
    }

    #[test]
    fn other_findings_are_warnings_at_their_inline_line() {
        let f = findings(
            &inline(&["set -euxo pipefail", "echo $foo"]),
            PIPEFAIL_AND_UNQUOTED,
        )
        .unwrap();
        let rest: Vec<String> = f[1..].iter().map(|f| f.to_string()).collect();
        assert_eq!(
            rest,
            [
                "properties.customize[0].inline[1]: warning: SC2154: foo is referenced but not assigned.",
                "properties.customize[0].inline[1]: warning: SC2086: Double quote to prevent globbing and word splitting.",
            ]
        );
    }

    #[test]
    fn an_inline_element_spanning_lines_keeps_the_later_lines_on_their_element() {
        let lines = ["if true; then\n  echo a\nfi", "echo $x"].map(String::from);
        assert_eq!(inline_index(&lines, 3), 0);
        assert_eq!(inline_index(&lines, 4), 1);
    }

    #[test]
    fn a_set_option_dash_knows_stays_a_warning() {
        let out = r#"{"comments":[{"line":1,"code":3040,"level":"warning","message":"In POSIX sh, set option emacs is undefined."}]}"#;
        let f = findings(&inline(&["set -o emacs"]), out).unwrap();
        assert!(!f[0].is_error(), "{f:?}");
    }

    #[test]
    fn syntax_dash_cannot_parse_is_an_error_and_other_bashisms_are_warnings() {
        let out = r#"{"comments":[
          {"line":1,"code":3030,"level":"warning","message":"In POSIX sh, arrays are undefined."},
          {"line":2,"code":3010,"level":"warning","message":"In POSIX sh, [[ ]] is undefined."}]}"#;
        let f = findings(&inline(&["a=(1 2)", "[[ -n $a ]]"]), out).unwrap();
        assert!(f[0].is_error());
        assert!(f[0].message.contains("cannot parse"), "{}", f[0].message);
        assert!(
            !f[1].is_error(),
            "dash runs `[[` as a missing command: {f:?}"
        );
    }

    #[test]
    fn script_files_report_at_script_uri_with_the_line() {
        let script = Script::File {
            at: "properties.validate.inVMValidations[1]".into(),
            path: "/srv/check.sh".into(),
        };
        let out = r#"{"comments":[{"line":7,"code":3040,"level":"warning","message":"In POSIX sh, set option pipefail is undefined."}]}"#;
        let f = findings(&script, out).unwrap();
        assert_eq!(
            f[0].path,
            "properties.validate.inVMValidations[1].scriptUri"
        );
        assert!(
            f[0].message.starts_with("line 7: SC3040"),
            "{}",
            f[0].message
        );
        assert!(f[0].message.contains("shebang"), "{}", f[0].message);
    }

    #[test]
    fn only_inline_steps_and_local_script_uris_are_linted() {
        let t: ImageTemplate = serde_json::from_value(serde_json::json!({
            "location": "westeurope",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
                "customize": [
                    {"type": "Shell", "inline": ["true"]},
                    {"type": "Shell", "scriptUri": "https://example.com/x.sh"},
                    {"type": "Shell", "scriptUri": "file:///srv/x.sh"},
                    {"type": "File", "sourceUri": "/srv/f", "destination": "/etc/f"},
                    {"type": "Shell", "inline": []}
                ],
                "validate": {"inVMValidations": [{"type": "Shell", "scriptUri": "/srv/check.sh"}]},
                "distribute": [{"type": "VHD", "runOutputName": "vhd"}]
            }
        }))
        .unwrap();
        let at: Vec<String> = scripts(&t).iter().map(|s| s.field()).collect();
        assert_eq!(
            at,
            [
                "properties.customize[0].inline",
                "properties.customize[2].scriptUri",
                "properties.validate.inVMValidations[0].scriptUri"
            ]
        );
    }

    #[test]
    fn unreadable_output_is_reported_not_ignored() {
        assert!(findings(&inline(&["true"]), "not json").is_err());
    }
}
