//! From a pipeline file's text to a checked [`Pipeline`]: JSON, the name,
//! each section read on its own (`read.rs`), the semantic checks
//! (`check.rs`), and every problem reported at once.

use super::check::{check_kiln, check_template, misplaced_kiln_keys};
use super::secrets::{self, AllowSecret};
use super::{field, read, FieldError, KilnSection, Pipeline, KILN_KEY};
use crate::domain::template::ImageTemplate;

pub fn valid_pipeline_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// What a pipeline file's text gave.
#[derive(Debug, Clone)]
pub enum Parsed {
    Valid(Box<Pipeline>),
    /// Every problem found, and the template when it parsed (the kiln section
    /// or a semantic check may still have failed), so provider checks can run too.
    Invalid {
        errors: Vec<FieldError>,
        template: Option<Box<ImageTemplate>>,
    },
}

impl Pipeline {
    /// Parses and checks a pipeline file's text. `name` is the file stem.
    pub fn parse(name: &str, text: &str) -> Result<Pipeline, Vec<FieldError>> {
        match Pipeline::read(name, text) {
            Parsed::Valid(p) => Ok(*p),
            Parsed::Invalid { errors, .. } => Err(errors),
        }
    }

    /// Like [`Pipeline::parse`], reporting every problem of the file at once
    /// (each section and list element is read on its own, see `read`).
    pub fn read(name: &str, text: &str) -> Parsed {
        let invalid = |errors| Parsed::Invalid {
            errors,
            template: None,
        };
        let mut doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                return invalid(vec![field(
                    format!("line {} column {}", e.line(), e.column()),
                    format!("not valid JSON: {e}"),
                )])
            }
        };
        let Some(obj) = doc.as_object_mut() else {
            return invalid(vec![field(
                "$",
                "expected an object holding an image template",
            )]);
        };
        let kiln_value = obj.remove(KILN_KEY);

        let mut errors = misplaced_kiln_keys(obj);
        if !valid_pipeline_name(name) {
            errors.push(field(
                "$",
                format!("pipeline name `{name}` (the file name) must be 1-64 characters of a-z, 0-9, - and _"),
            ));
        }
        let mut reader = read::Reader::default();
        let parts = reader.template(obj);
        // A file without a `kiln` section is a pasted template: every kiln setting at its default.
        let kiln = match &kiln_value {
            None => Some(KilnSection::default()),
            Some(v) => reader.kiln(v),
        };
        errors.append(&mut reader.errors);
        errors.extend(secrets::refuse(
            &secrets::scan(obj, kiln_value.as_ref()),
            &allowances(kiln.as_ref(), kiln_value.as_ref()),
        ));
        errors.extend(check_template(&parts));
        if let Some(k) = &kiln {
            errors.extend(check_kiln(k));
        }
        let template = parts.assemble();
        match (template, kiln) {
            (Some(template), Some(kiln)) if errors.is_empty() => {
                Parsed::Valid(Box::new(Pipeline {
                    name: name.to_string(),
                    template_json: doc,
                    template,
                    kiln,
                }))
            }
            (template, _) => Parsed::Invalid {
                errors,
                template: template.map(Box::new),
            },
        }
    }
}

/// The allow list: the parsed section's, or, when another part of the
/// section is wrong, whatever of the list reads on its own, so that an
/// unrelated typo does not turn every allowed secret into an error too.
fn allowances(kiln: Option<&KilnSection>, raw: Option<&serde_json::Value>) -> Vec<AllowSecret> {
    match kiln {
        Some(k) => k.allow_secrets.clone(),
        None => raw
            .and_then(|v| v.get(secrets::ALLOW_KEY))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default(),
    }
}
