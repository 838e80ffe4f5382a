//! Runs shellcheck over a template's Shell steps for `kiln validate`; what
//! its findings mean is decided in `domain::lint`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::domain::finding::Finding;
use crate::domain::lint::{self, Script};
use crate::domain::template::ImageTemplate;

/// The Debian package that provides shellcheck.
pub const PACKAGE: &str = "shellcheck";

/// The one warning printed when shellcheck cannot be run.
pub fn skipped_warning() -> String {
    format!("warning: shellcheck is not installed: Shell steps were not linted (Debian package `{PACKAGE}`)")
}

#[derive(Debug, Clone)]
pub struct Shellcheck {
    program: PathBuf,
    /// Per script: a pathological script must not hang `kiln validate`.
    timeout: Duration,
}

impl Default for Shellcheck {
    fn default() -> Self {
        Self::new("shellcheck")
    }
}

impl Shellcheck {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Whether the program runs at all.
    pub fn available(&self) -> bool {
        self.run(&["--version"], "").is_ok()
    }

    /// Lints every inline Shell step (as `sh`) and every local `scriptUri`
    /// (by its shebang). A script that cannot be linted gives a warning.
    pub fn lint(&self, t: &ImageTemplate) -> Vec<Finding> {
        let sh = lint::system_sh(t);
        lint::scripts(t)
            .iter()
            .flat_map(|s| {
                self.lint_script(s, sh).unwrap_or_else(|e| {
                    vec![Finding::warning(s.field(), format!("not linted: {e}"))]
                })
            })
            .collect()
    }

    fn lint_script(&self, script: &Script, sh: lint::SystemSh) -> Result<Vec<Finding>, String> {
        let out = match script {
            // --norc: a .shellcheckrc where kiln runs must not change the verdict.
            Script::Inline { lines, .. } => self.run(
                &["--norc", "--shell=sh", "--format=json1", "-"],
                &lint::joined(lines),
            )?,
            Script::File { path, .. } => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                // Without a shebang the step's shell runs it as sh.
                let args: &[&str] = if text.starts_with("#!") {
                    &["--norc", "--format=json1", "-"]
                } else {
                    &["--norc", "--shell=sh", "--format=json1", "-"]
                };
                self.run(args, &text)?
            }
        };
        lint::findings_on(script, &out, sh)
    }

    /// Runs the program with `stdin`, returning stdout when it exits 0 or 1
    /// (shellcheck's "no findings" and "findings").
    fn run(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        // Feed and drain on threads so a large script or output cannot deadlock on a full pipe.
        let mut input = child.stdin.take().expect("piped stdin");
        let text = stdin.to_string();
        let writer = std::thread::spawn(move || {
            // A program that exits without reading its input is fine.
            let _ = input.write_all(text.as_bytes());
        });
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "shellcheck did not finish within {} s",
                        self.timeout.as_secs()
                    ));
                }
                Err(e) => return Err(format!("waiting for shellcheck: {e}")),
            }
        };
        let _ = writer.join();
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        match status.code() {
            Some(0 | 1) => Ok(out),
            _ => Err(format!("shellcheck failed ({status}): {}", err.trim())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(customize: serde_json::Value) -> ImageTemplate {
        serde_json::from_value(serde_json::json!({
            "location": "westeurope",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "o", "sku": "s", "version": "latest"},
                "customize": customize,
                "distribute": [{"type": "VHD", "runOutputName": "vhd"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_real_shellcheck_finds_pipefail_and_an_unquoted_variable() {
        let t = template(serde_json::json!([
            {"type": "Shell", "name": "baseline", "inline": ["set -euxo pipefail", "echo $foo"]}
        ]));
        let found = Shellcheck::default().lint(&t);
        let errors: Vec<&Finding> = found.iter().filter(|f| f.is_error()).collect();
        assert_eq!(errors.len(), 1, "{found:#?}");
        assert_eq!(errors[0].path, "properties.customize[0].inline[0]");
        assert!(errors[0].message.contains("/bin/sh -e"), "{}", errors[0]);
        let sc2086: Vec<&Finding> = found
            .iter()
            .filter(|f| f.message.starts_with("SC2086"))
            .collect();
        assert_eq!(sc2086.len(), 1, "{found:#?}");
        assert_eq!(sc2086[0].path, "properties.customize[0].inline[1]");
        assert!(!sc2086[0].is_error());
    }

    #[test]
    fn a_local_script_is_linted_by_its_shebang() {
        let dir = tempfile::tempdir().unwrap();
        let bash = dir.path().join("bash.sh");
        std::fs::write(&bash, "#!/bin/bash\nset -euo pipefail\necho ok\n").unwrap();
        let sh = dir.path().join("sh.sh");
        std::fs::write(&sh, "#!/bin/sh\nset -eu -o pipefail\necho ok\n").unwrap();
        let t = template(serde_json::json!([
            {"type": "Shell", "scriptUri": bash.to_str().unwrap()},
            {"type": "Shell", "scriptUri": format!("file://{}", sh.display())}
        ]));
        let found = Shellcheck::default().lint(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].path, "properties.customize[1].scriptUri");
        assert!(found[0].is_error());
        assert!(
            found[0].message.starts_with("line 2: SC3040"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn without_shellcheck_lint_is_unavailable_and_nothing_fails() {
        let missing = Shellcheck::new("/nonexistent/shellcheck");
        assert!(!missing.available());
        let t = template(serde_json::json!([{"type": "Shell", "inline": ["true"]}]));
        let found = missing.lint(&t);
        assert!(found.iter().all(|f| !f.is_error()), "{found:#?}");
        assert!(skipped_warning().contains("`shellcheck`"));
    }
}
