//! What `kiln validate` reports: errors, which make a pipeline unusable, and
//! warnings, which are worth reading but do not stop it.

use std::fmt;

use super::pipeline::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The pipeline is refused (`kiln validate` exits 1).
    Error,
    /// Printed, but the pipeline stays valid.
    Warning,
}

/// One problem located by a JSON path, with how much it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

impl Finding {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        match self.severity {
            Severity::Error => true,
            Severity::Warning => false,
        }
    }
}

impl From<FieldError> for Finding {
    fn from(e: FieldError) -> Self {
        Finding::error(e.path, e.message)
    }
}

/// `json.path: what was expected`, or `json.path: warning: …`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "{}: {}", self.path, self.message),
            Severity::Warning => write!(f, "{}: warning: {}", self.path, self.message),
        }
    }
}
