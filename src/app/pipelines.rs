//! The pipeline folder: every `*.json` file read and checked at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::domain::pipeline::{FieldError, Pipeline};
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

/// Reads and checks one pipeline file, with the provider's own checks.
pub fn load_file(path: &Path, builder: Option<&dyn ImageBuilder>) -> Result<Pipeline, FileErrors> {
    let fail = |errors| FileErrors {
        file: path.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![FieldError {
            path: "$".into(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let pipeline = Pipeline::parse(&name, &text).map_err(fail)?;
    if let Some(b) = builder {
        let errors = b.check(&pipeline.template);
        if !errors.is_empty() {
            return Err(fail(errors));
        }
    }
    Ok(pipeline)
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
