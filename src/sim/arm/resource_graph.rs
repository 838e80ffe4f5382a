//! Resource Graph 2024-04-01, `POST /providers/Microsoft.ResourceGraph/resources`,
//! over resources seeded through `/_sim/arm/resources`.
//!
//! The sim evaluates one documented KQL subset and refuses anything else
//! with 400 and an `InvalidQuery` detail, as Resource Graph refuses a query
//! it cannot parse:
//!
//! ```text
//! <Table> [| where type in~ ('t1', 't2') | where type =~ 't'] [| project col, name = path.to.field, ...]
//! ```
//!
//! `Table` is `Resources` or `ComputeResources`; a projected path missing in
//! a row gives null. Rows are sorted by `id`, so paging is stable; the
//! `$skipToken` is opaque to the client.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::world::{Fault, Seeded};
use super::{arm_error, Answer, ArmRequest, ArmWorld};

pub const API_VERSION: &str = "2024-04-01";
const DEFAULT_TOP: usize = 100;
const MAX_TOP: usize = 1000;

/// A query of the subset, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub table: Table,
    /// Lower-cased types a row's `type` must be one of; `None`: any.
    pub types: Option<Vec<String>>,
    /// `None`: every column of the row.
    pub project: Option<Vec<Column>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Resources,
    ComputeResources,
}

impl Table {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Resources" => Some(Table::Resources),
            "ComputeResources" => Some(Table::ComputeResources),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Sym(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "in" && chars.get(i) == Some(&'~') {
                i += 1;
                out.push(Token::Sym("in~"));
            } else {
                out.push(Token::Ident(word));
            }
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|x| *x == c)
                .ok_or_else(|| format!("unterminated string at character {i}"))?;
            out.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c == '=' && chars.get(i + 1) == Some(&'~') {
            out.push(Token::Sym("=~"));
            i += 2;
        } else {
            let sym = match c {
                '|' => "|",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '=' => "=",
                '.' => ".",
                other => return Err(format!("unexpected character '{other}' at {i}")),
            };
            out.push(Token::Sym(sym));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }
    fn sym(&mut self, s: &'static str) -> Result<(), String> {
        match self.next() {
            Some(Token::Sym(x)) if x == s => Ok(()),
            other => Err(format!("expected '{s}', got {other:?}")),
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(x)) => Ok(x),
            other => Err(format!("expected a name, got {other:?}")),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Str(x)) => Ok(x),
            other => Err(format!("expected a string, got {other:?}")),
        }
    }
}

impl Query {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = Parser {
            toks: tokens(text)?,
            at: 0,
        };
        let name = p.ident()?;
        let table = Table::parse(&name).ok_or_else(|| {
            format!("unknown table '{name}': the simulator has Resources and ComputeResources")
        })?;
        let mut q = Query {
            table,
            types: None,
            project: None,
        };
        while p.peek().is_some() {
            p.sym("|")?;
            match p.ident()?.as_str() {
                "where" if q.project.is_none() => {
                    let field = p.ident()?;
                    if field != "type" {
                        return Err(format!("where: only `type in~ (...)` and `type =~ '...'` are supported, got `{field}`"));
                    }
                    let types = match p.next() {
                        Some(Token::Sym("in~")) => {
                            p.sym("(")?;
                            let mut list = vec![p.string()?];
                            while p.peek() == Some(&Token::Sym(",")) {
                                p.next();
                                list.push(p.string()?);
                            }
                            p.sym(")")?;
                            list
                        }
                        Some(Token::Sym("=~")) => vec![p.string()?],
                        other => {
                            return Err(format!(
                                "where type: expected `in~` or `=~`, got {other:?}"
                            ))
                        }
                    };
                    let types: Vec<String> = types.iter().map(|t| t.to_ascii_lowercase()).collect();
                    q.types = Some(match q.types.take() {
                        None => types,
                        Some(before) => before.into_iter().filter(|t| types.contains(t)).collect(),
                    });
                }
                "project" if q.project.is_none() => {
                    let mut cols = Vec::new();
                    loop {
                        let name = p.ident()?;
                        let path = if p.peek() == Some(&Token::Sym("=")) {
                            p.next();
                            let mut path = vec![p.ident()?];
                            while p.peek() == Some(&Token::Sym(".")) {
                                p.next();
                                path.push(p.ident()?);
                            }
                            path
                        } else {
                            vec![name.clone()]
                        };
                        cols.push(Column { name, path });
                        match p.peek() {
                            Some(Token::Sym(",")) => {
                                p.next();
                            }
                            _ => break,
                        }
                    }
                    q.project = Some(cols);
                }
                other => {
                    return Err(format!(
                        "operator `{other}` is not supported here: the simulator evaluates `where type in~ (...)`/`where type =~ '...'` then `project`"
                    ))
                }
            }
        }
        Ok(q)
    }

    /// The row `resource` gives, or `None` if the query filters it out.
    pub fn row(&self, resource: &Value) -> Option<Value> {
        if let Some(types) = &self.types {
            let t = resource
                .get("type")
                .and_then(Value::as_str)?
                .to_ascii_lowercase();
            if !types.contains(&t) {
                return None;
            }
        }
        let Some(cols) = &self.project else {
            return Some(resource.clone());
        };
        let mut row = Map::new();
        for c in cols {
            let mut v = Some(resource);
            for step in &c.path {
                v = v.and_then(|x| x.get(step));
            }
            row.insert(c.name.clone(), v.cloned().unwrap_or(Value::Null));
        }
        Some(Value::Object(row))
    }
}

fn invalid_query(reason: &str) -> Response {
    let body = json!({"error": {
        "code": "BadRequest",
        "message": "Please provide below info when asking for support: timestamp = simulated, correlationId = simulated.",
        "details": [
            {"code": "InvalidQuery", "message": "Query is invalid. Please refer to the documentation for the Azure Resource Graph service and fix the error before retrying."},
            {"code": "ParserFailure", "message": reason},
        ],
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn skip_token(skip: usize) -> String {
    hex::encode(format!("{{\"skip\":{skip}}}"))
}

fn read_skip_token(token: &str) -> Option<usize> {
    let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let doc: Value = serde_json::from_str(&text).ok()?;
    doc.get("skip")?.as_u64().map(|n| n as usize)
}

pub(crate) fn handle(world: &ArmWorld, req: &ArmRequest) -> Option<Answer> {
    let matches = req.segments.len() == 3
        && req.seg(0) == "providers"
        && req.seg(1) == "microsoft.resourcegraph"
        && req.seg(2) == "resources";
    if !matches {
        return None;
    }
    if req.method != Method::POST {
        return Some(
            arm_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "Resource Graph queries are POSTed.",
            )
            .into(),
        );
    }
    if let Some(refused) = super::api_version(req, API_VERSION) {
        return Some(refused);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Some(
            arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized.",
            )
            .into(),
        );
    };
    let Some(text) = body.get("query").and_then(Value::as_str) else {
        return Some(
            arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "query: required",
            )
            .into(),
        );
    };
    let query = match Query::parse(text) {
        Ok(q) => q,
        Err(reason) => return Some(invalid_query(&reason).into()),
    };
    let scopes: Option<Vec<String>> =
        body.get("subscriptions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .collect()
            });
    let (w, _) = world.lock();
    let unreadable = |sub: &str| {
        w.has_fault(|f| matches!(f, Fault::UnreadableSubscription { subscription } if subscription.eq_ignore_ascii_case(sub)))
    };
    if let Some(scopes) = &scopes {
        if scopes.iter().any(|s| unreadable(s)) {
            // Resource Graph's answer for a scope the caller may not read, as
            // reported in Azure/azure-sdk-for-java#29924 and microsoft/ARI#255.
            let body = json!({"error": {
                "code": "AccessDenied",
                "message": "Please provide below info when asking for support: timestamp = simulated, correlationId = simulated.",
                "details": [{"code": "AccessDenied", "message": "Access is denied to the requested resource. The user might not have enough permission."}],
            }});
            return Some((StatusCode::FORBIDDEN, Json(body)).into());
        }
    }
    let table = query.table;
    let in_table = |s: &&Seeded| {
        Table::parse(&s.table) == Some(table)
            && !unreadable(&s.subscription)
            && scopes
                .as_ref()
                .is_none_or(|list| list.contains(&s.subscription.to_ascii_lowercase()))
    };
    let mut rows: Vec<(String, Value)> = w
        .resources
        .iter()
        .filter(in_table)
        .filter_map(|s| {
            let id = s
                .resource
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            query.row(&s.resource).map(|r| (id, r))
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let options = body.get("options").cloned().unwrap_or(Value::Null);
    let top = options
        .get("$top")
        .and_then(Value::as_u64)
        .map(|n| (n as usize).clamp(1, MAX_TOP))
        .unwrap_or(DEFAULT_TOP);
    let skip = match options.get("$skipToken").and_then(Value::as_str) {
        Some(t) => match read_skip_token(t) {
            Some(n) => n,
            None => {
                return Some(
                    arm_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidSkipToken",
                        "The $skipToken is not one this service issued.",
                    )
                    .into(),
                )
            }
        },
        None => options.get("$skip").and_then(Value::as_u64).unwrap_or(0) as usize,
    };
    let total = rows.len();
    let data: Vec<Value> = rows
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|(_, r)| r)
        .collect();
    let mut out = json!({
        "totalRecords": total,
        "count": data.len(),
        "resultTruncated": "false",
        "facets": [],
        "data": data,
    });
    if skip + top < total {
        out["$skipToken"] = json!(skip_token(skip + top));
    }
    Some(Json(out).into())
}

/// A seeded resource as Resource Graph stores it: `type` lower-cased,
/// `subscriptionId` and `resourceGroup` filled from the id.
pub fn as_stored(mut resource: Value) -> Result<(String, Value), String> {
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .ok_or("resource.id: required")?
        .to_string();
    let parts: Vec<&str> = id.split('/').collect();
    let sub = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("subscriptions"))
        .and_then(|i| parts.get(i + 1))
        .ok_or_else(|| format!("resource.id: expected /subscriptions/<id>/..., got {id}"))?
        .to_string();
    let group = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("resourceGroups"))
        .and_then(|i| parts.get(i + 1))
        .map(|g| g.to_ascii_lowercase());
    let obj = resource
        .as_object_mut()
        .ok_or("resource: expected an object")?;
    let t = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("resource.type: required")?
        .to_ascii_lowercase();
    obj.insert("type".into(), json!(t));
    if !obj.contains_key("name") {
        obj.insert("name".into(), json!(parts.last().copied().unwrap_or("")));
    }
    obj.insert("subscriptionId".into(), json!(sub));
    if let Some(g) = group {
        obj.insert("resourceGroup".into(), json!(g));
    }
    Ok((sub, resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_subset_parses() {
        let q = Query::parse("ComputeResources | where type in~ ('Microsoft.Compute/virtualMachineScaleSets/virtualMachines', 'x') | project id, imageId = properties.storageProfile.imageReference.id").unwrap();
        assert_eq!(q.table, Table::ComputeResources);
        assert_eq!(
            q.types,
            Some(vec![
                "microsoft.compute/virtualmachinescalesets/virtualmachines".to_string(),
                "x".to_string()
            ])
        );
        let cols = q.project.unwrap();
        assert_eq!(
            cols[0],
            Column {
                name: "id".into(),
                path: vec!["id".into()]
            }
        );
        assert_eq!(
            cols[1].path,
            vec!["properties", "storageProfile", "imageReference", "id"]
        );
        let q =
            Query::parse("Resources | where type =~ 'microsoft.compute/virtualmachines'").unwrap();
        assert_eq!(q.project, None);
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (q, says) in [
            ("Resources | where type =~ 'a' or type =~ 'b'", "'|'"),
            ("Resources | extend imageId = tostring(id)", "extend"),
            ("resources", "unknown table"),
            ("Resources | where name =~ 'x'", "only `type"),
            ("Resources | project id | where type =~ 'a'", "where"),
            ("Resources | where type in~ ('a'", "')'"),
            ("Resources | project x = tostring(id)", "'|'"),
        ] {
            let e = Query::parse(q).unwrap_err();
            assert!(e.contains(says), "{q}: {e}");
        }
    }

    #[test]
    fn a_missing_path_projects_null_and_types_match_without_case() {
        let q = Query::parse("Resources | where type in~ ('Microsoft.Compute/virtualMachines') | project id, imageId = properties.storageProfile.imageReference.id").unwrap();
        let vm = json!({"id": "/subscriptions/s/x/vm1", "type": "microsoft.compute/virtualmachines", "properties": {}});
        assert_eq!(
            q.row(&vm),
            Some(json!({"id": "/subscriptions/s/x/vm1", "imageId": null}))
        );
        let disk = json!({"id": "d", "type": "microsoft.compute/disks"});
        assert_eq!(q.row(&disk), None);
    }

    #[test]
    fn skip_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(read_skip_token(&skip_token(1000)), Some(1000));
        assert_eq!(read_skip_token("eyAibm8iOiAibHVjayIgfQ=="), None);
    }
}
