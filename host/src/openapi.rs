//! `GET /openapi.json`: the public API as one OpenAPI 3.1 document, assembled
//! from what each live component declares through its `api-description`
//! export, plus what the host itself serves and answers (health routes, the
//! error shape, refusals at the edge). Each version is asked once, so the
//! document follows hot swaps without a restart.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::registry::Loaded;
use crate::runtime::Runtime;

/// The assembled document for the versions live right now.
pub async fn document(rt: &Arc<Runtime>) -> Value {
    let mut paths = host_paths();
    let mut schemas = Map::new();
    schemas.insert("Error".into(), error_schema());
    schemas.insert("Health".into(), health_schema());
    let mut live = rt.registry.all();
    live.sort_by(|a, b| a.name.cmp(&b.name));
    for loaded in live.iter().filter(|l| !l.config.routes.is_empty()) {
        let fragment = loaded.api.get_or_init(|| fetch(rt, loaded)).await.clone();
        if let Some(fragment) = fragment {
            merge(loaded, &fragment, &mut paths, &mut schemas);
        }
    }
    for item in paths.values_mut() {
        add_host_responses(item);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sktarbucks",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The cafe, order, production and myPage APIs, as served by the live component versions. Every error body is an `Error`.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Ask `loaded` for its fragment; a component that fails to answer, or
/// answers something that is not a JSON object, is left out (and logged).
async fn fetch(rt: &Arc<Runtime>, loaded: &Arc<Loaded>) -> Option<Value> {
    match rt.api_fragment(loaded).await {
        Ok(None) => None,
        Ok(Some(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.is_object() => Some(v),
            Ok(_) | Err(_) => {
                tracing::warn!(component = %loaded.name, "its OpenAPI fragment is not a JSON object; left out of /openapi.json");
                None
            }
        },
        Err(e) => {
            tracing::warn!(component = %loaded.name, error = %format!("{e:#}"), "could not read its OpenAPI fragment");
            None
        }
    }
}

/// Whether `path` is served by a component routed at `routes`.
fn owned(routes: &[String], path: &str) -> bool {
    routes.iter().any(|r| {
        r == "/"
            || path == r
            || path
                .strip_prefix(r.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Add `fragment`'s paths (only those under `loaded`'s own routes: a
/// component cannot describe another's) and schemas (first come wins).
fn merge(
    loaded: &Loaded,
    fragment: &Value,
    paths: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
) {
    if let Some(declared) = fragment.get("paths").and_then(Value::as_object) {
        for (path, item) in declared {
            if !owned(&loaded.config.routes, path) {
                tracing::warn!(component = %loaded.name, path = %path, "its OpenAPI fragment describes a path outside its routes; left out");
                continue;
            }
            if paths.contains_key(path) {
                tracing::warn!(component = %loaded.name, path = %path, "path already described; left out");
                continue;
            }
            paths.insert(path.clone(), item.clone());
        }
    }
    if let Some(declared) = fragment
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for (name, schema) in declared {
            if schemas.contains_key(name) {
                tracing::warn!(component = %loaded.name, schema = %name, "schema name already taken; left out");
                continue;
            }
            schemas.insert(name.clone(), schema.clone());
        }
    }
}

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// The answers the host itself may give on any component route, declared on
/// every operation that does not declare them already.
fn add_host_responses(item: &mut Value) {
    let Some(item) = item.as_object_mut() else {
        return;
    };
    for (method, operation) in item.iter_mut() {
        if !METHODS.contains(&method.as_str()) {
            continue;
        }
        let has_body = operation.get("requestBody").is_some();
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let mut add = |status: &str, why: &str| {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| error_response(why));
        };
        add("414", "The request target is longer than 8 KiB.");
        add("431", "The request headers are larger than 32 KiB.");
        add(
            "502",
            "The component's answer was larger than `max_response_bytes`; nothing it wrote was kept.",
        );
        add(
            "503",
            "Refused before or instead of running the component: its concurrency limit or breaker, a unit of work that kept conflicting, a dependency that is unavailable, or the host draining. Retry later (`Retry-After`).",
        );
        add(
            "504",
            "The component did not answer within its deadline; nothing it wrote was kept.",
        );
        if has_body {
            add("408", "The request body did not arrive within 10 s.");
            add("413", "The request body is larger than `max_body_bytes`.");
        }
    }
}

/// An error response referencing the shared `Error` schema.
fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

/// The one error shape every host and component error uses.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "A stable, machine-readable kind (e.g. `not_found`, `invalid`, `sold_out`)."},
            "message": {"type": "string", "description": "What is wrong, for people."},
        },
    })
}

fn health_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    })
}

/// The routes the host serves itself.
fn host_paths() -> Map<String, Value> {
    let health = |summary: &str, id: &str, not_ready: bool| {
        let mut responses = json!({
            "200": {
                "description": "Up.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
            },
        });
        if not_ready && let Some(r) = responses.as_object_mut() {
            r.insert(
                "503".into(),
                json!({
                    "description": "Not ready (draining, or the state backend is unavailable).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                }),
            );
        }
        json!({"get": {"summary": summary, "operationId": id, "tags": ["host"], "responses": responses}})
    };
    let mut paths = Map::new();
    paths.insert(
        "/health/live".into(),
        health("The process is up.", "host_live", false),
    );
    paths.insert(
        "/health/ready".into(),
        health(
            "Ready to serve: backend reachable, components loaded; with breakers and event lag.",
            "host_ready",
            true,
        ),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {
            "summary": "This document, assembled from the live component versions.",
            "operationId": "host_openapi",
            "tags": ["host"],
            "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }}),
    );
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_owns_only_paths_under_its_routes() {
        let routes = vec!["/cafes".to_owned()];
        assert!(owned(&routes, "/cafes"));
        assert!(owned(&routes, "/cafes/{cafeId}"));
        assert!(!owned(&routes, "/cafesx"));
        assert!(!owned(&routes, "/orders"));
    }

    #[test]
    fn host_responses_fill_in_without_overriding() {
        let mut item =
            json!({"post": {"requestBody": {}, "responses": {"503": {"description": "mine"}}}});
        add_host_responses(&mut item);
        assert_eq!(item["post"]["responses"]["503"]["description"], "mine");
        assert!(item["post"]["responses"]["413"].is_object());
        let mut get = json!({"get": {"responses": {}}});
        add_host_responses(&mut get);
        assert!(get["get"]["responses"].get("413").is_none());
    }
}
