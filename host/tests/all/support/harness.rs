//! An in-process host: the real runtime and backend, served over real HTTP
//! on an ephemeral port, with dispatchers running or drained by hand.

use std::sync::Arc;

use sktarbucks::backend::{SharedBackend, Subscription};
use sktarbucks::backend::sqlite::SqliteBackend;
use sktarbucks::config::Config;
use sktarbucks::events::dispatcher;
use sktarbucks::runtime::Runtime;
use sktarbucks::uow::{Changes, NewEvent};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::{Client, manifest};

/// Which backend a behavioural test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Sqlite,
}

pub struct Harness {
    pub rt: Arc<Runtime>,
    pub backend: SharedBackend,
    pub dir: TempDir,
    pub client: Client,
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
        let config = Config::parse(&manifest(dir.path(), extra), dir.path()).expect("test manifest parses");
        let backend: SharedBackend = match kind {
            Kind::Sqlite => Arc::new(
                SqliteBackend::open(&config.data, config.sqlite.synchronous).expect("sqlite opens"),
            ),
        };
        let rt = {
            let backend = Arc::clone(&backend);
            tokio::task::spawn_blocking(move || Runtime::start(config, backend))
                .await
                .expect("start task")
                .expect("runtime starts")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
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

    /// (topic, payload) of every logged event, oldest first (SQLite only).
    pub fn logged_events(&self) -> Vec<(String, serde_json::Value)> {
        let conn = rusqlite::Connection::open(self.dir.path().join("sktarbucks.db")).expect("open db");
        let mut stmt = conn
            .prepare("SELECT topic, payload FROM events ORDER BY seq")
            .expect("prepare");
        stmt.query_map([], |r| {
            let payload: Vec<u8> = r.get(1)?;
            Ok((r.get(0)?, serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null)))
        })
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
    }

    /// Number of logged events on `topic`.
    pub fn count_events(&self, topic: &str) -> usize {
        self.logged_events().iter().filter(|(t, _)| t == topic).count()
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
