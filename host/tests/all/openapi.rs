//! `GET /openapi.json`: assembled from the live components' own fragments,
//! it follows a hot swap, and Schemathesis (from PyPI) fuzzes the running
//! binary against it: 0 server errors, 0 schema violations.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::binary::{ADMIN_TOKEN, Host};
use crate::support::{eventually, manifest, wasm};

/// Every `$ref` string anywhere in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref"
                    && let Some(r) = v.as_str()
                {
                    out.push(r.to_owned());
                }
                refs(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn paths(doc: &Value) -> Vec<String> {
    doc["paths"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

async fn admin_put(admin: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .put(format!("{admin}/admin/components/{name}"))
        .bearer_auth(ADMIN_TOKEN)
        .body(bytes)
        .send()
        .await
        .expect("admin request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn admin_rollback(admin: &str, name: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{admin}/admin/components/{name}/rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_assembled_from_the_components_and_follows_a_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Host::start_admin(
        dir.path(),
        &manifest(dir.path()),
        &["--listen", "127.0.0.1:0"],
    );
    let c = &host.client;
    let (s, doc) = c.get("/openapi.json").await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    let all = paths(&doc);
    for prefix in [
        "/cafes",
        "/orders",
        "/productions",
        "/myPages",
        "/health/ready",
    ] {
        assert!(
            all.iter().any(|p| p.starts_with(prefix)),
            "{prefix} is described: {all:?}"
        );
    }
    assert!(
        !all.iter()
            .any(|p| p.starts_with("/faulty") || p.starts_with("/hostile")),
        "test guests describe nothing: {all:?}"
    );
    // Every reference resolves inside the document; operation ids are unique.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in &found {
        assert!(
            doc.pointer(r.trim_start_matches('#')).is_some(),
            "dangling {r}"
        );
    }
    let mut ids = HashSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            }
        }
    }
    let (s, body) = c.raw("DELETE", "/openapi.json", None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // Swap production for a version that describes nothing (the faulty
    // guest also serves HTTP and consumes events): its paths leave the
    // document; a rollback brings them back.
    let admin = host.admin.clone().expect("admin listener");
    let faulty = std::fs::read(wasm("faulty")).expect("faulty bytes");
    let (s, b) = admin_put(&admin, "production", faulty).await;
    assert_eq!(s, 200, "{b}");
    eventually(
        "production's paths gone",
        Duration::from_secs(10),
        || async {
            let (_, doc) = c.get("/openapi.json").await;
            (!paths(&doc).iter().any(|p| p.starts_with("/productions"))).then_some(())
        },
    )
    .await;
    assert_eq!(admin_rollback(&admin, "production").await, 200);
    eventually(
        "production's paths back",
        Duration::from_secs(10),
        || async {
            let (_, doc) = c.get("/openapi.json").await;
            paths(&doc)
                .iter()
                .any(|p| p.starts_with("/productions"))
                .then_some(())
        },
    )
    .await;
}

/// Whether the `schemathesis` CLI is installed (`cargo xtask test`
/// installs it from PyPI).
fn schemathesis() -> Option<&'static str> {
    let ok = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some("schemathesis")
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(st) = schemathesis() else {
        panic!(
            "schemathesis is not installed: run `cargo xtask test` (it installs it), or `python3 -m pip install schemathesis`"
        );
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Host::start(
        dir.path(),
        &manifest(dir.path()),
        &["--listen", "127.0.0.1:0"],
    );
    // Some data, so reads of existing ids and list pages are exercised too.
    let c = &host.client;
    let (s, b) = c
        .raw(
            "POST",
            "/cafes",
            Some(r#"{"cafeId":1,"cafeNm":"Coldbrew","chkDate":"20210713","pcnt":1000}"#),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = c
        .raw(
            "POST",
            "/orders",
            Some(r#"{"custNm":"Hwang","cafeId":1,"qty":1}"#),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let url = format!("{}/openapi.json", c.base);
    let report = dir.path().join("schemathesis");
    let base = c.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(st)
            .args([
                "run",
                &url,
                "--url",
                &base,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                "200",
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "2",
                "--seed",
                "1",
                "--exclude-path-regex",
                "^/(health|openapi)",
                "--report",
                "junit",
                "--report-dir",
            ])
            .arg(&report)
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("schemathesis task");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}):\n{text}\n--- host log ---\n{}",
        out.status.code(),
        host.log_text()
    );
    // Premise: it really ran operations (not an empty selection).
    assert!(
        text.contains("passed") || text.contains("PASSED"),
        "schemathesis tested operations:\n{text}"
    );
}
