//! `kiln package`: the zip the Functions host runs.
//!
//! The host wants `host.json` at the app root, one folder per function with
//! its `function.json` beside it, and the custom handler at the path
//! `host.json` names (`customHandler.description.defaultExecutablePath`),
//! executable. kiln keeps its function folders under `handlers/` in the
//! repository, so the package moves them to the root; the pipelines travel
//! as `pipelines/`, and only after they validate (a package that would stop
//! the app at start is refused here, with the file and field).
//!
//! The zip is deterministic: entries sorted by path, every timestamp the
//! zip epoch (1980-01-01), unix permissions set explicitly, so the same
//! inputs give the same bytes and a redeploy of an unchanged build changes
//! nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::app::PipelineSet;
use crate::host::function_json;

/// One file of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the zip, `/`-separated, relative to the app root.
    pub path: String,
    pub contents: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
}

const FILE_MODE: u32 = 0o644;
const EXECUTABLE_MODE: u32 = 0o755;

/// What goes into the package built from the repository at `root` with the
/// release binary at `binary`, sorted by path.
pub fn entries(root: &Path, binary: &Path) -> anyhow::Result<Vec<Entry>> {
    let host_path = root.join("host.json");
    let host_text = std::fs::read(&host_path)
        .with_context(|| format!("{}: cannot read", host_path.display()))?;
    let executable = executable_path(&host_path, &host_text)?;

    let handlers = root.join("handlers");
    let specs = function_json::load(&handlers)?;

    let pipelines_dir = root.join("pipelines");
    PipelineSet::load_dir(&pipelines_dir, None).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(
            "refusing to package invalid pipelines (run `kiln validate`):\n{}",
            lines.join("\n")
        )
    })?;

    let mut out = vec![Entry {
        path: "host.json".into(),
        contents: host_text,
        mode: FILE_MODE,
    }];
    for spec in &specs {
        let name = spec.name.as_str();
        let path = handlers.join(name).join("function.json");
        out.push(Entry {
            path: format!("{name}/function.json"),
            contents: std::fs::read(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?,
            mode: FILE_MODE,
        });
    }
    for file in pipeline_files(&pipelines_dir)? {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a UTF-8 file name", file.display()))?;
        out.push(Entry {
            path: format!("pipelines/{name}"),
            contents: std::fs::read(&file)
                .with_context(|| format!("{}: cannot read", file.display()))?,
            mode: FILE_MODE,
        });
    }
    let binary_bytes = std::fs::read(binary)
        .with_context(|| format!("--binary {}: cannot read", binary.display()))?;
    if out.iter().any(|e| e.path == executable) {
        bail!(
            "{}: customHandler.description.defaultExecutablePath: `{executable}` would overwrite another file of the package",
            host_path.display()
        );
    }
    out.push(Entry {
        path: executable,
        contents: binary_bytes,
        mode: EXECUTABLE_MODE,
    });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `customHandler.description.defaultExecutablePath`: a path under the app
/// root, which is where the host looks for it.
fn executable_path(host_path: &Path, text: &[u8]) -> anyhow::Result<String> {
    let field = "customHandler.description.defaultExecutablePath";
    let doc: serde_json::Value = serde_json::from_slice(text)
        .with_context(|| format!("{}: not valid JSON", host_path.display()))?;
    let Some(path) = doc
        .pointer("/customHandler/description/defaultExecutablePath")
        .and_then(|v| v.as_str())
    else {
        bail!(
            "{}: {field}: expected the file name of the custom handler",
            host_path.display()
        );
    };
    let relative = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if !relative {
        bail!(
            "{}: {field}: expected a path inside the app root, got `{path}`",
            host_path.display()
        );
    }
    Ok(path.to_string())
}

fn pipeline_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("Cannot read the pipelines folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Writes `entries` as a zip at `out` (through a temporary file beside it,
/// so a failed run leaves no half package).
pub fn write_zip(entries: &[Entry], out: &Path) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        Some(_) | None => PathBuf::from("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("Cannot create a file in {}", dir.display()))?;
    let mut zip = zip::ZipWriter::new(tmp.reopen()?);
    for e in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            .system(zip::System::Unix)
            .unix_permissions(e.mode)
            .large_file(e.contents.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(e.path.as_str(), options)?;
        zip.write_all(&e.contents)?;
    }
    zip.finish()?.sync_all()?;
    tmp.persist(out)
        .with_context(|| format!("Cannot write {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_executable_path_must_stay_inside_the_app_root() {
        let host = Path::new("host.json");
        let doc = |p: &str| {
            serde_json::json!({"customHandler": {"description": {"defaultExecutablePath": p}}})
                .to_string()
        };
        assert_eq!(
            executable_path(host, doc("kiln").as_bytes()).unwrap(),
            "kiln"
        );
        assert_eq!(
            executable_path(host, doc("bin/kiln").as_bytes()).unwrap(),
            "bin/kiln"
        );
        for bad in ["", "/usr/bin/kiln", "../kiln", "bin//kiln", "./kiln"] {
            let e = executable_path(host, doc(bad).as_bytes()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("customHandler.description.defaultExecutablePath"),
                "{bad}: {e}"
            );
        }
        let e = executable_path(host, b"{\"version\": \"2.0\"}").unwrap_err();
        assert!(e.to_string().starts_with("host.json: customHandler"), "{e}");
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("kiln-release");
        std::fs::write(&binary, b"\x7fELF stand-in").unwrap();
        let entries = entries(repo(), &binary).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        write_zip(&entries, &dir.path().join("a.zip")).unwrap();
        write_zip(&entries, &dir.path().join("b.zip")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a.zip")).unwrap(),
            std::fs::read(dir.path().join("b.zip")).unwrap()
        );
    }
}
