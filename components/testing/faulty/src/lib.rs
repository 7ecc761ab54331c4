//! A deliberately hostile guest (world `platform`) for host tests: writes
//! then traps or fails, loops forever, eats memory, busy-waits, and poisons
//! or traps on events. Routes under `/faulty`; see README.md.

wit_bindgen::generate!({ world: "platform", path: "../../../wit" });

use std::time::{Duration, Instant};

use kit::http::{ApiError, ApiResult, Response as KitResponse, query_param, respond, segments};
use kit::{EventError, Platform};
use sktarbucks::platform::types::{Event, Request};

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The exported component. `export!` is wasm-only: natively the WIT export
/// symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

kit::export_handlers! {
    Component,
    http: |req| respond(route(&req)),
    subscriptions: subscriptions(),
    event: |ev| on_event(&ev),
}

/// The topics handled; the `trap-subscriptions` build traps here instead.
#[allow(clippy::panic)]
fn subscriptions() -> [&'static str; 2] {
    if cfg!(feature = "trap-subscriptions") {
        panic!("faulty: built to trap in subscriptions()");
    }
    ["faulty.happened", "faulty.poison"]
}

#[allow(clippy::panic)]
fn on_event(ev: &Event) -> Result<(), EventError> {
    match ev.payload.as_slice() {
        b"poison" => Err(EventError::Invalid("poison pill".to_owned())),
        b"trap" => panic!("faulty: trap requested by event {}", ev.id),
        payload => {
            if let Some(ms) = payload
                .strip_prefix(b"sleep:")
                .and_then(|ms| std::str::from_utf8(ms).ok())
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                busy_wait(Duration::from_millis(ms));
            }
            Host.put("seen", &ev.id, payload);
            // A read-modify-write counter per event key: unlike `seen`,
            // applying one event twice shows up as 2 (tests count effects).
            let count = Host
                .get("counts", &ev.key)
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(0);
            Host.put("counts", &ev.key, (count + 1).to_string().as_bytes());
            Ok(())
        }
    }
}

#[allow(clippy::panic)]
fn route(req: &Request) -> ApiResult {
    let method = req.method.as_str();
    let path = req.path.as_str();
    let Some(segs) = segments(path, "/faulty") else {
        return Err(ApiError::no_route(method, path));
    };
    let [name] = segs.as_slice() else {
        return Err(ApiError::no_route(method, path));
    };
    match (*name, method) {
        ("write", "POST") => {
            write(req);
            Ok(KitResponse::ok(&serde_json::json!({"ok": true})))
        }
        ("write-then-trap", "POST") => {
            write(req);
            panic!("faulty: trap requested after writing");
        }
        ("write-then-500", "POST") => {
            write(req);
            Err(ApiError::internal(
                "faulty: failure requested after writing",
            ))
        }
        ("loop", "GET") => spin_forever(),
        ("bomb", "GET") => eat_memory(),
        ("alloc", "GET") => alloc(&req.query),
        ("sleep", "GET") => sleep(&req.query),
        ("things", "GET") => Ok(dump("things")),
        ("seen", "GET") => Ok(dump("seen")),
        ("counts", "GET") => Ok(counts()),
        ("flood", "POST") => flood(&req.query),
        ("forge", "POST") => forge(req),
        ("write" | "write-then-trap" | "write-then-500" | "flood" | "forge", _) => {
            Err(ApiError::method_not_allowed(method, path, &["POST"]))
        }
        ("loop" | "bomb" | "alloc" | "sleep" | "things" | "seen" | "counts", _) => {
            Err(ApiError::method_not_allowed(method, path, &["GET"]))
        }
        _ => Err(ApiError::no_route(method, path)),
    }
}

/// `put("things", key, body)` and `publish("faulty.happened", key, body)`.
fn write(req: &Request) {
    let key = query_param(&req.query, "key")
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "k".to_owned());
    Host.put("things", &key, &req.body);
    Host.publish("faulty.happened", &key, &req.body);
}

/// Never returns; `black_box` keeps the optimizer from removing the loop.
fn spin_forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocate and touch 1 MiB blocks, keeping them all, until allocation fails
/// (which aborts: a trap).
fn eat_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for b in block.iter_mut().step_by(4096) {
            *b = 1;
        }
        hoard.push(std::hint::black_box(block));
    }
}

/// Allocate `mib` MiB in one block, touch every page and answer 200
/// `{"allocatedMib":N}`; over the component's memory limit the allocation
/// fails (which aborts: a trap).
fn alloc(query: &str) -> ApiResult {
    let raw = query_param(query, "mib").unwrap_or_default();
    let mib: usize = raw.parse().ok().filter(|mib| *mib < 4096).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "mib must be a whole number below 4096, got {}",
                kit::http::echo_str(&raw)
            ),
        )
    })?;
    let mut block = vec![0u8; mib << 20];
    for b in block.iter_mut().step_by(4096) {
        *b = 1;
    }
    let held = std::hint::black_box(block).len() >> 20;
    Ok(KitResponse::ok(
        &serde_json::json!({ "allocatedMib": held }),
    ))
}

/// Busy-wait `ms` milliseconds (no host sleep is imported).
fn sleep(query: &str) -> ApiResult {
    let raw = query_param(query, "ms").unwrap_or_default();
    let ms: u64 = raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "ms must be a whole number of milliseconds, got {}",
                kit::http::echo_str(&raw)
            ),
        )
    })?;
    busy_wait(Duration::from_millis(ms));
    Ok(KitResponse::ok(&serde_json::json!({"sleptMs": ms})))
}

/// Most documents `dump` and `counts` read (in pages of [`DUMP_PAGE`]): the
/// test collections stay far smaller, and the guest's memory stays bounded.
const DUMP_MAX: usize = 10_000;
/// Documents asked for per `range` call.
const DUMP_PAGE: u32 = 500;

/// The first [`DUMP_MAX`] documents of `collection` in key order, paging
/// through `range` (following `more`, not trusting `limit`).
fn scan(collection: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.clone());
        let want = DUMP_PAGE.min(u32::try_from(DUMP_MAX - out.len()).unwrap_or(DUMP_PAGE));
        let page = Host.range(collection, after.as_deref(), want);
        let got = page.entries.len();
        out.extend(page.entries);
        if !page.more || got == 0 || out.len() >= DUMP_MAX {
            return out;
        }
    }
}

/// A collection as `[{"key":..,"value":<utf-8, lossy>}]` in key order (at
/// most [`DUMP_MAX`] entries).
fn dump(collection: &str) -> KitResponse {
    let items: Vec<serde_json::Value> = scan(collection)
        .into_iter()
        .map(|(key, value)| {
            serde_json::json!({ "key": key, "value": String::from_utf8_lossy(&value) })
        })
        .collect();
    KitResponse::ok(&items)
}

#[cfg(target_arch = "wasm32")]
export!(Component);

fn busy_wait(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// `{"<event key>": <times applied>}` for every handled event key (at most
/// [`DUMP_MAX`] keys).
fn counts() -> KitResponse {
    let map: serde_json::Map<String, serde_json::Value> = scan("counts")
        .into_iter()
        .map(|(key, raw)| {
            let n = String::from_utf8_lossy(&raw).parse::<u64>().unwrap_or(0);
            (key, serde_json::json!(n))
        })
        .collect();
    KitResponse::ok(&serde_json::Value::Object(map))
}

/// Buffer `n` writes of 1 MiB each in one unit of work (the host caps the
/// bytes a unit may buffer, whatever the guest's own memory limit).
fn flood(query: &str) -> ApiResult {
    let n: usize = query_param(query, "n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let block = vec![b'f'; 1 << 20];
    for i in 0..n {
        Host.put("things", &format!("flood-{i}"), &block);
    }
    Ok(KitResponse::ok(&serde_json::json!({"written": n})))
}

/// Publish the body on `?topic=` with `?key=`: another context's topic
/// (`order.canceled`) must be refused unless the manifest allows it.
fn forge(req: &Request) -> ApiResult {
    let topic = query_param(&req.query, "topic").unwrap_or_default();
    let key = query_param(&req.query, "key").unwrap_or_else(|| "1".to_owned());
    Host.publish(&topic, &key, &req.body);
    Ok(KitResponse::ok(&serde_json::json!({"published": topic})))
}
