//! Checks of a component's OpenAPI fragment (what its `api-description`
//! export returns and the host merges into `GET /openapi.json`), and of the
//! component's answers against it.
//!
//! - [`Fragment::parse`]: the fragment is a JSON object with `paths` (and
//!   optionally `components.schemas`, nothing else); every path is under the
//!   component's route; operation ids are unique and carry the component's
//!   prefix; schema names carry its prefix; every templated path segment has
//!   its `in: path` parameter; every `$ref` resolves to the fragment's own
//!   schemas or to the host's `#/components/schemas/Error`; every error
//!   response is that `Error`.
//! - [`Fragment::check_answer`]: an answer of the component, as the host
//!   would see it, is what the fragment says: an undocumented path is a 404
//!   `not_found`, an undocumented method a 405 whose `allow` lists exactly
//!   the documented ones, a documented operation answers a declared status
//!   with a body valid against the declared schema (a small validator for
//!   the JSON Schema keywords the fragments' responses use; any other
//!   keyword is an error, never silently ignored) and a `Link` header only
//!   where one is declared.
//! - [`Fragment::operations`]: every documented `(method, path)` with its
//!   templated segments filled in, to drive a component through all of them.

use std::collections::{BTreeMap, BTreeSet};

use kit::Response;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// The host's error schema, which every fragment's error responses use.
pub const ERROR_REF: &str = "#/components/schemas/Error";
/// Where a fragment's own schemas live.
const SCHEMAS: &str = "#/components/schemas/";
/// Path-item keys that are operations.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Whose fragment it is: what its names must start with.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// The component's route prefix (`/cafes`): every path is it or under it.
    pub route: &'static str,
    /// Prefix of every schema name (`Cafe`).
    pub schemas: &'static str,
    /// Prefix of every operation id (`cafe_`).
    pub operations: &'static str,
}

/// A parsed, checked fragment.
#[derive(Debug, Clone)]
pub struct Fragment {
    owner: Owner,
    paths: Map<String, Value>,
    schemas: Map<String, Value>,
}

impl Fragment {
    /// `text` as `owner`'s fragment, or every problem found with it.
    pub fn parse(text: &str, owner: Owner) -> Result<Fragment, Vec<String>> {
        let doc: Value = serde_json::from_str(text).map_err(|e| vec![format!("not JSON: {e}")])?;
        let Some(doc) = doc.as_object() else {
            return Err(vec!["not a JSON object".to_owned()]);
        };
        let mut problems = Vec::new();
        for key in doc.keys() {
            if key != "paths" && key != "components" {
                problems.push(format!(
                    "top-level {key:?}: a fragment has only paths and components"
                ));
            }
        }
        let paths = match doc.get("paths").and_then(Value::as_object) {
            Some(p) if !p.is_empty() => p.clone(),
            _ => {
                problems.push("no paths".to_owned());
                Map::new()
            }
        };
        let mut schemas = Map::new();
        if let Some(components) = doc.get("components") {
            match components.as_object() {
                Some(c) => {
                    for key in c.keys().filter(|k| *k != "schemas") {
                        problems.push(format!(
                            "components.{key}: only components.schemas may be given"
                        ));
                    }
                    match c.get("schemas").map(Value::as_object) {
                        None => {}
                        Some(Some(s)) => schemas = s.clone(),
                        Some(None) => {
                            problems.push("components.schemas is not an object".to_owned())
                        }
                    }
                }
                None => problems.push("components is not an object".to_owned()),
            }
        }
        for name in schemas.keys() {
            if !name.starts_with(owner.schemas) || name == "Error" {
                problems.push(format!(
                    "schema {name:?} does not start with {:?}",
                    owner.schemas
                ));
            }
        }
        let fragment = Fragment {
            owner,
            paths,
            schemas,
        };
        fragment.check_paths(&mut problems);
        fragment.check_refs(&Value::Object(doc.clone()), "", &mut problems);
        if problems.is_empty() {
            Ok(fragment)
        } else {
            Err(problems)
        }
    }

    fn check_paths(&self, problems: &mut Vec<String>) {
        let mut ids = BTreeSet::new();
        for (path, item) in &self.paths {
            let Some(segments) = template_segments(path, self.owner.route) else {
                problems.push(format!("path {path:?} is not under {:?}", self.owner.route));
                continue;
            };
            let Some(item) = item.as_object() else {
                problems.push(format!("{path}: not an object"));
                continue;
            };
            let templated: BTreeSet<&str> = segments.iter().filter_map(|s| param_name(s)).collect();
            let mut operations = 0;
            for (key, op) in item {
                if !METHODS.contains(&key.as_str()) {
                    if !matches!(key.as_str(), "parameters" | "summary" | "description") {
                        problems.push(format!("{path}: unexpected key {key:?}"));
                    }
                    continue;
                }
                operations += 1;
                let at = format!("{} {path}", key.to_uppercase());
                match op["operationId"].as_str() {
                    Some(id) if id.starts_with(self.owner.operations) => {
                        if !ids.insert(id.to_owned()) {
                            problems.push(format!("{at}: operationId {id:?} is not unique"));
                        }
                    }
                    other => problems.push(format!(
                        "{at}: operationId {other:?} does not start with {:?}",
                        self.owner.operations
                    )),
                }
                let declared: BTreeSet<&str> = path_params(item.get("parameters"))
                    .chain(path_params(op.get("parameters")))
                    .filter_map(|p| {
                        if p["required"] != Value::Bool(true) {
                            problems.push(format!(
                                "{at}: path parameter {} is not required",
                                p["name"]
                            ));
                        }
                        p["name"].as_str()
                    })
                    .collect();
                if declared != templated {
                    problems.push(format!(
                        "{at}: path parameters {declared:?} do not match the template's {templated:?}"
                    ));
                }
                self.check_responses(&at, op, problems);
            }
            if operations == 0 {
                problems.push(format!("{path}: no operation"));
            }
        }
    }

    fn check_responses(&self, at: &str, op: &Value, problems: &mut Vec<String>) {
        let Some(responses) = op["responses"].as_object().filter(|r| !r.is_empty()) else {
            problems.push(format!("{at}: no responses"));
            return;
        };
        for (status, response) in responses {
            let Some(code) = status
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
            else {
                problems.push(format!("{at}: response {status:?} is not a status code"));
                continue;
            };
            if !response["description"].is_string() {
                problems.push(format!("{at} {status}: no description"));
            }
            let schema = &response["content"]["application/json"]["schema"];
            if schema.is_null() {
                problems.push(format!("{at} {status}: no application/json schema"));
            } else if code >= 400 && schema["$ref"] != ERROR_REF {
                problems.push(format!(
                    "{at} {status}: an error response must be {ERROR_REF}"
                ));
            }
        }
    }

    /// Every `$ref` under `v` points at one of the fragment's own schemas or
    /// at the host's `Error`.
    fn check_refs(&self, v: &Value, at: &str, problems: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{at}/{k}");
                    if k == "$ref" {
                        let ok = match child.as_str() {
                            Some(ERROR_REF) => true,
                            Some(r) => r
                                .strip_prefix(SCHEMAS)
                                .is_some_and(|name| self.schemas.contains_key(name)),
                            None => false,
                        };
                        if !ok {
                            problems.push(format!("{here}: {child} does not resolve"));
                        }
                    } else {
                        self.check_refs(child, &here, problems);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    self.check_refs(child, &format!("{at}/{i}"), problems);
                }
            }
            _ => {}
        }
    }

    /// Every documented `(METHOD, path)`, templated segments replaced by
    /// `id` (e.g. `("GET", "/cafes/1")`).
    pub fn operations(&self, id: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in &self.paths {
            let concrete: Vec<&str> = path
                .split('/')
                .map(|s| if param_name(s).is_some() { id } else { s })
                .collect();
            for method in METHODS {
                if item.get(*method).is_some() {
                    out.push((method.to_uppercase(), concrete.join("/")));
                }
            }
        }
        out
    }

    /// The documented methods of the path template `path` matches (the
    /// component's own routing: empty segments are skipped), with its
    /// path item; `None` when no documented path matches.
    fn path_item(&self, path: &str) -> Option<(&str, &Map<String, Value>)> {
        let segments = kit::http::segments(path, self.owner.route)?;
        self.paths.iter().find_map(|(template, item)| {
            let t = template_segments(template, self.owner.route)?;
            let matches = t.len() == segments.len()
                && t.iter()
                    .zip(&segments)
                    .all(|(t, s)| param_name(t).is_some() || t == s);
            matches.then_some((template.as_str(), item.as_object()?))
        })
    }

    /// `r`, the component's answer to `method path`, is what the fragment
    /// documents (see the module docs).
    pub fn check_answer(
        &self,
        method: &str,
        path: &str,
        r: &Response,
    ) -> Result<(), TestCaseError> {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let Some((template, item)) = self.path_item(path) else {
            prop_assert!(
                r.status == 404 && body["error"] == "not_found",
                "{} {} is not documented but answered {}: {}",
                method,
                path,
                r.status,
                body
            );
            return Ok(());
        };
        let documented: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.contains_key(**m))
            .map(|m| m.to_uppercase())
            .collect();
        let op = METHODS
            .iter()
            .find(|m| m.to_uppercase() == method)
            .and_then(|m| item.get(*m));
        let Some(op) = op else {
            let allow: BTreeSet<String> = r
                .header("allow")
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect();
            prop_assert!(
                r.status == 405 && allow == documented,
                "{} {} ({}): not a documented method, answered {} allow {:?}, documented {:?}",
                method,
                path,
                template,
                r.status,
                r.header("allow"),
                documented
            );
            return Ok(());
        };
        let at = format!("{method} {path} ({template})");
        let Some(response) = op["responses"].get(r.status.to_string()) else {
            return Err(TestCaseError::fail(format!(
                "{at}: status {} is not declared: {body}",
                r.status
            )));
        };
        let schema = &response["content"]["application/json"]["schema"];
        let mut errors = Vec::new();
        self.validate(schema, &body, "", &mut errors);
        prop_assert!(
            errors.is_empty(),
            "{} answered {} not matching its schema: {:?}\n{}",
            at,
            r.status,
            errors,
            body
        );
        if r.header("link").is_some() {
            prop_assert!(
                response["headers"].get("Link").is_some(),
                "{} answered {} with a Link header it does not declare",
                at,
                r.status
            );
        }
        Ok(())
    }

    /// Errors of `v` against `schema` (JSON pointer of `v`, what is wrong).
    /// Knows the keywords the fragments' responses use; any other keyword
    /// is an error itself.
    pub fn validate(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(schema) = schema.as_object() else {
            errors.push(format!("{at}: schema is not an object"));
            return;
        };
        for (k, rule) in schema {
            match k.as_str() {
                "description" | "examples" | "default" | "title" => {}
                "$ref" => match rule.as_str() {
                    Some(ERROR_REF) => self.validate(&error_schema(), v, at, errors),
                    Some(r) => match r.strip_prefix(SCHEMAS).and_then(|n| self.schemas.get(n)) {
                        Some(target) => self.validate(target, v, at, errors),
                        None => errors.push(format!("{at}: unresolved {r}")),
                    },
                    None => errors.push(format!("{at}: $ref is not a string")),
                },
                "type" => {
                    let types: Vec<&str> = match rule {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        _ => vec![],
                    };
                    if !types.iter().any(|t| has_type(v, t)) {
                        errors.push(format!("{at}: {v} is not of type {rule}"));
                    }
                }
                "enum" => {
                    if !rule.as_array().is_some_and(|vs| vs.contains(v)) {
                        errors.push(format!("{at}: {v} is not one of {rule}"));
                    }
                }
                "const" => {
                    if rule != v {
                        errors.push(format!("{at}: {v} is not {rule}"));
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(n), Some(bound)) = (as_i128(v), as_i128(rule)) {
                        if (k == "minimum" && n < bound) || (k == "maximum" && n > bound) {
                            errors.push(format!("{at}: {n} breaks {k} {bound}"));
                        }
                    } else if v.is_number() {
                        errors.push(format!("{at}: {v} against {k} {rule}: not whole numbers"));
                    }
                }
                "minLength" | "maxLength" => {
                    if let (Some(s), Some(bound)) = (v.as_str(), rule.as_u64()) {
                        let n = s.chars().count() as u64;
                        if (k == "minLength" && n < bound) || (k == "maxLength" && n > bound) {
                            errors.push(format!("{at}: {n} characters break {k} {bound}"));
                        }
                    }
                }
                "properties" => {
                    if let (Some(obj), Some(props)) = (v.as_object(), rule.as_object()) {
                        for (name, sub) in props {
                            if let Some(x) = obj.get(name) {
                                self.validate(sub, x, &format!("{at}/{name}"), errors);
                            }
                        }
                    }
                }
                "required" => {
                    if let Some(obj) = v.as_object() {
                        for name in rule
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                        {
                            if !obj.contains_key(name) {
                                errors.push(format!("{at}: {name} is missing"));
                            }
                        }
                    }
                }
                "additionalProperties" => match (v.as_object(), rule) {
                    (Some(obj), Value::Bool(false)) => {
                        let known = schema.get("properties").and_then(Value::as_object);
                        for name in obj.keys() {
                            if !known.is_some_and(|p| p.contains_key(name)) {
                                errors.push(format!("{at}: unexpected {name}"));
                            }
                        }
                    }
                    (_, Value::Bool(_)) | (None, _) => {}
                    (Some(_), _) => {
                        errors.push(format!("{at}: additionalProperties must be a boolean here"))
                    }
                },
                "items" => {
                    if let Some(items) = v.as_array() {
                        for (i, x) in items.iter().enumerate() {
                            self.validate(rule, x, &format!("{at}/{i}"), errors);
                        }
                    }
                }
                "anyOf" => {
                    let branches = rule.as_array().map(Vec::as_slice).unwrap_or_default();
                    let fits = branches.iter().any(|b| {
                        let mut e = Vec::new();
                        self.validate(b, v, at, &mut e);
                        e.is_empty()
                    });
                    if !fits {
                        errors.push(format!("{at}: {v} matches no branch of anyOf"));
                    }
                }
                other => errors.push(format!("{at}: keyword {other:?} is not supported here")),
            }
        }
    }

    /// The fragment's own schemas, by name.
    pub fn schemas(&self) -> &Map<String, Value> {
        &self.schemas
    }

    /// Every path with its documented methods (`GET`, ...).
    pub fn methods(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.paths
            .iter()
            .map(|(path, item)| {
                let methods = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_uppercase())
                    .collect();
                (path.clone(), methods)
            })
            .collect()
    }
}

/// Methods [`check_routes`] tries on every documented path.
pub const PROBED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Every documented path (templated segments = `id`) with every method of
/// [`PROBED_METHODS`], through `http(method, path, body)`: each answer
/// passes [`Fragment::check_answer`], and a documented operation is served
/// (neither a 404 `not_found` nor a 405). An operation with request-body
/// examples is sent each of them (each must be accepted: below 400, or a
/// 404 for an id that does not exist); others get an empty body.
pub fn check_routes(
    api: &Fragment,
    id: &str,
    mut http: impl FnMut(&str, &str, &[u8]) -> Response,
) -> Result<(), TestCaseError> {
    for (template, item) in &api.paths {
        let path: Vec<&str> = template
            .split('/')
            .map(|s| if param_name(s).is_some() { id } else { s })
            .collect();
        let path = path.join("/");
        for method in PROBED_METHODS {
            let op = item.get(method.to_lowercase());
            let examples: Vec<Vec<u8>> = op
                .and_then(|op| {
                    op["requestBody"]["content"]["application/json"]["examples"].as_object()
                })
                .map(|ex| {
                    ex.values()
                        .map(|e| e["value"].to_string().into_bytes())
                        .collect()
                })
                .unwrap_or_default();
            let with_example = !examples.is_empty();
            let bodies = if with_example {
                examples
            } else {
                vec![Vec::new()]
            };
            for body in bodies {
                let r = http(method, &path, &body);
                api.check_answer(method, &path, &r)?;
                let answer = String::from_utf8_lossy(&r.body);
                if op.is_some() {
                    let kind =
                        serde_json::from_slice::<Value>(&r.body).unwrap_or_default()["error"]
                            .clone();
                    let not_found = r.status == 404 && kind == "not_found";
                    prop_assert!(
                        !not_found && r.status != 405,
                        "{} {} is documented but not served: {} {}",
                        method,
                        path,
                        r.status,
                        answer
                    );
                }
                if with_example {
                    prop_assert!(
                        r.status < 400 || r.status == 404,
                        "{} {} refused its documented example {}: {} {}",
                        method,
                        path,
                        String::from_utf8_lossy(&body),
                        r.status,
                        answer
                    );
                }
            }
        }
    }
    Ok(())
}

/// The host's `Error`, as far as the components' answers go: the kit shape.
fn error_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    })
}

/// The segments of the template `path` under `route`, or `None` when it is
/// not `route` or under it (unlike the component's routing, a template has
/// no empty segments: `//` or a trailing `/` makes it foreign).
fn template_segments<'a>(path: &'a str, route: &str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(route)?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let segments: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    segments.iter().all(|s| !s.is_empty()).then_some(segments)
}

/// `name` for a templated segment `{name}`.
fn param_name(segment: &str) -> Option<&str> {
    segment
        .strip_prefix('{')?
        .strip_suffix('}')
        .filter(|n| !n.is_empty())
}

/// The `in: path` ones of a path item's or an operation's `parameters`.
fn path_params(parameters: Option<&Value>) -> impl Iterator<Item = &Value> {
    parameters
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "path")
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => as_i128(v).is_some(),
        _ => false,
    }
}

/// A whole JSON number (`5`, `5.0`) as `i128`.
fn as_i128(v: &Value) -> Option<i128> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    let f = n.as_f64()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWNER: Owner = Owner {
        route: "/things",
        schemas: "Thing",
        operations: "thing_",
    };

    fn fragment(extra: impl FnOnce(&mut Value)) -> Value {
        let error = json!({"description": "e", "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}});
        let mut doc = json!({
            "paths": {
                "/things": {"get": {"operationId": "thing_list", "responses": {
                    "200": {"description": "ok", "headers": {"Link": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}}}}},
                    "400": error,
                }}},
                "/things/{thingId}": {
                    "parameters": [{"name": "thingId", "in": "path", "required": true, "schema": {"type": "integer"}}],
                    "get": {"operationId": "thing_get", "responses": {
                        "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                        "404": error,
                    }},
                    "delete": {"operationId": "thing_delete", "responses": {"404": error}},
                },
            },
            "components": {"schemas": {"Thing": {
                "type": "object", "required": ["id", "name"], "additionalProperties": false,
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 18446744073709551615_u64},
                    "name": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 3}, {"type": "null"}]},
                },
            }}},
        });
        extra(&mut doc);
        doc
    }

    fn parse(doc: &Value) -> Result<Fragment, Vec<String>> {
        Fragment::parse(&doc.to_string(), OWNER)
    }

    fn problems(extra: impl FnOnce(&mut Value)) -> Vec<String> {
        parse(&fragment(extra)).err().unwrap_or_default()
    }

    fn answer(status: u16, body: Value, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn a_well_formed_fragment_parses() {
        let f = parse(&fragment(|_| {})).unwrap();
        assert_eq!(
            f.operations("1"),
            vec![
                ("GET".to_owned(), "/things".to_owned()),
                ("GET".to_owned(), "/things/1".to_owned()),
                ("DELETE".to_owned(), "/things/1".to_owned()),
            ]
        );
        assert_eq!(f.methods()["/things/{thingId}"].len(), 2);
    }

    #[test]
    fn structural_problems_are_all_reported() {
        assert!(Fragment::parse("{", OWNER).is_err());
        assert!(Fragment::parse("[]", OWNER).is_err());
        type Change = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("no paths", Box::new(|d| d["paths"] = json!({}))),
            (
                "is not under",
                Box::new(|d| d["paths"]["/other"] = d["paths"]["/things"].clone()),
            ),
            (
                "is not under",
                Box::new(|d| d["paths"]["/thingsx"] = d["paths"]["/things"].clone()),
            ),
            (
                "does not resolve",
                Box::new(|d| {
                    d["components"]["schemas"]["Thing"]["properties"]["x"] =
                        json!({"$ref": "#/components/schemas/Nope"})
                }),
            ),
            (
                "does not resolve",
                Box::new(|d| {
                    d["paths"]["/things"]["get"]["responses"]["400"]["content"]["application/json"]
                        ["schema"]["$ref"] = json!("#/components/schemas/Err")
                }),
            ),
            (
                "does not start with",
                Box::new(|d| d["components"]["schemas"]["Other"] = json!({})),
            ),
            (
                "does not start with",
                Box::new(|d| d["components"]["schemas"]["Error"] = json!({})),
            ),
            (
                "does not start with",
                Box::new(|d| d["paths"]["/things"]["get"]["operationId"] = json!("list")),
            ),
            (
                "not unique",
                Box::new(|d| d["paths"]["/things"]["get"]["operationId"] = json!("thing_get")),
            ),
            (
                "do not match the template",
                Box::new(|d| d["paths"]["/things/{thingId}"]["parameters"] = json!([])),
            ),
            (
                "must be",
                Box::new(|d| {
                    d["paths"]["/things"]["get"]["responses"]["400"]["content"]["application/json"]
                        ["schema"] = json!({"type": "object"})
                }),
            ),
            (
                "only paths and components",
                Box::new(|d| d["openapi"] = json!("3.1.0")),
            ),
            (
                "only components.schemas",
                Box::new(|d| d["components"]["responses"] = json!({})),
            ),
        ];
        for (want, change) in cases {
            let found = problems(change);
            assert!(found.iter().any(|p| p.contains(want)), "{want}: {found:?}");
        }
    }

    #[test]
    fn answers_are_checked_against_the_fragment() {
        let f = parse(&fragment(|_| {})).unwrap();
        let thing = json!({"id": 18446744073709551615_u64, "name": null});
        let ok = |m: &str, p: &str, r: Response| f.check_answer(m, p, &r).is_ok();
        assert!(ok("GET", "/things/7", answer(200, thing.clone(), &[])));
        assert!(ok("GET", "/things//7/", answer(200, thing.clone(), &[])));
        assert!(ok(
            "GET",
            "/things",
            answer(200, json!([thing]), &[("link", "<x>")])
        ));
        assert!(ok(
            "GET",
            "/things/7",
            answer(
                404,
                json!({"error": "thing_not_found", "message": "m"}),
                &[]
            )
        ));
        assert!(ok(
            "GET",
            "/things/7/x",
            answer(404, json!({"error": "not_found", "message": "m"}), &[])
        ));
        assert!(ok(
            "PUT",
            "/things/7",
            answer(
                405,
                json!({"error": "method_not_allowed", "message": "m"}),
                &[("allow", "GET, DELETE")]
            )
        ));
        // undeclared status, wrong body, undeclared Link, wrong allow, 200 on an undocumented path
        assert!(!ok(
            "GET",
            "/things/7",
            answer(409, json!({"error": "x", "message": "m"}), &[])
        ));
        assert!(!ok(
            "GET",
            "/things/7",
            answer(200, json!({"id": 0, "name": null}), &[])
        ));
        assert!(!ok(
            "GET",
            "/things/7",
            answer(200, json!({"id": 1, "name": "long"}), &[])
        ));
        assert!(!ok(
            "GET",
            "/things/7",
            answer(200, json!({"id": 1, "name": "a", "x": 1}), &[])
        ));
        assert!(!ok("GET", "/things/7", answer(200, json!({"id": 1}), &[])));
        assert!(!ok(
            "GET",
            "/things/7",
            answer(404, json!({"error": "x"}), &[])
        ));
        assert!(!ok(
            "GET",
            "/things/7",
            answer(200, thing.clone(), &[("link", "<x>")])
        ));
        assert!(!ok(
            "PUT",
            "/things/7",
            answer(
                405,
                json!({"error": "m", "message": "m"}),
                &[("allow", "GET")]
            )
        ));
        assert!(!ok("get", "/things/7", answer(200, thing.clone(), &[])));
        assert!(!ok("GET", "/things/7/x", answer(200, thing, &[])));
    }

    #[test]
    fn unknown_keywords_are_errors_not_ignored() {
        let f = parse(&fragment(|_| {})).unwrap();
        let mut errors = Vec::new();
        f.validate(&json!({"pattern": "^a$"}), &json!("b"), "", &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
