//! The per-namespace gateway for multi-user applications:
//! `confluence-auth-operator gateway --namespace NS --allow system:serviceaccount:NS:app`.
//!
//! Routes `/{installation}/users/{userId}/{path}` with that user's token and
//! `/{installation}/{path}` with the installation's, each to `{api_base_url}{path}`. It watches
//! (kube-runtime reflectors) the credentials and the operator's token Secrets of its own
//! namespace only, so a refreshed token is used by the next request and another namespace's
//! Secret is unreachable by construction. A caller must present a Kubernetes ServiceAccount
//! token (`Authorization: Bearer …`); the gateway checks it with a `TokenReview` and admits only
//! the usernames on `--allow`. The caller's token is never forwarded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt as _};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

use super::proxy::{ProxyBody, Token, escapes_base, forward, local_answer, serve_http1, upstream_client};
use crate::config::GatewayArgs;
use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus, Phase};

/// How long an admitted caller's token review is reused.
const REVIEW_TTL: Duration = Duration::from_secs(60);
/// Bound of the review cache (cleared when full).
const REVIEW_CACHE_MAX: usize = 10_000;
/// The label every token Secret of the operator carries.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=confluence-auth-operator";

/// What the gateway needs to answer requests.
#[derive(Clone)]
pub struct Gateway {
    namespace: String,
    allow: Arc<Vec<String>>,
    client: Client,
    http: reqwest::Client,
    secrets: Store<Secret>,
    installations: Store<ConfluenceInstallation>,
    users: Store<ConfluenceUserAuth>,
    /// sha256(caller token) → (username, when reviewed); only admitted callers are cached.
    reviews: Arc<Mutex<Reviews>>,
}

/// Admitted callers: sha256 of their token → (username, when reviewed).
type Reviews = HashMap<[u8; 32], (String, Instant)>;

/// A refusal the gateway answers itself (boxed: a response is large).
type Refusal = Box<Response<ProxyBody>>;

/// A store fed by `events` (driven on its own task, warnings logged).
fn store_from<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = events.default_backoff().reflect(writer).touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch failed; retrying");
            }
        }
    });
    reader
}

/// A store of one credential kind in `namespace`. Watched untyped and converted object by
/// object, so one object that got past the CRD schema cannot empty the store for all the
/// others (the operator reports it on its status).
fn credential_store<K>(client: &Client, namespace: &str) -> Store<K>
where
    K: Resource<DynamicType = ()> + crate::controller::Stub + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ApiResource::erase::<K>(&()));
    store_from(crate::controller::watch_fitting::<K>(api, watcher::Config::default()))
}

impl Gateway {
    /// Starts the watches of `namespace` and waits until each has listed once.
    pub async fn start(client: Client, namespace: &str, allow: Vec<String>) -> Result<Gateway, kube::Error> {
        let secrets = store_from(watcher(
            Api::<Secret>::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(MANAGED_BY),
        ));
        let installations = credential_store(&client, namespace);
        let users = credential_store(&client, namespace);
        for ready in [
            secrets.wait_until_ready().await,
            installations.wait_until_ready().await,
            users.wait_until_ready().await,
        ] {
            if ready.is_err() {
                tracing::warn!("a watch stopped before its first list");
            }
        }
        Ok(Gateway {
            namespace: namespace.to_string(),
            allow: Arc::new(allow),
            client,
            http: upstream_client(),
            secrets,
            installations,
            users,
            reviews: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Who the caller is, if its bearer token is a valid ServiceAccount token on the allow-list.
    async fn admit(&self, req: &Request<Incoming>) -> Result<String, Response<ProxyBody>> {
        let bearer = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_string());
        let Some(bearer) = bearer.filter(|t| !t.is_empty()) else {
            let mut resp = local_answer(
                StatusCode::UNAUTHORIZED,
                "confluence-auth gateway: send `Authorization: Bearer <your ServiceAccount token>`",
            );
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(resp);
        };
        let key: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        if let Some((user, at)) = self.reviews.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < REVIEW_TTL
        {
            return Ok(user.clone());
        }
        let bearer = SecretString::from(bearer);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: secrecy::ExposeSecret::expose_secret(&bearer).to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await;
        let status = match reviewed {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "TokenReview failed");
                return Err(local_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "confluence-auth gateway: the caller's token could not be reviewed",
                ));
            }
        };
        let username = status
            .user
            .and_then(|u| u.username)
            .filter(|_| status.authenticated == Some(true));
        let Some(username) = username else {
            return Err(local_answer(
                StatusCode::UNAUTHORIZED,
                "confluence-auth gateway: the bearer token is not a valid Kubernetes token",
            ));
        };
        if !self.allow.iter().any(|a| a == &username) {
            tracing::info!(%username, "caller not on the allow-list");
            return Err(local_answer(
                StatusCode::FORBIDDEN,
                &format!("confluence-auth gateway: {username} is not allowed (--allow)"),
            ));
        }
        let mut reviews = self.reviews.lock().unwrap_or_else(|p| p.into_inner());
        if reviews.len() >= REVIEW_CACHE_MAX {
            reviews.clear();
        }
        reviews.insert(key, (username.clone(), Instant::now()));
        Ok(username)
    }

    /// The token of a credential resource, or the answer that explains why there is none.
    fn token_of<K: CredentialResource>(&self, object: &K, what: &str) -> Result<Token, Refusal> {
        let cred: Option<&CredentialStatus> = object.credential();
        let phase = cred.and_then(|c| c.phase);
        // Refreshing and Degraded still hold a working token; the Secret's expiry decides.
        if !matches!(phase, Some(Phase::Ready | Phase::Refreshing | Phase::Degraded)) {
            let phase = phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "not reconciled yet".into());
            return Err(Box::new(local_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("confluence-auth gateway: {what} is {phase}"),
            )));
        }
        let unavailable = |why: String| -> Refusal {
            Box::new(local_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("confluence-auth gateway: {what}: {why}"),
            ))
        };
        let Some(name) = cred.and_then(|c| c.secret_name.clone()) else {
            return Err(unavailable("its status names no token Secret".into()));
        };
        let secret = self
            .secrets
            .get(&ObjectRef::new(&name).within(&self.namespace))
            .ok_or_else(|| unavailable(format!("token Secret {name} not found")))?;
        // Only a Secret the operator wrote for this very resource.
        let labels = secret.labels();
        let owned = labels.get("confluence-auth.dev/owner-kind").map(String::as_str) == Some(&*K::kind(&()))
            && labels.get("confluence-auth.dev/owner-name") == Some(&object.name_any());
        if !owned {
            return Err(unavailable(format!(
                "Secret {name} is not this resource's token Secret"
            )));
        }
        let data = secret.data.clone().unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| unavailable(format!("token Secret {name} has no {key}")))
        };
        let expires_at: Timestamp = text("expires_at")?
            .parse()
            .map_err(|_| unavailable(format!("token Secret {name} has an unreadable expires_at")))?;
        if Timestamp::now() >= expires_at {
            return Err(unavailable(format!("the token expired at {expires_at}")));
        }
        Ok(Token {
            access_token: SecretString::from(text("access_token")?),
            expires_at,
            api_base_url: text("api_base_url")?.trim_end_matches('/').to_string(),
        })
    }

    /// Resolves a route to a token and the path to forward.
    fn route(&self, path: &str) -> Result<(Token, String), Refusal> {
        let not_found = |m: String| -> Refusal {
            Box::new(local_answer(
                StatusCode::NOT_FOUND,
                &format!("confluence-auth gateway: {m}"),
            ))
        };
        let trimmed = path.trim_start_matches('/');
        let (installation, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if installation.is_empty() {
            return Err(not_found(
                "use /{installation}/users/{userId}/{path} or /{installation}/{path}".into(),
            ));
        }
        if let Some(after) = rest.strip_prefix("users/") {
            let (raw_user, rest) = after.split_once('/').unwrap_or((after, ""));
            let user_id = percent_decode(raw_user);
            let user = self
                .users
                .state()
                .into_iter()
                .find(|u| u.spec.installation_ref.name == installation && u.spec.user_id == user_id)
                .ok_or_else(|| {
                    not_found(format!(
                        "no ConfluenceUserAuth for user id {user_id:?} of installation {installation:?} in namespace {}",
                        self.namespace
                    ))
                })?;
            let token = self.token_of(
                &*user,
                &format!("user {user_id:?} (ConfluenceUserAuth {})", user.name_any()),
            )?;
            return Ok((token, format!("/{rest}")));
        }
        let cfi = self
            .installations
            .get(&ObjectRef::new(installation).within(&self.namespace))
            .ok_or_else(|| {
                not_found(format!(
                    "no ConfluenceInstallation {installation:?} in namespace {}",
                    self.namespace
                ))
            })?;
        let token = self.token_of(&*cfi, &format!("installation {installation:?}"))?;
        Ok((token, format!("/{rest}")))
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if escapes_base(req.uri().path()) {
            return local_answer(
                StatusCode::BAD_REQUEST,
                "confluence-auth gateway: the path must not contain . or .. segments",
            );
        }
        let caller = match self.admit(&req).await {
            Ok(caller) => caller,
            Err(resp) => return resp,
        };
        let (token, mut path) = match self.route(req.uri().path()) {
            Ok(route) => route,
            Err(resp) => return *resp,
        };
        if let Some(query) = req.uri().query() {
            path = format!("{path}?{query}");
        }
        let method = req.method().clone();
        let resp = forward(&self.http, &token, req, &path).await;
        tracing::debug!(%caller, %method, status = resp.status().as_u16(), "forwarded");
        resp
    }
}

/// Decodes `%XX` escapes (a user id may hold characters a path must escape).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, gateway: Gateway, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    serve_http1(listener, shutdown, move |req| {
        let gateway = gateway.clone();
        async move { gateway.handle(req).await }
    })
    .await
}

/// `confluence-auth-operator gateway`.
pub async fn run(args: GatewayArgs, shutdown: impl Future<Output = ()>) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    let gateway = Gateway::start(client, &args.namespace, args.allow.clone()).await?;
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, namespace = %args.namespace, "gateway listening");
    serve(listener, gateway, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("user%40example.com"), "user@example.com");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain_1"), "plain_1");
    }
}
