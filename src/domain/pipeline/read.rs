//! Reads a pipeline file section by section, so one bad field does not hide
//! the next.
//!
//! serde stops at the first error inside a value, so reading the whole
//! template as one `ImageTemplate` would report a missing `source.offer` and
//! nothing else. Here every section, and every element of `customize`,
//! `validate.inVMValidations` and `distribute`, is read on its own with its
//! JSON path; what parsed is kept for the semantic checks, and a whole
//! [`ImageTemplate`] is assembled only when every part parsed.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{field, typed, FieldError, KilnSection};
use crate::domain::template::{
    Customizer, Distributor, ErrorHandling, Identity, ImageTemplate, Source, TemplateProperties,
    Validate,
};

/// Whatever parsed of a template. A `None` (or a `None` list element) is a
/// part that was reported as an error, or an optional part that was absent.
#[derive(Debug, Default)]
pub(super) struct TemplateParts {
    pub location: Option<String>,
    pub identity: Option<Identity>,
    pub tags: Option<BTreeMap<String, String>>,
    pub source: Option<Source>,
    pub customize: Vec<Option<Customizer>>,
    pub validate: Option<ValidateParts>,
    pub distribute: Vec<Option<Distributor>>,
    pub error_handling: Option<ErrorHandling>,
    pub build_timeout_in_minutes: Option<u32>,
    pub vm_profile: Option<Value>,
    pub staging_resource_group: Option<String>,
    /// Whether every part parsed, so that a whole template can be assembled.
    complete: bool,
}

#[derive(Debug, Default)]
pub(super) struct ValidateParts {
    pub continue_distribute_on_failure: bool,
    pub source_validation_only: bool,
    pub in_vm_validations: Vec<Option<Customizer>>,
}

impl TemplateParts {
    /// The whole template, if every part parsed.
    pub fn assemble(self) -> Option<ImageTemplate> {
        if !self.complete {
            return None;
        }
        let all = |v: Vec<Option<Customizer>>| v.into_iter().collect::<Option<Vec<_>>>();
        let validate = match self.validate {
            None => None,
            Some(v) => Some(Validate {
                continue_distribute_on_failure: v.continue_distribute_on_failure,
                source_validation_only: v.source_validation_only,
                in_vm_validations: all(v.in_vm_validations)?,
            }),
        };
        Some(ImageTemplate {
            location: self.location?,
            identity: self.identity?,
            tags: self.tags?,
            properties: TemplateProperties {
                source: self.source?,
                customize: all(self.customize)?,
                validate,
                distribute: self.distribute.into_iter().collect::<Option<Vec<_>>>()?,
                error_handling: self.error_handling,
                build_timeout_in_minutes: self.build_timeout_in_minutes,
                vm_profile: self.vm_profile,
                staging_resource_group: self.staging_resource_group,
            },
        })
    }
}

/// Collects every problem while reading.
#[derive(Debug, Default)]
pub(super) struct Reader {
    pub errors: Vec<FieldError>,
}

impl Reader {
    fn value<T: DeserializeOwned>(&mut self, v: &Value, at: &str) -> Option<T> {
        typed(v, at).map_err(|e| self.errors.push(e)).ok()
    }

    /// A key that must be present.
    fn required<T: DeserializeOwned>(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
        expected: &str,
    ) -> Option<T> {
        match obj.get(key) {
            Some(v) => self.value(v, at),
            None => {
                self.errors
                    .push(field(at, format!("missing: expected {expected}")));
                None
            }
        }
    }

    /// A key that may be absent; its default then, as `#[serde(default)]` would give.
    fn optional<T: DeserializeOwned + Default>(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Option<T> {
        match obj.get(key) {
            Some(v) => self.value(v, at),
            None => Some(T::default()),
        }
    }

    fn object<'v>(&mut self, v: &'v Value, at: &str) -> Option<&'v Map<String, Value>> {
        let obj = v.as_object();
        if obj.is_none() {
            self.errors.push(field(at, "expected an object"));
        }
        obj
    }

    /// An optional array, each element read on its own as `at[i]`.
    fn list<T: DeserializeOwned>(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Vec<Option<T>> {
        match obj.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, x)| self.value(x, &format!("{at}[{i}]")))
                .collect(),
            Some(_) => {
                self.errors.push(field(at, "expected an array"));
                Vec::new()
            }
        }
    }

    /// Reads the template (the pipeline file without its `kiln` key).
    pub fn template(&mut self, doc: &Map<String, Value>) -> TemplateParts {
        let before = self.errors.len();
        let mut t = TemplateParts {
            location: self.required(doc, "location", "location", "an Azure region name"),
            identity: self.required(
                doc,
                "identity",
                "identity",
                r#"the user-assigned identity the build runs as, {"type": "UserAssigned", "userAssignedIdentities": {"<resource id>": {}}}: Azure VM Image Builder requires one"#,
            ),
            tags: self.optional(doc, "tags", "tags"),
            ..TemplateParts::default()
        };
        match doc.get("properties") {
            None => self.errors.push(field(
                "properties",
                "missing: expected an object with source, customize and distribute",
            )),
            Some(v) => {
                if let Some(p) = self.object(v, "properties") {
                    self.properties(p, &mut t);
                }
            }
        }
        t.complete = self.errors.len() == before;
        t
    }

    fn properties(&mut self, p: &Map<String, Value>, t: &mut TemplateParts) {
        t.source = self.required(
            p,
            "source",
            "properties.source",
            "the base image: PlatformImage, SharedImageVersion or ManagedImage",
        );
        t.customize = self.list(p, "customize", "properties.customize");
        // null is absent, as serde's `Option` reads it.
        if let Some(v) = p.get("validate").filter(|v| !v.is_null()) {
            if let Some(v) = self.object(v, "properties.validate") {
                t.validate = Some(self.validate(v));
            }
        }
        match p.get("distribute") {
            None => self.errors.push(field(
                "properties.distribute",
                "missing: expected at least one distribution target",
            )),
            Some(Value::Array(a)) if a.is_empty() => self.errors.push(field(
                "properties.distribute",
                "expected at least one distribution target",
            )),
            Some(_) => t.distribute = self.list(p, "distribute", "properties.distribute"),
        }
        // Optional fields: `None` both when absent and when reported as an error.
        t.error_handling = self
            .optional(p, "errorHandling", "properties.errorHandling")
            .flatten();
        t.build_timeout_in_minutes = self
            .optional(
                p,
                "buildTimeoutInMinutes",
                "properties.buildTimeoutInMinutes",
            )
            .flatten();
        t.vm_profile = self
            .optional(p, "vmProfile", "properties.vmProfile")
            .flatten();
        t.staging_resource_group = self
            .optional(p, "stagingResourceGroup", "properties.stagingResourceGroup")
            .flatten();
    }

    fn validate(&mut self, v: &Map<String, Value>) -> ValidateParts {
        const AT: &str = "properties.validate";
        ValidateParts {
            continue_distribute_on_failure: self
                .optional(
                    v,
                    "continueDistributeOnFailure",
                    &format!("{AT}.continueDistributeOnFailure"),
                )
                .unwrap_or_default(),
            source_validation_only: self
                .optional(
                    v,
                    "sourceValidationOnly",
                    &format!("{AT}.sourceValidationOnly"),
                )
                .unwrap_or_default(),
            in_vm_validations: self.list(v, "inVMValidations", &format!("{AT}.inVMValidations")),
        }
    }

    /// Reads the `kiln` section key by key, so a bad `retention` does not hide a bad `build`.
    pub fn kiln(&mut self, v: &Value) -> Option<KilnSection> {
        let obj = self.object(v, super::KILN_KEY)?;
        let before = self.errors.len();
        let mut k = KilnSection::default();
        for (key, v) in obj {
            let at = format!("{}.{key}", super::KILN_KEY);
            match key.as_str() {
                "description" => set(&mut k.description, self.value(v, &at)),
                "triggers" => set(&mut k.triggers, self.value(v, &at)),
                "versioning" => set(&mut k.versioning, self.value(v, &at)),
                "retention" => set(&mut k.retention, self.value(v, &at)),
                "promotion" => set(&mut k.promotion, self.value(v, &at)),
                "build" => set(&mut k.build, self.value(v, &at)),
                "allowSecrets" => set(&mut k.allow_secrets, self.value(v, &at)),
                "gate" => set(&mut k.gate, self.value(v, &at)),
                // Unknown kiln keys are errors: a typo must not silently disable a safety setting.
                other => self.errors.push(field(
                    at,
                    format!("unknown field `{other}`, expected one of `description`, `triggers`, `versioning`, `retention`, `promotion`, `build`, `allowSecrets`, `gate`"),
                )),
            }
        }
        (self.errors.len() == before).then_some(k)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
