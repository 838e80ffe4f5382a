//! Secrets in pipeline files: every string of the file (template and `kiln`
//! section, values and key names) is scanned for credentials, and each one
//! found is an error naming its JSON path and kind, never its text.
//!
//! A pipeline file lives in a repository, is read by everyone who reviews
//! it and is submitted to ARM, where the template (inline scripts included)
//! is readable by anyone with Reader on its resource group. A SAS URL or a
//! password there is a leak, however the build uses it. The rules aim at
//! what is unmistakably a literal credential (a `$VAR` or `$(…)` is not), so
//! that real templates scan clean; a deliberate exception is written down in
//! `kiln.allowSecrets` with its path, kind and a reason.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{field, FieldError, KILN_KEY};

/// The `kiln` key that lists deliberate exceptions.
pub const ALLOW_KEY: &str = "allowSecrets";

/// What kind of credential a string looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// A URL query with `sig=` and `sv=` or `se=`: a shared access signature.
    SasToken,
    /// `AccountKey=…`, or an 88-character base64 key beside a key-ish word.
    StorageAccountKey,
    /// A Service Bus / Event Hubs or Storage connection string with its key.
    ConnectionString,
    /// A PEM or OpenSSH private key.
    PrivateKey,
    /// `Bearer <token>` or a JWT.
    BearerToken,
    /// A password assigned a literal value.
    Password,
}

impl SecretKind {
    pub const ALL: [SecretKind; 6] = [
        SecretKind::SasToken,
        SecretKind::StorageAccountKey,
        SecretKind::ConnectionString,
        SecretKind::PrivateKey,
        SecretKind::BearerToken,
        SecretKind::Password,
    ];

    /// The name used in messages and in `kiln.allowSecrets`.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::SasToken => "sas-token",
            SecretKind::StorageAccountKey => "storage-account-key",
            SecretKind::ConnectionString => "connection-string",
            SecretKind::PrivateKey => "private-key",
            SecretKind::BearerToken => "bearer-token",
            SecretKind::Password => "password",
        }
    }

    fn what(self) -> &'static str {
        match self {
            SecretKind::SasToken => "a SAS token",
            SecretKind::StorageAccountKey => "a storage account key",
            SecretKind::ConnectionString => "a connection string with its key",
            SecretKind::PrivateKey => "a private key",
            SecretKind::BearerToken => "a bearer token",
            SecretKind::Password => "a literal password",
        }
    }
}

/// One deliberate exception: the secret of `kind` at `path` is meant to be there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSecret {
    /// The JSON path as kiln reports it (`properties.customize[0].inline[1]`; a leading `$.` is accepted).
    pub path: String,
    pub kind: SecretKind,
    /// Why it is acceptable; required, and kept for the reviewer.
    pub reason: String,
}

/// A likely secret: where and what kind. It holds no part of the text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretHit {
    pub path: String,
    pub kind: SecretKind,
}

/// Every likely secret in a pipeline file: its template (the file without
/// `kiln`) and its `kiln` section, except the allow list itself.
pub fn scan(template: &Map<String, Value>, kiln: Option<&Value>) -> Vec<SecretHit> {
    let mut hits = Vec::new();
    walk_object(template, &mut String::new(), &mut hits);
    if let Some(k) = kiln {
        walk(k, &mut KILN_KEY.to_string(), &mut hits);
    }
    // In file order, each (path, kind) once.
    let mut seen = std::collections::BTreeSet::new();
    hits.retain(|h| seen.insert(h.clone()));
    hits
}

/// The errors for `hits` that `allow` does not cover, and for each
/// allowance that is malformed or covers nothing (a stale exception would
/// silently cover the next secret put there).
pub fn refuse(hits: &[SecretHit], allow: &[AllowSecret]) -> Vec<FieldError> {
    let norm = |p: &str| {
        p.strip_prefix("$.")
            .or_else(|| p.strip_prefix('$'))
            .unwrap_or(p)
            .to_string()
    };
    let allowed = |h: &SecretHit| {
        allow
            .iter()
            .any(|a| a.kind == h.kind && norm(&a.path) == h.path && !a.reason.trim().is_empty())
    };
    let mut errors: Vec<FieldError> = hits
        .iter()
        .filter(|h| !allowed(h))
        .map(|h| {
            field(
                h.path.clone(),
                format!(
                    "looks like {} (kind `{}`): kiln refuses secrets in pipeline files, which are \
                     reviewed, versioned and submitted to Azure as readable templates; let the build \
                     identity fetch it (managed identity, Key Vault), or if it is deliberate list it in \
                     `kiln.{ALLOW_KEY}` as {{\"path\": \"{}\", \"kind\": \"{}\", \"reason\": \"…\"}}",
                    h.kind.what(),
                    h.kind.name(),
                    h.path,
                    h.kind.name()
                ),
            )
        })
        .collect();
    for (i, a) in allow.iter().enumerate() {
        let at = format!("{KILN_KEY}.{ALLOW_KEY}[{i}]");
        if a.reason.trim().is_empty() {
            errors.push(field(
                format!("{at}.reason"),
                "expected why this secret may stay in the file",
            ));
        } else if !hits
            .iter()
            .any(|h| h.kind == a.kind && h.path == norm(&a.path))
        {
            errors.push(field(
                at,
                format!(
                    "allows nothing: no `{}` was found at `{}`; remove the entry",
                    a.kind.name(),
                    norm(&a.path)
                ),
            ));
        }
    }
    errors
}

fn walk(v: &Value, path: &mut String, hits: &mut Vec<SecretHit>) {
    match v {
        Value::String(s) => {
            for kind in kinds_in(s) {
                hits.push(SecretHit {
                    path: shown(path),
                    kind,
                });
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(x, path, hits);
                path.truncate(len);
            }
        }
        Value::Object(map) => walk_object(map, path, hits),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn walk_object(map: &Map<String, Value>, path: &mut String, hits: &mut Vec<SecretHit>) {
    for (k, x) in map {
        if path.as_str() == KILN_KEY && k == ALLOW_KEY {
            continue;
        }
        // A secret used as a key name is reported at the object,
        // so that the path does not carry it.
        let key_kinds = kinds_in(k);
        for kind in &key_kinds {
            hits.push(SecretHit {
                path: shown(path),
                kind: *kind,
            });
        }
        if !key_kinds.is_empty() {
            continue;
        }
        if let Value::String(s) = x {
            if password_key(k) && literal(s) && !flag(s) {
                hits.push(SecretHit {
                    path: shown(&child(path, k)),
                    kind: SecretKind::Password,
                });
            }
        }
        let len = path.len();
        *path = child(path, k);
        walk(x, path, hits);
        path.truncate(len);
    }
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        "$".into()
    } else {
        path.to_string()
    }
}

/// `parent.key`, or `parent["key"]` for a key that is not a plain name.
fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!(
            "{parent}[{}]",
            serde_json::to_string(key).expect("a string serializes")
        ),
    }
}

/// A JSON key that names a password (`adminPassword`, `password`), whose
/// string value is then the password itself.
fn password_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    // Settings about passwords (`disablePasswordAuthentication`,
    // `passwordLength`) are not passwords.
    let about = [
        "authentication",
        "length",
        "policy",
        "less",
        "expir",
        "change",
    ];
    (k.contains("password") || k == "passwd" || k == "pwd") && !about.iter().any(|a| k.contains(a))
}

/// A switch rather than a secret (`"true"` in a setting named after passwords).
fn flag(v: &str) -> bool {
    [
        "true", "false", "yes", "no", "on", "off", "enabled", "disabled",
    ]
    .iter()
    .any(|f| v.trim().eq_ignore_ascii_case(f))
}

/// A value that is written out, not taken from somewhere at run time: not
/// a variable (`$X`, `%X%`, `{x}`), a command's output (`$(…)`, `` `…` ``,
/// PowerShell's `(Get-…)`) or a PowerShell cmdlet call (`Read-Host`,
/// `ConvertTo-SecureString …`).
fn literal(v: &str) -> bool {
    let v = v.trim_start_matches(['"', '\'']);
    !v.is_empty()
        && !v.starts_with(['$', '%', '{', '<', '*', '(', '`'])
        && !CMDLET.is_match(v)
        && !v.eq_ignore_ascii_case("null")
        && !v.eq_ignore_ascii_case("none")
}

/// `message` with every quoted or backquoted value that holds a secret
/// replaced by its kind. serde's errors quote the value they refused
/// (`invalid type: string "…", expected a sequence`), so an error about a
/// secret in the wrong place would otherwise print the secret.
pub fn scrub(message: &str) -> std::borrow::Cow<'_, str> {
    QUOTED.replace_all(message, |c: &regex::Captures<'_>| {
        let inner = c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str());
        match kinds_in(inner).first() {
            Some(kind) => format!(
                "a value holding {} (kind `{}`, not shown)",
                kind.what(),
                kind.name()
            ),
            None => c[0].to_string(),
        }
    })
}

/// The kinds of secret one string holds.
pub fn kinds_in(s: &str) -> Vec<SecretKind> {
    let text = Text::new(s);
    let mut kinds: Vec<SecretKind> = SecretKind::ALL
        .into_iter()
        .filter(|k| found(*k, &text))
        .collect();
    // The key inside a connection string is that connection string's.
    if kinds.contains(&SecretKind::ConnectionString) {
        kinds.retain(|k| *k != SecretKind::StorageAccountKey);
    }
    kinds
}

/// A scanned string and its ASCII-lowercased copy, which the patterns'
/// literals are looked up in.
struct Text<'a> {
    raw: &'a str,
    lower: String,
}

impl<'a> Text<'a> {
    fn new(raw: &'a str) -> Self {
        Self {
            raw,
            lower: raw.to_ascii_lowercase(),
        }
    }
}

/// A pattern and a literal that every match of it holds (lowercase; the
/// patterns ignore ASCII case only, so the literal is looked up in the
/// lowercased text). The pattern runs, and is compiled, only for a string
/// that holds its literal: almost no string in a real pipeline holds one,
/// and compiling all the patterns was the largest single cost of `kiln
/// serve`'s start (`docs/benchmarks.md`).
struct Pattern {
    literal: &'static str,
    re: LazyLock<Regex>,
}

impl Pattern {
    fn find(&self, text: &Text<'_>) -> Option<&Regex> {
        text.lower.contains(self.literal).then(|| &*self.re)
    }

    fn is_match(&self, text: &Text<'_>) -> bool {
        self.find(text).is_some_and(|re| re.is_match(text.raw))
    }
}

macro_rules! re {
    ($name:ident, $re:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($re).expect("a valid pattern"));
    };
    ($name:ident, $literal:expr, $re:expr) => {
        static $name: Pattern = Pattern {
            literal: $literal,
            re: LazyLock::new(|| Regex::new($re).expect("a valid pattern")),
        };
    };
}

// Values are at least 16 characters of what the credential is made of, and
// never start with `$` or `%`: `sig=$SIG` is a reference, not a leak.
// Case is ignored for ASCII only (`(?i-u:…)`): credentials are ASCII, and
// Unicode folding would let `K` (the Kelvin sign) stand for `k`, which the
// literal lookup does not.
re!(QUOTED, r#""((?:[^"\\]|\\.)*)"|`([^`]*)`"#);
// `Verb-Noun` at the start of a value: a PowerShell cmdlet computes it.
re!(CMDLET, r"^[A-Z][A-Za-z]+-[A-Z][A-Za-z]+\b");
re!(SAS_SIG, "sig=", r"[?&;](?i-u:sig=)[A-Za-z0-9%+/=_-]{16,}");
re!(SAS_PARAM, r"[?&;](?i-u:sv|se)=[^&\s$]");
re!(
    ACCOUNT_KEY,
    "accountkey=",
    r"(?i-u:AccountKey=)[A-Za-z0-9+/]{20,}={0,2}"
);
re!(
    SHARED_ACCESS_KEY,
    "sharedaccesskey=",
    r"(?i-u:SharedAccessKey=)[A-Za-z0-9+/]{20,}={0,2}"
);
re!(
    CONN_STRING_HEAD,
    r"(?i-u:Endpoint=sb://|DefaultEndpointsProtocol=)"
);
re!(KEY_64_BYTES, "==", r"(^|[^A-Za-z0-9+/])[A-Za-z0-9+/]{86}==");
re!(KEYISH, r"(?i-u:key|secret|storage|account|credential)");
re!(
    PRIVATE_KEY,
    "private key",
    r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----"
);
re!(
    BEARER,
    "bearer",
    r"\b(?i-u:bearer)\s+[A-Za-z0-9._~+/-]{20,}=*"
);
re!(JWT, "eyj", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.");
// `DB_PASSWORD=hunter2`, `--password x`, `-password=x`; `password: x` is
// prose more often than not, and `--password-stdin` reads it from stdin.
re!(
    PASSWORD_ASSIGN,
    "password",
    r#"(?i-u:password)["']?\s*=\s*(?P<v>["']?[^\s"';&|]*)"#
);
re!(
    PASSWORD_FLAG,
    "password",
    r#"(^|\s)--?(?i-u:password)\s+(?P<v>["']?[^\s"';&|]*)"#
);

fn found(kind: SecretKind, text: &Text<'_>) -> bool {
    let s = text.raw;
    match kind {
        SecretKind::SasToken => SAS_SIG.is_match(text) && SAS_PARAM.is_match(s),
        SecretKind::StorageAccountKey => {
            ACCOUNT_KEY.is_match(text)
                || KEY_64_BYTES.find(text).is_some_and(|re| {
                    re.find_iter(s).any(|m| {
                        let before = &s[..m.start()];
                        let window = before
                            .char_indices()
                            .rev()
                            .nth(63)
                            .map_or(before, |(i, _)| &before[i..]);
                        KEYISH.is_match(window)
                    })
                })
        }
        SecretKind::ConnectionString => {
            (ACCOUNT_KEY.is_match(text) && CONN_STRING_HEAD.is_match(s))
                || SHARED_ACCESS_KEY.is_match(text)
        }
        SecretKind::PrivateKey => PRIVATE_KEY.is_match(text),
        SecretKind::BearerToken => BEARER.is_match(text) || JWT.is_match(text),
        SecretKind::Password => [&PASSWORD_ASSIGN, &PASSWORD_FLAG].iter().any(|p| {
            p.find(text).is_some_and(|re| {
                re.captures_iter(s)
                    .any(|c| c.name("v").is_some_and(|v| literal(v.as_str())))
            })
        }),
    }
}

#[cfg(test)]
mod tests;
