//! Start-up and shutdown of one operator process: keys, clients, the OAuth web server, the
//! metrics server and the controllers.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use warp::Filter;

use crate::config::RunArgs;
use crate::context::{Clock, Context};
use crate::controller::{self, Shared};
use crate::events::Events;
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::oauth::atlassian::{self, AtlassianClient, Endpoints};
use crate::vault::{KeyRing, VaultError};
use crate::webhook::{self, Readiness};

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    let namespace = operator_namespace(&args, &client);
    let keys = load_or_create_keys(&client, &namespace, &args.keys_secret).await?;
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
        public_url: args.public_url.as_str().trim_end_matches('/').to_string(),
        link_ttl: args.link_ttl,
        clock: match &args.clock_url {
            Some(url) => Clock::following(url.clone()),
            None => Clock::system(),
        },
    };
    let metrics = Metrics::default();
    let readiness = Readiness::default();
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
    tracing::info!(webhook = %listening.webhook, metrics = %listening.metrics, public_url = %ctx.public_url, "listening");
    on_listening(listening);

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let web = tokio::spawn(webhook::serve(
        ctx.clone(),
        metrics.clone(),
        readiness.clone(),
        webhook_listener,
        stopped(&stop_tx),
    ));
    let metrics_server = tokio::spawn(serve_metrics(
        metrics.clone(),
        readiness.clone(),
        metrics_listener,
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
    let controllers = tokio::spawn(leader::run_while_leading(
        client,
        lease,
        metrics,
        stopped(&stop_tx),
        move |stop| {
            // Unsaved rotated token sets survive a lost term: they are written first next time.
            controller::run(shared.clone(), namespaces.clone(), async move {
                let _ = stop.await;
            })
        },
    ));
    readiness.set_ready();
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let (_, _, leading) = tokio::join!(web, metrics_server, controllers);
    match leading {
        Ok(Err(e)) => Err(StartError::Leader(e)),
        _ => Ok(()),
    }
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

/// Loads the master keys; on first start creates the Secret with one random key.
async fn load_or_create_keys(client: &Client, namespace: &str, name: &str) -> Result<KeyRing, StartError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let wrap = |source| StartError::KeysSecret {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    };
    if let Some(secret) = secrets.get_opt(name).await.map_err(wrap)? {
        return Ok(KeyRing::from_secret_data(&secret.data.unwrap_or_default())?);
    }
    let ring = KeyRing::generate("1")?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(ring.to_secret_data()),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace, name, "created the keys Secret with a new random master key");
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

async fn serve_metrics(
    metrics: Metrics,
    readiness: Readiness,
    listener: tokio::net::TcpListener,
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
    warp::serve(routes).incoming(listener).graceful(shutdown).run().await;
}
