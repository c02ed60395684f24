//! An in-process Kubernetes API server over plain HTTP on 127.0.0.1, for tests and the demo.
//! `kube::Client` and `kubectl` use it through the kubeconfig it writes.
//!
//! Real semantics where the operator and the people using it depend on them (see `store`,
//! `schema`, `protobuf`, `tokens`, `builtin_table`); approximations are named where they are
//! made (patch: strategic merge and apply act as merge patches) and listed in the README.

mod builtin_table;
mod counts;
mod faults;
mod http;
mod patch;
mod protobuf;
mod resources;
mod schema;
mod select;
mod store;
mod table;
mod tokens;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

pub use counts::{RequestCounts, WRITE_VERBS};
pub use faults::Faults;
pub use http::RequestRecord;

/// Options of a server.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// How many events the server keeps for watches (the watch cache's capacity); a watch
    /// from an older resourceVersion gets 410 Gone.
    pub history_limit: usize,
    /// How long events are kept for watches (etcd compacts every 5 minutes by default); a
    /// watch from a resourceVersion older than that gets 410 Gone.
    pub history_window: Duration,
    /// Whether CRD schemas (OpenAPI v3 and CEL rules) refuse invalid custom resources, as a
    /// real server does. Off puts a bad spec straight past the schema (to test what the
    /// operator itself does with one).
    pub enforce_schemas: bool,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            history_limit: 100_000,
            history_window: Duration::from_secs(300),
            enforce_schemas: true,
        }
    }
}

/// A running server; dropping it stops it and closes every connection.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    stop: watch::Sender<bool>,
}

impl ApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> std::io::Result<ApiServer> {
        Self::start_with(ApiServerOptions::default()).await
    }

    /// Starts a server with options.
    pub async fn start_with(options: ApiServerOptions) -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(http::Shared {
            store: store::Store::new(options.history_limit, options.history_window),
            faults: Faults::default(),
            log: Mutex::new(Vec::new()),
            counts: counts::Counter::default(),
            address: addr.to_string(),
            tokens: tokens::Tokens::default(),
        });
        shared.store.set_enforce_schemas(options.enforce_schemas);
        let (stop, mut stopped) = watch::channel(false);
        let server_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((socket, _)) = accepted else { continue };
                let shared = server_shared.clone();
                let mut stop_connection = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| http::handle(shared.clone(), request));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(socket), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop_connection.changed() => {}
                    }
                });
            }
        });
        Ok(ApiServer { addr, shared, stop })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (cluster, user, context `testbed`, namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {url}\nusers:\n- name: testbed\n  user:\n    token: testbed\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: testbed\n    namespace: default\ncurrent-context: testbed\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Fault knobs.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Every request served so far.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests so far, by verb and resource (see [`RequestCounts`]).
    pub fn request_counts(&self) -> RequestCounts {
        self.shared.counts.snapshot()
    }

    /// How many requests were served so far (cheaper than cloning the log).
    pub fn request_count(&self) -> usize {
        self.shared.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The requests served after the first `from` (the log from an index on).
    pub fn requests_since(&self, from: usize) -> Vec<RequestRecord> {
        let log = self.shared.log.lock().unwrap_or_else(|p| p.into_inner());
        log.get(from..).map(<[RequestRecord]>::to_vec).unwrap_or_default()
    }

    /// Changes the retained watch history (older watches then get 410 Gone).
    pub fn set_history_limit(&self, limit: usize) {
        self.shared.store.set_history_limit(limit);
    }

    /// Turns CRD schema enforcement on or off (see [`ApiServerOptions::enforce_schemas`]).
    pub fn set_enforce_schemas(&self, enforce: bool) {
        self.shared.store.set_enforce_schemas(enforce);
    }

    /// Changes how long events are kept for watches (older watches then get 410 Gone).
    pub fn set_history_window(&self, window: Duration) {
        self.shared.store.set_history_window(window);
    }

    /// The current cluster-wide resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// How many objects are stored.
    pub fn object_count(&self) -> usize {
        self.shared.store.object_count()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_counted_by_verb_and_resource() {
        let server = ApiServer::start().await.unwrap();
        let http = reqwest::Client::new();
        let url = server.url();
        let before = server.request_counts();
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "counted"}});
        let created = http
            .post(format!("{url}/api/v1/namespaces"))
            .json(&ns)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        let secrets = format!("{url}/api/v1/namespaces/counted/secrets");
        assert_eq!(http.post(&secrets).json(&secret).send().await.unwrap().status(), 201);
        assert_eq!(
            http.put(format!("{secrets}/s"))
                .json(&secret)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(http.get(format!("{secrets}/s")).send().await.unwrap().status(), 200);
        assert_eq!(
            http.get(format!("{secrets}/missing")).send().await.unwrap().status(),
            404
        );
        assert_eq!(http.get(&secrets).send().await.unwrap().status(), 200);
        // Discovery is not a resource request.
        assert_eq!(http.get(format!("{url}/api/v1")).send().await.unwrap().status(), 200);
        let counts = server.request_counts().since(&before);
        assert_eq!(
            counts.iter().collect::<Vec<_>>(),
            vec![
                ("create", "namespaces", 1),
                ("create", "secrets", 1),
                ("get", "secrets", 2),
                ("list", "secrets", 1),
                ("update", "secrets", 1),
            ]
        );
        assert_eq!(counts.writes(|r| r == "secrets"), 2);
    }
}
