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
    /// `spec.site` must be a host strictly under one of these (`--allowed-site-suffixes`).
    pub allowed_site_suffixes: Vec<String>,
}

impl Context {
    /// The OAuth `redirect_uri`: `<public-url>/oauth/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }

    /// Cookies get `Secure` only when browsers reach us over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}
