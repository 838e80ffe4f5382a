//! The pipeline folder: every `*.json` file read and checked at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::domain::pipeline::{FieldError, Parsed, Pipeline};
use crate::domain::template::ImageTemplate;
use crate::ports::ImageBuilder;

#[derive(Debug, Clone, Default)]
pub struct PipelineSet {
    by_name: BTreeMap<String, Pipeline>,
}

/// One file's problems, printed as `file: json.path: what was expected`.
#[derive(Debug, Clone)]
pub struct FileErrors {
    pub file: PathBuf,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for FileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {e}", self.file.display())?;
        }
        Ok(())
    }
}

/// One pipeline file read and checked: the pipeline if it is valid, and
/// otherwise every problem found (the file's own and the provider's).
#[derive(Debug)]
pub struct FileCheck {
    pub file: PathBuf,
    pub pipeline: Option<Pipeline>,
    pub errors: Vec<FieldError>,
    /// The template of an invalid file, when it parsed.
    rejected_template: Option<Box<ImageTemplate>>,
}

impl FileCheck {
    /// The parsed template, valid or not: what lint reads.
    pub fn template(&self) -> Option<&ImageTemplate> {
        match &self.pipeline {
            Some(p) => Some(&p.template),
            None => self.rejected_template.as_deref(),
        }
    }
}

/// Reads and checks one pipeline file. The provider's checks run whenever
/// the template parsed, even if the kiln section or a semantic check failed,
/// so one run reports every problem.
pub fn check_file(path: &Path, builder: Option<&dyn ImageBuilder>) -> FileCheck {
    let mut check = FileCheck {
        file: path.to_path_buf(),
        pipeline: None,
        errors: Vec::new(),
        rejected_template: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            check.errors.push(FieldError {
                path: "$".into(),
                message: format!("cannot read the file: {e}"),
            });
            return check;
        }
    };
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let provider_errors = |t: &ImageTemplate| builder.map(|b| b.check(t)).unwrap_or_default();
    // One problem, one line: a provider rule that repeats a domain rule at
    // the same path (a Shell step without a script, a bad gallery id) is
    // dropped.
    let merge = |errors: &mut Vec<FieldError>, more: Vec<FieldError>| {
        for e in more {
            if !errors.iter().any(|x| x.path == e.path) {
                errors.push(e);
            }
        }
    };
    match Pipeline::read(&name, &text) {
        Parsed::Valid(p) => {
            check.errors = provider_errors(&p.template);
            // ARM's limits on the rendered body hold whichever provider runs it.
            merge(&mut check.errors, crate::app::render::check_limits(&p));
            if check.errors.is_empty() {
                check.pipeline = Some(*p);
            } else {
                check.rejected_template = Some(Box::new(p.template));
            }
        }
        Parsed::Invalid { errors, template } => {
            check.errors = errors;
            if let Some(t) = &template {
                merge(&mut check.errors, provider_errors(t));
            }
            check.rejected_template = template;
        }
    }
    check
}

/// Reads and checks one pipeline file, with the provider's own checks.
pub fn load_file(path: &Path, builder: Option<&dyn ImageBuilder>) -> Result<Pipeline, FileErrors> {
    let check = check_file(path, builder);
    match check.pipeline {
        Some(p) => Ok(p),
        None => Err(FileErrors {
            file: check.file,
            errors: check.errors,
        }),
    }
}

impl PipelineSet {
    /// Loads every `*.json` in `dir`; any invalid file fails the whole load.
    pub fn load_dir(
        dir: &Path,
        builder: Option<&dyn ImageBuilder>,
    ) -> Result<PipelineSet, Vec<FileErrors>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) => {
                return Err(vec![FileErrors {
                    file: dir.to_path_buf(),
                    errors: vec![FieldError {
                        path: "$".into(),
                        message: format!("cannot read the pipelines folder: {e}"),
                    }],
                }])
            }
        };
        files.sort();
        let mut set = PipelineSet::default();
        let mut errors = Vec::new();
        for f in files {
            match load_file(&f, builder) {
                Ok(p) => {
                    set.by_name.insert(p.name.clone(), p);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    pub fn from_pipelines(pipelines: impl IntoIterator<Item = Pipeline>) -> Self {
        Self {
            by_name: pipelines.into_iter().map(|p| (p.name.clone(), p)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Pipeline> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pipeline> {
        self.by_name.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both faces load the folder through `load_dir` at start (`host::wiring`),
    /// so a pipeline with a secret keeps the factory from starting, with the
    /// line `kiln validate` prints.
    #[test]
    fn a_folder_with_a_secret_in_one_pipeline_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.json");
        std::fs::copy(&tiny, dir.path().join("tiny.json")).unwrap();
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&tiny).unwrap()).unwrap();
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        doc["properties"]["customize"][0]["inline"][1] =
            serde_json::json!(format!("echo 'APP_PASSWORD={password}' >> /etc/app.env"));
        std::fs::write(dir.path().join("leaky.json"), doc.to_string()).unwrap();

        let errors = PipelineSet::load_dir(dir.path(), None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let shown = errors[0].to_string();
        let check = check_file(&dir.path().join("leaky.json"), None);
        assert_eq!(
            shown,
            FileErrors {
                file: check.file,
                errors: check.errors
            }
            .to_string()
        );
        assert!(
            shown.starts_with(&format!(
                "{}: properties.customize[0].inline[1]: looks like a literal password (kind `password`)",
                dir.path().join("leaky.json").display()
            )),
            "{shown}"
        );
        assert!(!shown.contains(&password[3..]), "{shown}");
    }
}
