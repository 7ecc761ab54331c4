//! The bare reference server of `cargo xtask bench`: hyper 1 + tokio +
//! rusqlite, the crates the host uses, and no wasm. It does by hand what the
//! host's components do, so the bench's ratio is the price of the platform
//! (a fresh wasm instance per request, the unit of work, routing, logs):
//!
//! - `GET /cafes/{id}`: read cafe's stored document from the host's own
//!   SQLite file (`--read-db`, table `docs`, the padded key cafe uses) with
//!   its stock counter (`pcnt`) in one statement, drop the internal `held`
//!   field like cafe does, answer the same JSON as cafe. Reads run inline
//!   on a small pool of reader connections, like the host's backend.
//! - `POST /orders` (`{"custNm","cafeId","qty"?}`): one IMMEDIATE
//!   transaction on its own database (`--write-db`): check and decrement the
//!   item's stock, insert the order and an outbox row; 201 with the order,
//!   404 unknown item, 409 sold out. One writer connection on a blocking
//!   thread, the same `synchronous` setting as the host under test.
//! - `GET /bare/stats`: orders stored and units sold per item, for the
//!   bench's oversell check.
//!
//! Prints `bare listening on http://<addr>` once bound (port 0 allowed).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The host's `sktarbucks.db`, read by `GET /cafes/{id}`.
    #[arg(long)]
    read_db: Option<PathBuf>,
    /// Its own database for `POST /orders` (created, and seeded with items).
    #[arg(long)]
    write_db: Option<PathBuf>,
    /// `synchronous` of the write database: `normal` or `full`.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Items 1..=N seeded into the write database.
    #[arg(long, default_value_t = 100)]
    items: u64,
    /// Stock of each seeded item.
    #[arg(long, default_value_t = 1_000_000)]
    pcnt: i64,
}

/// Same as the host's reader pool size.
const READERS: usize = 4;

struct Bare {
    readers: Vec<Mutex<Connection>>,
    /// The single writer: SQLite has one anyway; only used on blocking threads.
    writer: Option<Arc<Mutex<Connection>>>,
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opened the way the host opens its database (WAL, busy timeout).
fn open(path: &std::path::Path, synchronous: &str) -> Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("failed to open sqlite database {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, pcnt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT, cust_nm TEXT NOT NULL,
    cafe_id INTEGER NOT NULL, qty INTEGER NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL,
    payload BLOB NOT NULL, created_ms INTEGER NOT NULL
);
";

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, kind: &str, message: &str) -> Reply {
    json(
        status,
        serde_json::json!({"error": kind, "message": message})
            .to_string()
            .into_bytes(),
    )
}

impl Bare {
    fn reader(&self) -> Option<MutexGuard<'_, Connection>> {
        for conn in &self.readers {
            if let Ok(guard) = conn.try_lock() {
                return Some(guard);
            }
        }
        self.readers.first().map(lock)
    }

    fn get_cafe(&self, id: &str) -> Reply {
        let Ok(id) = id.parse::<u64>() else {
            return error(StatusCode::BAD_REQUEST, "invalid_id", "not an id");
        };
        let Some(conn) = self.reader() else {
            return error(StatusCode::NOT_FOUND, "not_found", "no --read-db");
        };
        // The item document and its stock counter, as cafe's `load_cafe`
        // reads them (documents from before the counters carry `pcnt`).
        type Row = (Option<Vec<u8>>, Option<Vec<u8>>);
        let raw: rusqlite::Result<Option<Row>> = conn
            .prepare_cached(
                "SELECT c.value, s.value FROM docs c
                 LEFT JOIN docs s ON s.ns = c.ns AND s.coll = 'stock' AND s.key = c.key
                 WHERE c.ns = 'cafe' AND c.coll = 'cafes' AND c.key = ?1",
            )
            .and_then(|mut s| {
                s.query_row([format!("{id:020}")], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            });
        drop(conn);
        match raw {
            Ok(Some((Some(raw), stock))) => match serde_json::from_slice::<serde_json::Value>(&raw)
            {
                Ok(mut doc) => {
                    if let Some(obj) = doc.as_object_mut() {
                        obj.remove("held");
                        let counter = stock
                            .and_then(|s| String::from_utf8(s).ok())
                            .and_then(|s| s.parse::<u64>().ok());
                        if !obj.contains_key("pcnt")
                            && let Some(pcnt) = counter
                        {
                            obj.insert("pcnt".to_owned(), pcnt.into());
                        }
                    }
                    json(StatusCode::OK, serde_json::to_vec(&doc).unwrap_or_default())
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", &e.to_string()),
            },
            Ok(_) => error(StatusCode::NOT_FOUND, "cafe_not_found", "no such cafe"),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "backend", &e.to_string()),
        }
    }

    async fn place(&self, body: Bytes) -> Reply {
        let Some(writer) = &self.writer else {
            return error(StatusCode::NOT_FOUND, "not_found", "no --write-db");
        };
        let Ok(obj) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return error(StatusCode::BAD_REQUEST, "invalid_json", "not JSON");
        };
        let cust = obj["custNm"].as_str().unwrap_or_default().to_owned();
        let cafe_id = obj["cafeId"].as_u64();
        let qty = obj["qty"].as_u64().unwrap_or(1);
        let (Some(cafe_id), false) = (cafe_id, cust.is_empty()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "custNm and cafeId needed",
            );
        };
        let writer = Arc::clone(writer);
        let done = tokio::task::spawn_blocking(move || -> Result<Reply> {
            let mut conn = lock(&writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pcnt: Option<i64> = tx
                .prepare_cached("SELECT pcnt FROM items WHERE id = ?1")?
                .query_row([cafe_id], |r| r.get(0))
                .optional()?;
            let Some(pcnt) = pcnt else {
                return Ok(error(StatusCode::NOT_FOUND, "cafe_not_found", "no such cafe"));
            };
            let qty_i = i64::try_from(qty).unwrap_or(i64::MAX);
            if pcnt < qty_i {
                return Ok(error(StatusCode::CONFLICT, "sold_out", "sold out"));
            }
            tx.prepare_cached("UPDATE items SET pcnt = pcnt - ?2 WHERE id = ?1")?
                .execute(params![cafe_id, qty_i])?;
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO orders (cust_nm, cafe_id, qty, status) VALUES (?1, ?2, ?3, 'REQUESTED') RETURNING id",
                )?
                .query_row(params![cust, cafe_id, qty_i], |r| r.get(0))?;
            let order = serde_json::json!({
                "id": id, "custNm": cust, "cafeId": cafe_id, "qty": qty,
                "status": "REQUESTED", "version": 1
            });
            let payload = serde_json::to_vec(&order)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            tx.prepare_cached(
                "INSERT INTO outbox (topic, key, payload, created_ms) VALUES ('order.requested', ?1, ?2, ?3)",
            )?
            .execute(params![id.to_string(), payload, now])?;
            tx.commit().context("commit failed")?;
            Ok(json(StatusCode::CREATED, payload))
        })
        .await;
        match done {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend",
                &format!("{e:#}"),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "panic", &e.to_string()),
        }
    }

    async fn stats(&self) -> Reply {
        let Some(writer) = &self.writer else {
            return error(StatusCode::NOT_FOUND, "not_found", "no --write-db");
        };
        let writer = Arc::clone(writer);
        let done = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
            let conn = lock(&writer);
            let mut stmt = conn.prepare(
                "SELECT i.id, i.pcnt, count(o.id), coalesce(sum(o.qty), 0)
                 FROM items i LEFT JOIN orders o ON o.cafe_id = i.id GROUP BY i.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(serde_json::json!({
                    "cafeId": r.get::<_, i64>(0)?, "pcnt": r.get::<_, i64>(1)?,
                    "orders": r.get::<_, i64>(2)?, "sold": r.get::<_, i64>(3)?
                }))
            })?;
            Ok(serde_json::Value::Array(
                rows.collect::<rusqlite::Result<Vec<_>>>()?,
            ))
        })
        .await;
        match done {
            Ok(Ok(v)) => json(StatusCode::OK, v.to_string().into_bytes()),
            Ok(Err(e)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend",
                &format!("{e:#}"),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "panic", &e.to_string()),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/bare/stats") => self.stats().await,
            (Method::POST, "/orders") => match req.into_body().collect().await {
                Ok(body) => self.place(body.to_bytes()).await,
                Err(e) => error(StatusCode::BAD_REQUEST, "body", &e.to_string()),
            },
            (Method::GET, p) => match p.strip_prefix("/cafes/") {
                Some(id) => self.get_cafe(id),
                None => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
            },
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let sync = match args.synchronous.as_str() {
        "normal" => "NORMAL",
        "full" => "FULL",
        other => anyhow::bail!("--synchronous must be normal or full, not {other:?}"),
    };
    let readers = match &args.read_db {
        Some(path) => (0..READERS)
            .map(|_| open(path, sync).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let writer = match &args.write_db {
        Some(path) => {
            let conn = open(path, sync)?;
            conn.execute_batch(SCHEMA)
                .context("failed to create the bare schema")?;
            {
                let mut seed = conn.prepare(
                    "INSERT INTO items (id, pcnt) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
                )?;
                for id in 1..=args.items {
                    seed.execute(params![id, args.pcnt])?;
                }
            }
            Some(Arc::new(Mutex::new(conn)))
        }
        None => None,
    };
    let bare = Arc::new(Bare { readers, writer });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to bind {}", args.listen))?;
    println!("bare listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("bare: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bare = Arc::clone(&bare);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let bare = Arc::clone(&bare);
                async move { Ok::<_, Infallible>(bare.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
