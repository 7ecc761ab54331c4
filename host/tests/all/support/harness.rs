//! An in-process host: the real runtime and backend, served over real HTTP
//! on an ephemeral port, with dispatchers running or drained by hand.

use std::sync::Arc;

use sktarbucks::backend::sqlite::SqliteBackend;
use sktarbucks::backend::{SharedBackend, Subscription};
use sktarbucks::config::Config;
use sktarbucks::events::dispatcher;
use sktarbucks::runtime::Runtime;
use sktarbucks::uow::{Changes, NewEvent};
use tempfile::TempDir;
use tokio::sync::oneshot;

use sktarbucks::backend::redis::RedisBackend;

use super::redis::RedisServer;
use super::{Client, manifest};

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Which backend a behavioural test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Redis,
}

pub struct Harness {
    pub rt: Arc<Runtime>,
    pub backend: SharedBackend,
    pub dir: TempDir,
    pub client: Client,
    pub kind: Kind,
    /// Redis key prefix of this test (unique, so tests can share a server).
    pub prefix: String,
    pub redis: Option<RedisServer>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// Host with every component; events are delivered only by `drain`.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, "").await
    }

    pub async fn start_with(kind: Kind, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            Config::parse(&manifest(dir.path(), extra), dir.path()).expect("test manifest parses");
        let prefix = format!("t{:08x}", rand_u32());
        let mut redis = None;
        let backend: SharedBackend = match kind {
            Kind::Sqlite => Arc::new(
                SqliteBackend::open(&config.data, config.sqlite.synchronous).expect("sqlite opens"),
            ),
            Kind::Redis => {
                let server = RedisServer::start();
                let claim_idle = std::time::Duration::from_millis(config.events.claim_idle_ms);
                let retain = std::time::Duration::from_millis(config.events.retain_ms);
                let backend = RedisBackend::connect(&server.url, &prefix, claim_idle, retain)
                    .await
                    .expect("redis connects");
                redis = Some(server);
                Arc::new(backend)
            }
        };
        let rt = {
            let backend = Arc::clone(&backend);
            tokio::task::spawn_blocking(move || Runtime::start(config, backend))
                .await
                .expect("start task")
                .expect("runtime starts")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&rt);
        let server = tokio::spawn(async move {
            sktarbucks::http::serve(listener, served, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            rt,
            backend,
            dir,
            client: Client::new(format!("http://{addr}")),
            kind,
            prefix,
            redis,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// The subscription of `component` as the host would make it.
    pub async fn subscription(&self, component: &str) -> Subscription {
        let loaded = self.rt.registry.get(component).expect("component loaded");
        let topics = self.rt.subscriptions(&loaded).await.expect("subscriptions");
        let sub = Subscription {
            component: component.to_owned(),
            topics,
        };
        self.backend.subscribe(&sub).await.expect("subscribe");
        sub
    }

    /// Deliver everything pending to every subscriber until nothing is left.
    pub async fn drain(&self) -> usize {
        let mut total = 0;
        loop {
            let mut round = 0;
            for name in ["cafe", "order", "production", "mypage", "faulty"] {
                let sub = self.subscription(name).await;
                round += dispatcher::drain(&self.rt, &sub).await.expect("drain");
            }
            total += round;
            if round == 0 {
                return total;
            }
        }
    }

    /// Deliver pending events to one component only.
    pub async fn drain_one(&self, component: &str) -> usize {
        let sub = self.subscription(component).await;
        dispatcher::drain(&self.rt, &sub).await.expect("drain")
    }

    /// Append an event to the log as if `source` had published it.
    pub async fn inject(&self, source: &str, topic: &str, key: &str, payload: serde_json::Value) {
        let changes = Changes {
            events: vec![NewEvent {
                topic: topic.to_owned(),
                key: key.to_owned(),
                payload: payload.to_string().into_bytes(),
                source: source.to_owned(),
            }],
            ..Changes::default()
        };
        self.backend.commit(changes).await.expect("inject commits");
    }

    /// (topic, payload) of every logged event on `topic`, oldest first.
    pub async fn events_on(&self, topic: &str) -> Vec<serde_json::Value> {
        let parse = |bytes: &[u8]| serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
        match self.kind {
            Kind::Sqlite => {
                let conn = rusqlite::Connection::open(self.dir.path().join("sktarbucks.db"))
                    .expect("open db");
                let mut stmt = conn
                    .prepare("SELECT payload FROM events WHERE topic = ?1 ORDER BY seq")
                    .expect("prepare");
                stmt.query_map([topic], |r| r.get::<_, Vec<u8>>(0))
                    .expect("query")
                    .map(|r| parse(&r.expect("row")))
                    .collect()
            }
            Kind::Redis => {
                let url = &self.redis.as_ref().expect("redis server").url;
                let client = redis::Client::open(url.as_str()).expect("redis client");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis conn");
                let reply: redis::streams::StreamRangeReply = redis::AsyncCommands::xrange_all(
                    &mut conn,
                    format!("{}:stream:{topic}", self.prefix),
                )
                .await
                .expect("xrange");
                reply
                    .ids
                    .iter()
                    .map(|e| match e.map.get("payload") {
                        Some(redis::Value::BulkString(b)) => parse(b),
                        _ => serde_json::Value::Null,
                    })
                    .collect()
            }
        }
    }

    /// Number of logged events on `topic`.
    pub async fn count_events(&self, topic: &str) -> usize {
        self.events_on(topic).await.len()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task did not panic");
        }
    }
}
