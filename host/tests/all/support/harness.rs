//! An in-process host started exactly as the binary starts (`app::start`):
//! the real runtime, backend, dispatchers and maintenance, served over real
//! HTTP on an ephemeral port. Tests wait for events with `settle`.

use std::sync::Arc;

use sktarbucks::app::{self, RunningHost};
use sktarbucks::backend::sqlite::SqliteBackend;
use sktarbucks::backend::{SharedBackend, Subscription};
use sktarbucks::config::Config;
use sktarbucks::runtime::Runtime;
use sktarbucks::uow::{Changes, NewEvent};
use tempfile::TempDir;

use sktarbucks::backend::redis::RedisBackend;

use super::redis::RedisServer;
use super::{Client, test_config};

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
    host: Option<RunningHost>,
}

impl Harness {
    /// A host with every test component, started like the binary starts
    /// (`app::start`): real dispatchers, maintenance and deployment sync.
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, |_| {}).await
    }

    /// Like [`start`](Self::start), with the configuration edited first.
    pub async fn start_with(kind: Kind, edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        edit(&mut config);
        let prefix = format!("t{:08x}", rand_u32());
        config.redis_prefix = prefix.clone();
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
                config.redis = Some(server.url.clone());
                redis = Some(server);
                Arc::new(backend)
            }
        };
        let host = app::start(
            config,
            app::Options {
                backend: Some(Arc::clone(&backend)),
                ..app::Options::default()
            },
        )
        .await
        .expect("the host starts");
        Self {
            rt: Arc::clone(&host.rt),
            backend,
            dir,
            client: Client::new(host.url()),
            kind,
            prefix,
            redis,
            host: Some(host),
        }
    }

    /// The running host (its deployer, addresses).
    pub fn host(&self) -> &RunningHost {
        self.host.as_ref().expect("the host runs until stop")
    }

    /// The subscription of `component` as the host would make it.
    pub async fn subscription(&self, component: &str) -> Subscription {
        let loaded = self.rt.registry.get(component).expect("component loaded");
        let topics = self.rt.subscriptions(&loaded).await.expect("subscriptions");
        self.subscribe(component, topics).await
    }

    /// Subscribe `component` to `topics` on the backend directly: the test
    /// polls and acknowledges itself (no dispatcher runs for it).
    pub async fn subscribe(&self, component: &str, topics: Vec<String>) -> Subscription {
        let sub = Subscription {
            component: component.to_owned(),
            topics,
        };
        self.backend.subscribe(&sub).await.expect("subscribe");
        sub
    }

    /// Wait until the running dispatchers have delivered everything: every
    /// subscriber's lag is 0 twice in a row (a handler's own events count).
    pub async fn settle(&self) {
        let mut quiet = 0;
        let started = std::time::Instant::now();
        while quiet < 2 {
            let lag: u64 = self
                .rt
                .lag()
                .await
                .expect("lag")
                .iter()
                .map(|(_, n)| n)
                .sum();
            quiet = if lag == 0 { quiet + 1 } else { 0 };
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "events did not settle within 60 s (lag {lag})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Append an event to the log as if `source` had published it.
    pub async fn inject(&self, source: &str, topic: &str, key: &str, payload: serde_json::Value) {
        let changes = Changes {
            events: vec![NewEvent {
                topic: topic.to_owned(),
                key: key.to_owned(),
                payload: payload.to_string().into_bytes(),
                source: source.to_owned(),
                trace: Default::default(),
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
        if let Some(host) = self.host.take() {
            host.stop().await.expect("the host stops cleanly");
        }
    }
}
