//! What the controllers and the webhook share: the Kubernetes client, the key ring, the
//! Atlassian client, the public URL and the clock.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;

use crate::oauth::atlassian::AtlassianClient;
use crate::vault::KeyRing;

/// How long a published authorization link stays valid.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The current time; injected so decisions can be tested at any instant.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(Timestamp::now))
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        (self.0)()
    }

    /// The system clock shifted by the offset of a remote clock (`GET url` answering
    /// `{"now": RFC 3339}`), re-read every 250 ms. Tests use it to follow the Atlassian
    /// stand-in's controllable clock; the offset starts at zero.
    pub fn following(url: String) -> Self {
        let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let writer = offset.clone();
        tokio::spawn(async move {
            #[derive(serde::Deserialize)]
            struct Now {
                now: Timestamp,
            }
            let http = reqwest::Client::new();
            loop {
                if let Ok(response) = http.get(&url).send().await
                    && let Ok(remote) = response.json::<Now>().await
                {
                    let millis = remote.now.as_millisecond() - Timestamp::now().as_millisecond();
                    writer.store(millis, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self(Arc::new(move || {
            let millis = offset.load(std::sync::atomic::Ordering::Relaxed);
            Timestamp::now() + jiff::SignedDuration::from_millis(millis)
        }))
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Shared state of one operator process.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Master keys for the vault and the OAuth state.
    pub keys: KeyRing,
    /// Atlassian client.
    pub atlassian: AtlassianClient,
    /// Where browsers reach the webhook, without a trailing slash.
    pub public_url: String,
    /// Lifetime of authorization links.
    pub link_ttl: Duration,
    /// Time source.
    pub clock: Clock,
    /// Where the operator runs and keeps its keys Secret.
    pub operator_namespace: String,
    /// Name of the keys Secret (never read as a client secret).
    pub keys_secret: String,
    /// The namespaces listed with `--namespaces` (empty: all but the operator's own).
    pub namespaces: Vec<String>,
    /// Reconciles each controller runs at once (`--max-concurrent-reconciles`).
    pub reconcile_concurrency: u16,
    /// `--selector`: this operator's shard (none: every credential in its namespaces).
    pub selector: Option<crate::selector::Selector>,
    /// Read a client secret only from Secrets labelled `confluence-auth.dev/client-secret=true`.
    pub require_client_secret_label: bool,
    /// `spec.site` must be a host strictly under one of these (`--allowed-site-suffixes`).
    pub allowed_site_suffixes: Vec<String>,
    /// What the controllers' watches and own writes tell without a request (`known`).
    pub known: Arc<crate::known::Known>,
}

impl Context {
    /// The OAuth `redirect_uri`: `<public-url>/oauth/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }

    /// True when resources in `namespace` are this operator's to serve: a listed namespace, or,
    /// with no list, any namespace but the operator's own (which holds its keys).
    pub fn in_scope(&self, namespace: &str) -> bool {
        if self.namespaces.is_empty() {
            namespace != self.operator_namespace
        } else {
            self.namespaces.iter().any(|n| n == namespace)
        }
    }

    /// What may be read as a client secret.
    pub fn client_secret_policy(&self) -> crate::store::ClientSecretPolicy<'_> {
        crate::store::ClientSecretPolicy {
            keys_namespace: &self.operator_namespace,
            keys_secret: &self.keys_secret,
            require_label: self.require_client_secret_label,
        }
    }

    /// Cookies get `Secure` only when browsers reach us over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}
