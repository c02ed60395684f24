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
use crate::metrics::Metrics;
use crate::oauth::atlassian::{self, AtlassianClient, Endpoints};
use crate::store;
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
        public_url: args.public_url.as_str().trim_end_matches('/').to_string(),
        link_ttl: args.link_ttl,
        clock: Clock::system(),
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
    let shared = Arc::new(Shared { ctx, metrics });
    let controllers = tokio::spawn(controller::run(shared, args.namespaces.clone(), stopped(&stop_tx)));
    readiness.set_ready();
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = tokio::join!(web, metrics_server, controllers);
    Ok(())
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
