//! The host's own OpenAPI document as a test oracle: every response a
//! binary-driven test receives on a documented operation is checked against
//! it (status documented, JSON body valid against the declared schema, with
//! the `jsonschema` crate). Routes of the test guests (`/faulty`,
//! `/hostile`) are not part of the public API and are not described.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// One fetched `/openapi.json` and the count of responses checked with it.
pub struct Contract {
    doc: Value,
    checked: AtomicUsize,
}

/// A path template split into segments; `None` matches any one segment.
fn segments(template: &str) -> Vec<Option<&str>> {
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then_some(s))
        .collect()
}

impl Contract {
    pub fn new(doc: Value) -> Self {
        assert_eq!(doc["openapi"], "3.1.0", "an OpenAPI 3.1 document: {doc}");
        Self {
            doc,
            checked: AtomicUsize::new(0),
        }
    }

    /// How many responses conformed so far (tests assert it moved).
    pub fn checked(&self) -> usize {
        self.checked.load(Ordering::Relaxed)
    }

    /// The operation for `method` on `path`: the template with the most
    /// literal segments wins (`/orders/{id}/cancel` over `/orders/{id}`).
    fn operation(&self, method: &str, path: &str) -> Option<(&str, &Value)> {
        let wanted: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .iter()
            .filter(|(template, _)| {
                let segs = segments(template);
                segs.len() == wanted.len()
                    && segs
                        .iter()
                        .zip(&wanted)
                        .all(|(s, w)| s.is_none_or(|lit| lit == *w))
            })
            .max_by_key(|(template, _)| segments(template).iter().flatten().count())
            .and_then(|(template, item)| {
                let op = item.get(method.to_ascii_lowercase())?;
                Some((template.as_str(), op))
            })
    }

    /// Panic unless `status` and `body` conform to the document for
    /// `method` on `path_and_query`. Undocumented paths (test guests) pass.
    pub fn check(&self, method: &str, path_and_query: &str, status: u16, body: &Value) {
        let path = path_and_query.split('?').next().unwrap_or("");
        let paths = &self.doc["paths"];
        let (template, op) = match self.operation(method, path) {
            Some(found) => found,
            None => {
                // A documented resource answering an undocumented method
                // (or an unknown sub-path) must refuse in the error shape.
                let first = path.split('/').find(|s| !s.is_empty());
                let documented_resource = first.is_some_and(|f| {
                    paths
                        .as_object()
                        .is_some_and(|p| p.keys().any(|t| segments(t).first() == Some(&Some(f))))
                });
                if documented_resource && method != "HEAD" {
                    assert!(
                        matches!(status, 404 | 405),
                        "{method} {path_and_query} is not in /openapi.json but answered {status}: {body}"
                    );
                    self.validate(
                        "#/components/schemas/Error",
                        body,
                        method,
                        path_and_query,
                        status,
                    );
                    self.checked.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        let responses = &op["responses"];
        let class = format!("{}XX", status / 100);
        let response = [status.to_string(), class, "default".to_owned()]
            .iter()
            .find_map(|k| responses.get(k))
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path_and_query} ({template}) answered {status}, which /openapi.json does not document: {body}"
                )
            });
        let response = self.deref(response);
        if method == "HEAD" {
            return;
        }
        if let Some(schema) = response.pointer("/content/application~1json/schema") {
            let pointer = schema_pointer(schema);
            match pointer {
                Some(p) => self.validate(&p, body, method, path_and_query, status),
                None => self.validate_inline(schema, body, method, path_and_query, status),
            }
        }
        self.checked.fetch_add(1, Ordering::Relaxed);
    }

    /// Follow a `$ref` to `#/components/responses/...` if there is one.
    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r} in /openapi.json")),
            None => v,
        }
    }

    fn validate(&self, pointer: &str, body: &Value, method: &str, path: &str, status: u16) {
        self.validate_inline(&json!({"$ref": pointer}), body, method, path, status);
    }

    /// Validate against `schema`, resolving `#/components/...` references
    /// in the whole document.
    fn validate_inline(&self, schema: &Value, body: &Value, method: &str, path: &str, status: u16) {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| {
            panic!("/openapi.json schema for {method} {path} does not compile: {e}")
        });
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} answered {status} with a body /openapi.json does not allow:\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
    }
}

/// The `$ref` of a schema that is only a reference.
fn schema_pointer(schema: &Value) -> Option<String> {
    let obj = schema.as_object()?;
    (obj.len() == 1)
        .then(|| obj.get("$ref")?.as_str().map(str::to_owned))
        .flatten()
}
