//! The HTTP edge against hostile clients, over raw sockets: limits answered
//! before any guest runs, each with a JSON body; HEAD and health methods;
//! oversized bodies answered 413 even to clients that write before reading.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::harness::{Harness, Kind};

/// Send raw bytes, read the whole answer (the request asks to close).
async fn exchange(h: &Harness, head: &str, body: &[u8]) -> (u16, String, String) {
    let addr = h.client.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    if !body.is_empty() {
        // A client that writes everything before it reads.
        let _ = stream.write_all(body).await;
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, headers.to_owned(), rest.to_owned())
}

fn json_error(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    v["error"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_answered_before_any_guest_runs_with_json_bodies() {
    let h = Harness::start(Kind::Sqlite).await;
    let cafe_before =
        h.rt.registry
            .get("cafe")
            .expect("cafe")
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed);

    let (s, _, body) = exchange(
        &h,
        "GET /cafes HTTP/1.1\r\nHost: t\r\nExpect: the-unexpected\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(
        (s, json_error(&body).as_str()),
        (417, "expectation_failed"),
        "{body}"
    );

    let (s, headers, body) = exchange(
        &h,
        "POST /cafes HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(s, 413, "no 100 Continue before the 413: {headers}");
    assert!(!headers.contains("100 Continue"));
    assert_eq!(json_error(&body), "payload_too_large");

    let long = format!("/cafes/{}", "1".repeat(9000));
    let (s, _, body) = exchange(
        &h,
        &format!("GET {long} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(
        (s, json_error(&body).as_str()),
        (414, "uri_too_long"),
        "{body}"
    );

    let many: String = (0..40)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    let (s, _, body) = exchange(
        &h,
        &format!("GET /cafes HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(
        (s, json_error(&body).as_str()),
        (431, "headers_too_large"),
        "{body}"
    );

    let cafe_after =
        h.rt.registry
            .get("cafe")
            .expect("cafe")
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(cafe_before, cafe_after, "no guest ran for any of them");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn head_works_where_get_does_and_health_refuses_other_methods() {
    let h = Harness::start(Kind::Sqlite).await;
    for path in ["/cafes", "/health/live", "/health/ready"] {
        let (s, headers, body) = exchange(
            &h,
            &format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            b"",
        )
        .await;
        assert_eq!(s, 200, "HEAD {path}: {headers}");
        assert!(body.is_empty(), "HEAD {path} has no body");
    }
    for method in ["DELETE", "PATCH", "TRACE", "FOO", "POST"] {
        let (s, headers, body) = exchange(
            &h,
            &format!("{method} /health/live HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            b"",
        )
        .await;
        assert_eq!(
            (s, json_error(&body).as_str()),
            (405, "method_not_allowed"),
            "{method}: {body}"
        );
        assert!(
            headers.to_ascii_lowercase().contains("allow: get, head"),
            "{headers}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_writing_a_big_body_before_reading_still_gets_the_413() {
    let h = Harness::start(Kind::Sqlite).await;
    let body = vec![b'x'; 8 * 1024 * 1024];
    let (s, _, answer) = exchange(
        &h,
        &format!(
            "POST /cafes HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        &body,
    )
    .await;
    assert_eq!(
        (s, json_error(&answer).as_str()),
        (413, "payload_too_large"),
        "{answer}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_address_cannot_take_every_connection() {
    let h = Harness::start_with(Kind::Sqlite, |c| c.max_connections_per_client = 4).await;
    let addr = h.client.base.trim_start_matches("http://").to_owned();
    // Four idle connections: this address's whole share.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // The premise: they are open (each answers a request).
    let mut first = held.remove(0);
    first
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    held.insert(0, first);
    let (s, _, body) = exchange(
        &h,
        "GET /cafes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(
        (s, json_error(&body).as_str()),
        (503, "too_many_connections"),
        "{body}"
    );
    drop(held.pop());
    let mut ok = false;
    for _ in 0..50 {
        let (s, _, _) = exchange(
            &h,
            "GET /cafes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            b"",
        )
        .await;
        if s == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed slot serves again");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_a_request_id() {
    let h = Harness::start(Kind::Sqlite).await;
    let (_, headers, _) = exchange(
        &h,
        "GET /cafes HTTP/1.1\r\nHost: t\r\nX-Request-Id: order-flow-42\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("x-request-id: order-flow-42"),
        "{headers}"
    );
    for given in ["", "X-Request-Id: has spaces and ~\r\n"] {
        let (_, headers, _) = exchange(
            &h,
            &format!("GET /nowhere HTTP/1.1\r\nHost: t\r\n{given}Connection: close\r\n\r\n"),
            b"",
        )
        .await;
        let id = headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id: ")
                    .map(str::to_owned)
            })
            .expect("an id was assigned");
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    h.stop().await;
}

/// A keep-alive connection is reused while requests come, and closed by the
/// server once it sits idle for the header timeout.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = Harness::start_with(Kind::Sqlite, |c| c.header_timeout_ms = 1_500).await;
    let addr = h.client.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let mut buf = vec![0u8; 4096];
    // Premise: the connection is kept alive across requests, including one
    // that comes after most of the timeout has passed.
    for pause in [0, 1_000] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write on the kept-alive connection");
        let n = stream.read(&mut buf).await.expect("read");
        let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    let idle = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
        .await
        .expect("the server closes an idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000),
        "closed only after being idle: {waited:?}"
    );
    h.stop().await;
}

/// Many clients each holding an almost complete 1 MiB body: what the host
/// buffers stays within `body_budget_bytes` (the rest get a JSON 503), and
/// the memory is given back once they are gone.
#[tokio::test(flavor = "multi_thread")]
async fn buffered_bodies_stay_within_the_budget_and_memory_returns() {
    use crate::support::binary::Host;
    use crate::support::rss_kib;
    const MIB: usize = 1024 * 1024;
    const BUDGET_MIB: u64 = 64;
    const CLIENTS: usize = 160;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = {
        let mut config = crate::support::test_config(dir.path());
        config.body_budget_bytes = 64 * MIB;
        crate::support::manifest_text(&config)
    };
    let host = Host::start(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    let addr = host.client.base.trim_start_matches("http://").to_owned();
    // Warm up the request path so its one-time allocations are in the baseline.
    for _ in 0..20 {
        let (s, _) = host.client.get("/cafes").await;
        assert_eq!(s, 200);
    }
    let baseline = rss_kib(host.pid()) / 1024;

    let body = vec![b'x'; MIB - 1];
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let head = format!(
            "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {MIB}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        held.push(s);
    }
    // Write every body but its last byte, concurrently (a refused
    // connection stops reading, so its writer may stall: bounded).
    let writers: Vec<_> = held
        .into_iter()
        .map(|mut s| {
            let body = body.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&body)).await;
                s
            })
        })
        .collect();
    let mut held = Vec::new();
    for w in writers {
        held.push(w.await.expect("writer"));
    }
    // RSS while every body is held (sampled until it stops rising).
    let mut peak = 0;
    let mut flat = 0;
    while flat < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(host.pid()) / 1024;
        if now > peak {
            peak = now;
            flat = 0;
        } else {
            flat += 1;
        }
    }
    // Which connections were refused: they already have their 503.
    let mut refused = 0;
    for s in &mut held {
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await
            && n > 0
        {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
            assert!(text.contains("\"busy\""), "{text}");
            refused += 1;
        }
    }
    eprintln!(
        "RSS baseline {baseline} MiB, peak {peak} MiB with {CLIENTS} bodies of 1 MiB held ({refused} refused, budget {BUDGET_MIB} MiB)"
    );
    // Premise: the budget was the limit hit, and bodies really were buffered.
    assert!(refused > 0, "some bodies found the budget full");
    assert!(
        peak >= baseline + BUDGET_MIB / 2,
        "bodies were buffered: baseline {baseline} MiB, peak {peak} MiB"
    );
    assert!(
        peak <= baseline + BUDGET_MIB + 48,
        "buffering stays within the budget: baseline {baseline} MiB, peak {peak} MiB"
    );
    drop(held);
    let after = eventually_rss_below(&host, baseline + 24).await;
    eprintln!("RSS after the clients left: {after} MiB (baseline {baseline} MiB)");
}

/// Wait (up to 20 s) for the host's RSS to fall to `limit_mib`.
async fn eventually_rss_below(host: &crate::support::binary::Host, limit_mib: u64) -> u64 {
    let started = std::time::Instant::now();
    loop {
        let now = crate::support::rss_kib(host.pid()) / 1024;
        if now <= limit_mib {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "memory returns after the load: RSS {now} MiB, want at most {limit_mib} MiB"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
