//! Start-up and shutdown of one operator process: keys, clients, the OAuth web server, the
//! metrics server and the controllers.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use warp::Filter;

use crate::config::RunArgs;
use crate::context::{Clock, Context};
use crate::controller::{self, Shared};
use crate::events::Events;
use crate::http_guard;
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::oauth::atlassian::{self, AtlassianClient, Endpoints};
use crate::store;
use crate::vault::{KeyRing, VaultError};
use crate::webhook::{self, Readiness};

/// Why the operator could not start, or stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A part of the operator (the controllers, a web server) ended while the process was not
    /// shutting down. The process exits non-zero so Kubernetes restarts it instead of keeping
    /// a pod that answers `/readyz` but reconciles nothing.
    #[error("the {task} stopped unexpectedly ({how}); exiting so the pod is restarted")]
    Stopped {
        /// Which part.
        task: &'static str,
        /// `panicked`, `returned` or `was cancelled`.
        how: &'static str,
    },
    /// The keys Secret could not be read or created.
    #[error("the keys Secret {namespace}/{name} could not be read or created: {source}")]
    KeysSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The keys Secret is missing while vault Secrets sealed with its keys exist: a new key
    /// could never open them, so the operator refuses to start instead of minting one.
    #[error(
        "the keys Secret {namespace}/{name} is missing, but {vaults} vault Secret(s) sealed with its keys exist \
         (for example {example}); refusing to create a new master key, which could never open them. \
         Restore the keys Secret from your backup (`kubectl apply -f <backup>.yaml`, see the README's \
         \"Back up and rotate the master keys\") and restart the operator. Only if no backup exists: \
         delete the vault Secrets (`kubectl delete secret -A -l app.kubernetes.io/managed-by=confluence-auth-operator \
         --field-selector type=confluence-auth.dev/vault`) and authorize every credential again"
    )]
    KeysLost {
        /// Namespace of the keys Secret.
        namespace: String,
        /// Name of the keys Secret.
        name: String,
        /// How many vault Secrets exist.
        vaults: usize,
        /// One of them, `namespace/name`.
        example: String,
    },
    /// The watched namespaces could not be searched for vault Secrets.
    #[error("could not list the vault Secrets in {scope} (needed before creating a keys Secret): {source}")]
    VaultCheck {
        /// What was listed.
        scope: String,
        /// Cause.
        source: kube::Error,
    },
    /// The keys Secret exists but is unusable.
    #[error("the keys Secret is unusable: {0}")]
    Keys(#[from] VaultError),
    /// A listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The Atlassian client could not be built.
    #[error("could not build the Atlassian client: {0}")]
    Atlassian(#[from] atlassian::AtlassianError),
    /// Leader election failed.
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
}

/// Addresses the servers actually listen on (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// OAuth web server.
    pub webhook: SocketAddr,
    /// Metrics server.
    pub metrics: SocketAddr,
}

/// Runs until `shutdown` resolves. `on_listening` receives the bound addresses.
pub async fn run(
    args: RunArgs,
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    on_listening: impl FnOnce(Listening),
) -> Result<(), StartError> {
    // Bound first: with port 0 the addresses (and a public URL of port 0) are known at once.
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let webhook_listener = bind(args.webhook_addr).await?;
    let metrics_listener = bind(args.metrics_addr).await?;
    let listening = Listening {
        webhook: webhook_listener.local_addr().map_err(|source| StartError::Bind {
            addr: args.webhook_addr,
            source,
        })?,
        metrics: metrics_listener.local_addr().map_err(|source| StartError::Bind {
            addr: args.metrics_addr,
            source,
        })?,
    };
    let public_url = public_url(&args.public_url, listening.webhook);
    let namespace = operator_namespace(&args, &client);
    // A shard's Secrets carry the labels its selector reads, so its Secret watch can select them.
    store::copy_owner_labels(args.selector.as_ref().map(|s| s.keys()).unwrap_or_default());
    if let Some(selector) = &args.selector {
        tracing::info!(%selector, lease = %args.lease_name, "a shard: only credentials matching the selector are reconciled");
    }
    let keys = load_or_create_keys(&client, &namespace, &args.keys_secret, &args.namespaces).await?;
    tracing::info!(namespace, secret = %args.keys_secret, primary = keys.primary_id(), "loaded the vault's master keys");
    let endpoints = Endpoints {
        auth_url: args.atlassian_auth_url.to_string(),
        api_url: args.atlassian_api_url.to_string(),
        tenant_info_url: args.atlassian_tenant_info_url.clone(),
    };
    let atlassian = AtlassianClient::new(endpoints, args.atlassian_timeout)?;
    let ctx = Context {
        client,
        keys,
        atlassian,
        public_url,
        link_ttl: args.link_ttl,
        clock: match &args.clock_url {
            Some(url) => Clock::following(url.clone()),
            None => Clock::system(),
        },
        operator_namespace: namespace.clone(),
        keys_secret: args.keys_secret.clone(),
        namespaces: args.namespaces.clone(),
        selector: args.selector.clone(),
        reconcile_concurrency: args.max_concurrent_reconciles,
        require_client_secret_label: args.require_client_secret_label,
        allowed_site_suffixes: args.allowed_site_suffixes.clone(),
        known: std::sync::Arc::default(),
    };
    let metrics = Metrics::default();
    let readiness = Readiness::default();
    tracing::info!(webhook = %listening.webhook, metrics = %listening.metrics, public_url = %ctx.public_url, "listening");
    on_listening(listening);

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let limiter = (args.webhook_rate_limit > 0.0).then(|| {
        http_guard::RateLimiter::new(
            args.webhook_rate_burst,
            args.webhook_rate_limit,
            args.trust_forwarded_for,
        )
    });
    let webhook_limits = http_guard::Limits {
        max_connections: usize::try_from(args.webhook_max_connections).unwrap_or(usize::MAX),
        header_timeout: args.webhook_header_timeout,
        body_timeout: args.webhook_header_timeout,
        rate_limit: limiter.map(webhook::rate_limit),
    };
    let metrics_limits = http_guard::Limits {
        max_connections: METRICS_MAX_CONNECTIONS,
        header_timeout: args.webhook_header_timeout,
        body_timeout: args.webhook_header_timeout,
        rate_limit: None,
    };
    let web = tokio::spawn(webhook::serve(
        ctx.clone(),
        metrics.clone(),
        readiness.clone(),
        webhook_listener,
        webhook_limits,
        stopped(&stop_tx),
    ));
    let metrics_server = tokio::spawn(serve_metrics(
        metrics.clone(),
        readiness.clone(),
        metrics_listener,
        metrics_limits,
        stopped(&stop_tx),
    ));
    let identity = leader::identity();
    let events = Events::new(ctx.client.clone(), &identity);
    let lease = LeaseConfig {
        namespace: namespace.clone(),
        name: args.lease_name.clone(),
        identity,
        duration: args.lease_duration,
    };
    let client = ctx.client.clone();
    let shared = Arc::new(Shared::new(ctx, metrics.clone(), events));
    let namespaces = args.namespaces.clone();
    let synced = readiness.clone();
    let leading = leader::run_while_leading(
        client,
        lease,
        metrics,
        readiness.clone(),
        stopped(&stop_tx),
        move |stop| {
            // Unsaved rotated token sets survive a lost term: they are written first next time.
            let synced = synced.clone();
            controller::run(
                shared.clone(),
                namespaces.clone(),
                async move {
                    let _ = stop.await;
                },
                move || synced.set_leader_synced(),
            )
        },
    );
    let controllers = tokio::spawn(async move {
        // Ending here (an error, or a return before shutdown) stops the process: see supervise.
        if let Err(e) = leading.await {
            tracing::error!(error = %e, "leader election failed");
        }
    });
    readiness.set_ready();
    let tasks = vec![
        ("controllers", controllers),
        ("OAuth web server", web),
        ("metrics server", metrics_server),
    ];
    supervise(tasks, shutdown, args.shutdown_timeout, move || {
        let _ = stop_tx.send(());
    })
    .await
}

/// Connections the metrics server holds at once (scrapers and probes only).
const METRICS_MAX_CONNECTIONS: usize = 64;
/// How long the other tasks get to stop once one ended unexpectedly.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits for `shutdown` or for any of `tasks` to end, whichever comes first, then calls `stop`
/// and waits for the tasks (after a `shutdown`, at most `grace`: the pod's grace period ends in
/// SIGKILL anyway, and exiting first lets the process say so). A task that ends (returns,
/// panics or is cancelled) before `shutdown` is an error naming it: the caller exits non-zero
/// rather than run on without it.
pub async fn supervise(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: std::time::Duration,
    stop: impl FnOnce(),
) -> Result<(), StartError> {
    let (names, handles): (Vec<&'static str>, Vec<_>) = tasks.into_iter().unzip();
    if handles.is_empty() {
        shutdown.await;
        stop();
        return Ok(());
    }
    let mut any_ended = futures::future::select_all(handles);
    let shutdown = std::pin::pin!(shutdown);
    let ended = tokio::select! {
        () = shutdown => None,
        ended = &mut any_ended => Some(ended),
    };
    stop();
    match ended {
        None => {
            tracing::info!(grace = ?grace, "shutting down: finishing the reconciles in flight");
            if tokio::time::timeout(grace, futures::future::join_all(any_ended.into_inner()))
                .await
                .is_err()
            {
                // A refresh cut off here is the crash window of DESIGN.md step 4: the next
                // leader sends the previous refresh token again, within Atlassian's leeway.
                tracing::warn!(grace = ?grace, "the reconciles in flight did not finish within --shutdown-timeout; exiting anyway");
            }
            Ok(())
        }
        Some((result, index, rest)) => {
            let how = match result {
                Ok(()) => "returned",
                Err(e) if e.is_panic() => "panicked",
                Err(_) => "was cancelled",
            };
            let task = names[index];
            tracing::error!(
                task,
                how,
                "a part of the operator stopped unexpectedly; stopping the rest"
            );
            if tokio::time::timeout(STOP_TIMEOUT, futures::future::join_all(rest))
                .await
                .is_err()
            {
                tracing::warn!("the other parts did not stop in time");
            }
            Err(StartError::Stopped { task, how })
        }
    }
}

/// `--public-url` without a trailing slash; a port of 0 stands for the port the OAuth web
/// server bound (a local run with `--webhook-addr 127.0.0.1:0`).
fn public_url(configured: &url::Url, webhook: SocketAddr) -> String {
    let mut url = configured.clone();
    if url.port() == Some(0) {
        // Only a URL that cannot take a port (none here: `http`/`https`) fails; keep it as given.
        let _ = url.set_port(Some(webhook.port()));
    }
    url.as_str().trim_end_matches('/').to_string()
}

/// `--operator-namespace`, else the service account's namespace, else the client's default.
fn operator_namespace(args: &RunArgs, client: &Client) -> String {
    args.operator_namespace
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// Loads the vault's master keys from the keys Secret `namespace/name`.
///
/// When the Secret is missing it is created with one random key (id `1`), but only when no vault
/// Secret exists in the `watched` namespaces (empty: all namespaces): a vault sealed with a key
/// that is gone can never be opened again, so minting a new key over it would silently turn
/// every credential into `VaultUnreadable`. Creation is create-only (`POST`, never an update), so
/// of two replicas starting at once exactly one creates the Secret and the other reads it.
pub async fn load_or_create_keys(
    client: &Client,
    namespace: &str,
    name: &str,
    watched: &[String],
) -> Result<KeyRing, StartError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let wrap = |source| StartError::KeysSecret {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    };
    if let Some(secret) = secrets.get_opt(name).await.map_err(wrap)? {
        return Ok(KeyRing::from_secret_data(&secret.data.unwrap_or_default())?);
    }
    let vaults = existing_vaults(client, watched).await?;
    if let Some(example) = vaults.first() {
        return Err(StartError::KeysLost {
            namespace: namespace.to_string(),
            name: name.to_string(),
            vaults: vaults.len(),
            example: example.clone(),
        });
    }
    let ring = KeyRing::generate("1")?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), store::MANAGER.to_string())].into()),
            ..ObjectMeta::default()
        },
        data: Some(ring.to_secret_data()),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                name,
                "created the keys Secret with a new random master key: back it up"
            );
            Ok(ring)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets.get(name).await.map_err(wrap)?;
            Ok(KeyRing::from_secret_data(&secret.data.unwrap_or_default())?)
        }
        Err(e) => Err(wrap(e)),
    }
}

/// `namespace/name` of every vault Secret in the watched namespaces (empty: all namespaces).
async fn existing_vaults(client: &Client, watched: &[String]) -> Result<Vec<String>, StartError> {
    let apis: Vec<(Option<&str>, Api<Secret>)> = if watched.is_empty() {
        vec![(None, Api::all(client.clone()))]
    } else {
        watched
            .iter()
            .map(|ns| (Some(ns.as_str()), Api::namespaced(client.clone(), ns)))
            .collect()
    };
    // Vaults carry the managed-by label; their type is filtered here because not every API
    // server (nor the testbed) selects Secrets by `type`.
    let params = ListParams::default().labels(&format!("app.kubernetes.io/managed-by={}", store::MANAGER));
    let mut found = Vec::new();
    for (ns, api) in apis {
        let list = api.list(&params).await.map_err(|source| StartError::VaultCheck {
            scope: ns.map_or_else(|| "all namespaces".to_string(), |ns| format!("namespace {ns}")),
            source,
        })?;
        found.extend(
            list.items
                .into_iter()
                .filter(|s| s.type_.as_deref() == Some(store::VAULT_TYPE))
                .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())),
        );
    }
    found.sort();
    Ok(found)
}

async fn serve_metrics(
    metrics: Metrics,
    readiness: Readiness,
    listener: tokio::net::TcpListener,
    limits: http_guard::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let scrape = warp::path!("metrics").map(move || {
        warp::reply::with_header(
            metrics.encode(),
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    });
    let health = warp::path!("healthz").map(|| "ok".to_string());
    let ready = warp::path!("readyz").map(move || {
        let (status, text) = if readiness.is_ready() {
            (warp::http::StatusCode::OK, "ready")
        } else {
            (warp::http::StatusCode::SERVICE_UNAVAILABLE, "starting")
        };
        warp::reply::with_status(text.to_string(), status)
    });
    let routes = warp::get().and(scrape.or(health).or(ready));
    http_guard::serve(listener, warp::service(routes), limits, shutdown).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// The shutdown grace period in these tests.
    const GRACE: Duration = Duration::from_secs(25);

    fn flag() -> (Arc<AtomicBool>, impl FnOnce()) {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        (flag, move || set.store(true, Ordering::SeqCst))
    }

    /// A task that runs until `stop` is called.
    fn until_stopped(rx: &tokio::sync::broadcast::Sender<()>) -> tokio::task::JoinHandle<()> {
        let mut rx = rx.subscribe();
        tokio::spawn(async move {
            let _ = rx.recv().await;
        })
    }

    #[test]
    fn a_public_url_of_port_0_takes_the_bound_port_and_others_stay_as_given() {
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let url = |text: &str| text.parse::<url::Url>().unwrap();
        assert_eq!(public_url(&url("http://127.0.0.1:0"), bound), "http://127.0.0.1:41234");
        assert_eq!(public_url(&url("http://127.0.0.1:0/"), bound), "http://127.0.0.1:41234");
        assert_eq!(
            public_url(&url("https://auth.example.com/"), bound),
            "https://auth.example.com"
        );
        assert_eq!(
            public_url(&url("http://localhost:8080"), bound),
            "http://localhost:8080"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_error_naming_it_and_stops_the_rest() {
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let other = until_stopped(&stop_tx);
        let panicking = tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("arithmetic overflow");
        });
        let result = supervise(
            vec![("controllers", panicking), ("web server", other)],
            std::future::pending(),
            GRACE,
            move || {
                let _ = stop_tx.send(());
            },
        )
        .await;
        assert!(matches!(
            result,
            Err(StartError::Stopped {
                task: "controllers",
                how: "panicked"
            })
        ));
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_an_error_too() {
        let (stopped, stop) = flag();
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let other = until_stopped(&stop_tx);
        let returning = tokio::spawn(async {});
        let result = supervise(
            vec![("web server", other), ("controllers", returning)],
            std::future::pending(),
            GRACE,
            move || {
                stop();
                let _ = stop_tx.send(());
            },
        )
        .await;
        assert!(matches!(
            result,
            Err(StartError::Stopped {
                task: "controllers",
                how: "returned"
            })
        ));
        assert!(stopped.load(Ordering::SeqCst));
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("the controllers stopped unexpectedly (returned)")
        );
    }

    #[tokio::test]
    async fn a_requested_shutdown_stops_every_task_and_is_no_error() {
        let (stopped, stop) = flag();
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let tasks = vec![
            ("controllers", until_stopped(&stop_tx)),
            ("web server", until_stopped(&stop_tx)),
        ];
        let result = supervise(tasks, std::future::ready(()), GRACE, move || {
            stop();
            let _ = stop_tx.send(());
        })
        .await;
        assert!(result.is_ok());
        assert!(stopped.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_waits_for_work_in_flight_at_most_the_grace_period() {
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        // A reconcile that finishes 3 s after the stop, and one stuck far longer.
        let finishing = tokio::spawn(async { tokio::time::sleep(Duration::from_secs(3)).await });
        let stuck = tokio::spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        let started = tokio::time::Instant::now();
        let result = supervise(vec![("controllers", finishing)], std::future::ready(()), GRACE, || {}).await;
        assert!(result.is_ok());
        assert_eq!(started.elapsed().as_secs(), 3, "waited for the reconcile in flight");
        let started = tokio::time::Instant::now();
        let result = supervise(vec![("controllers", stuck)], std::future::ready(()), GRACE, move || {
            let _ = stop_tx.send(());
        })
        .await;
        assert!(result.is_ok(), "a shutdown past the grace period is still a clean exit");
        assert_eq!(started.elapsed(), GRACE);
    }
}
