//! A hostile test guest (world `hostile`): overflows its stack, recurses
//! through the host's `stock` link to itself, answers oversized responses,
//! writes oversized names, asks `range` for everything at once, and (with
//! the `loop-subscriptions` feature) never returns from `subscriptions()`.
//! Routes under `/hostile`; what a host should do with each is in README.md.

wit_bindgen::generate!({ world: "hostile", path: "../../../wit" });

use exports::sktarbucks::platform::stock as stock_export;
use kit::Platform;
use kit::http::{
    ApiError, ApiResult, Response as KitResponse, echo_str, query_param, respond, segments,
};
use serde_json::json;
use sktarbucks::platform::types::{Request, Reservation, StockError};

pub const PREFIX: &str = "/hostile";

/// The topic `subscriptions()` declares (without `loop-subscriptions`).
pub const PING: &str = "hostile.ping";

/// Collection `fill` writes and `scan` pages through.
const BULK: &str = "bulk";
/// Most documents one `POST /hostile/fill` writes.
const MAX_FILL: u32 = 5000;
/// `fill` without `n`.
const DEFAULT_FILL: u32 = 2500;
/// `big-response` without `mb`.
const DEFAULT_MB: u32 = 64;
/// `huge-key` / `huge-collection` without `bytes`.
const DEFAULT_NAME_BYTES: u32 = 100_000;
/// Largest name `huge-key` / `huge-collection` builds (16 MiB).
const MAX_NAME_TEST_BYTES: u32 = 1 << 24;

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
    // Acknowledges everything.
    event: |_ev| Ok(()),
}

impl stock_export::Guest for Component {
    /// Calls the imported `stock.reserve` with the same arguments: linked to
    /// itself, every call goes one level deeper through the host until the
    /// host refuses (its depth limit); that error comes back up unchanged.
    fn reserve(order_id: String, cafe_id: u64, qty: u32) -> Result<Reservation, StockError> {
        sktarbucks::platform::stock::reserve(&order_id, cafe_id, qty)
    }

    fn release(_order_id: String) -> Result<bool, StockError> {
        Ok(false)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Component);

#[cfg(not(feature = "loop-subscriptions"))]
fn subscriptions() -> [&'static str; 1] {
    [PING]
}

/// Never returns: the host must give up on it within its deadline.
#[cfg(feature = "loop-subscriptions")]
fn subscriptions() -> [&'static str; 1] {
    spin_forever()
}

/// A busy loop (no sleeping, no host calls); `black_box` keeps the
/// optimizer from removing it.
#[cfg(feature = "loop-subscriptions")]
fn spin_forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn route(req: &Request) -> ApiResult {
    let method = req.method.as_str();
    let path = req.path.as_str();
    let Some(segs) = segments(path, PREFIX) else {
        return Err(ApiError::no_route(method, path));
    };
    let [name] = segs.as_slice() else {
        return Err(ApiError::no_route(method, path));
    };
    match (*name, method) {
        ("ok", "GET") => Ok(KitResponse::ok(&json!({"ok": true}))),
        ("stack-overflow", "GET") => stack_overflow(&req.query),
        ("recurse", "GET") => Ok(recurse()),
        ("big-response", "GET") => big_response(&req.query),
        ("huge-key", "GET") => {
            let n = number(&req.query, "bytes", DEFAULT_NAME_BYTES, MAX_NAME_TEST_BYTES)?;
            Host.put("hostile", &"k".repeat(n as usize), b"{}");
            Ok(KitResponse::ok(&json!({"accepted": true, "keyBytes": n})))
        }
        ("huge-collection", "GET") => {
            let n = number(&req.query, "bytes", DEFAULT_NAME_BYTES, MAX_NAME_TEST_BYTES)?;
            Host.put(&"c".repeat(n as usize), "k", b"{}");
            Ok(KitResponse::ok(
                &json!({"accepted": true, "collectionBytes": n}),
            ))
        }
        ("fill", "POST") => fill(&req.query),
        ("scan", "GET") => Ok(scan()),
        ("fill", _) => Err(ApiError::method_not_allowed(method, path, &["POST"])),
        (
            "ok" | "stack-overflow" | "recurse" | "big-response" | "huge-key" | "huge-collection"
            | "scan",
            _,
        ) => Err(ApiError::method_not_allowed(method, path, &["GET"])),
        _ => Err(ApiError::no_route(method, path)),
    }
}

/// Query parameter `name` as a whole number in `0..=max`, `default` when
/// absent or empty, else 400 `invalid_query`.
fn number(query: &str, name: &str, default: u32, max: u32) -> Result<u32, ApiError> {
    match query_param(query, name).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "{name} must be a whole number from 0 to {max}, got {}",
                        echo_str(&raw)
                    ),
                )
            }),
    }
}

/// `GET /hostile/stack-overflow[?frames=small]`: recurse until a stack
/// runs out (a trap). By default each frame keeps 1 KiB in linear memory,
/// so Rust's shadow stack (1 MiB, below the data) runs off its end first:
/// wasmtime reports an out-of-bounds memory access. With `frames=small` the
/// frames live in wasm locals only, so the engine's own call-stack limit
/// trips: "call stack exhausted".
fn stack_overflow(query: &str) -> ApiResult {
    let depth = match query_param(query, "frames").as_deref() {
        None | Some("" | "big") => deeper(std::hint::black_box(0)),
        Some("small") => deeper_small(std::hint::black_box(0)),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("frames must be big or small, got {}", echo_str(other)),
            ));
        }
    };
    // Unreachable in practice: the recursion never ends.
    Ok(KitResponse::ok(&json!({ "depth": depth })))
}

/// One frame of unbounded recursion. Each frame keeps a 1 KiB array alive
/// across the recursive call (through `black_box`, so it is really on the
/// stack) and uses the call's result afterwards, so the call is not in tail
/// position and the optimizer cannot turn the recursion into a loop.
#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: it must overflow the stack
fn deeper(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    let slot = (depth % 1024) as usize;
    if let Some(b) = frame.get_mut(slot) {
        *b = depth.to_le_bytes()[0];
    }
    let frame = std::hint::black_box(frame);
    let below = deeper(std::hint::black_box(depth.wrapping_add(1)));
    below.wrapping_add(u64::from(frame.get(slot).copied().unwrap_or(0)))
}

/// Unbounded recursion without memory frames: the result is combined with
/// this frame's argument after the call (not a tail call), and nothing is
/// taken by address, so each level costs only a wasm call frame.
#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: it must overflow the stack
fn deeper_small(depth: u64) -> u64 {
    let below = deeper_small(depth.wrapping_add(1));
    below.rotate_left(1) ^ depth
}

/// `GET /hostile/recurse`: call the imported `stock.reserve`; linked to
/// this component itself, its exported `reserve` calls the import again,
/// one level deeper each time. 200 with whatever comes back.
fn recurse() -> KitResponse {
    match sktarbucks::platform::stock::reserve("hostile-recurse", 1, 1) {
        Ok(r) => KitResponse::ok(&json!({
            "reserved": {"orderId": r.order_id, "cafeId": r.cafe_id, "qty": r.qty},
        })),
        Err(e) => {
            let (kind, message) = match e {
                StockError::NotFound(m) => ("not-found", m),
                StockError::SoldOut(n) => ("sold-out", n.to_string()),
                StockError::Invalid(m) => ("invalid", m),
                StockError::Unavailable(m) => ("unavailable", m),
            };
            KitResponse::ok(&json!({"stockError": kind, "message": message}))
        }
    }
}

/// `GET /hostile/big-response?mb=N`: 200 with exactly N MiB of `x`
/// (`application/octet-stream`), default 64.
fn big_response(query: &str) -> ApiResult {
    let mb = number(query, "mb", DEFAULT_MB, 4095)?;
    let bytes = (mb as usize).checked_mul(1 << 20).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            format!("{mb} MiB does not fit this guest's address space"),
        )
    })?;
    Ok(KitResponse {
        status: 200,
        headers: vec![(
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        )],
        body: vec![b'x'; bytes],
    })
}

/// `POST /hostile/fill?n=N`: N small documents in collection `bulk`, keys
/// `kit::keys::id(1..=N)` (zero-padded), in one unit of work.
fn fill(query: &str) -> ApiResult {
    let n = number(query, "n", DEFAULT_FILL, MAX_FILL)?;
    for i in 1..=u64::from(n) {
        Host.put(BULK, &kit::keys::id(i), format!("{{\"i\":{i}}}").as_bytes());
    }
    Ok(KitResponse::ok(&json!({ "written": n })))
}

/// `GET /hostile/scan`: page through `bulk` asking `range` for `u32::MAX`
/// entries each call, following `more`; report how the host capped the calls.
fn scan() -> KitResponse {
    let mut after: Option<String> = None;
    let (mut entries, mut calls, mut largest) = (0u64, 0u64, 0usize);
    loop {
        let page = Host.range(BULK, after.as_deref(), u32::MAX);
        calls += 1;
        let got = page.entries.len();
        entries += got as u64;
        largest = largest.max(got);
        after = page.entries.last().map(|(k, _)| k.clone());
        // An empty page cannot advance the cursor: stop rather than spin.
        if !page.more || got == 0 {
            break;
        }
    }
    KitResponse::ok(&json!({"entries": entries, "calls": calls, "largestCall": largest}))
}
