//! The stand-in's world: registered OAuth 2.0 (3LO) apps, Confluence Cloud sites, Atlassian
//! accounts and service accounts, plus the lookups the endpoints need (redirect URI matching,
//! the scope check, which sites an account can reach).
//!
//! Apps are "created in the developer console" here by `register_client`: a client id, a secret
//! and the callback URLs Atlassian would accept
//! (<https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/>). Service accounts carry
//! OAuth 2.0 client credentials bound to one site
//! (<https://support.atlassian.com/user-management/docs/create-oauth-2-0-credential-for-service-accounts>).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An OAuth 2.0 (3LO) app as registered in the developer console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientApp {
    /// The app's client id.
    pub client_id: String,
    /// The app's secret.
    pub client_secret: String,
    /// Callback URLs accepted as `redirect_uri`, compared exactly (as Atlassian does: no
    /// wildcard, no other port or path). Add one later with `StandIn::add_callback`.
    pub redirect_uris: Vec<String>,
    /// Scopes the app may request. Empty: any known Confluence scope (see [`is_known_scope`]).
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A Confluence Cloud site (one "cloud", one cloud id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// The site's host, like `acme.atlassian.net`.
    pub host: String,
    /// Its cloud id (a UUID in real life; any string here).
    pub cloud_id: String,
    /// Its display name, like `acme`.
    pub name: String,
}

impl Site {
    /// `https://<host>`, as accessible-resources reports it.
    pub fn url(&self) -> String {
        format!("https://{}", self.host)
    }
}

/// An Atlassian account (a person).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The Atlassian account id.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Hosts of the sites this account can use. Empty: a guest with no site.
    #[serde(default)]
    pub sites: Vec<String>,
}

/// A service account's OAuth 2.0 credential (client credentials), bound to one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// The credential's client id.
    pub client_id: String,
    /// The credential's client secret.
    pub client_secret: String,
    /// The service account's Atlassian account id.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// Host of the site the credential is for.
    pub site: String,
    /// Scopes the credential carries. Empty: `read:confluence-user read:me`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl ServiceAccount {
    /// The scopes a token for this credential carries.
    pub fn effective_scopes(&self) -> Vec<String> {
        if self.scopes.is_empty() {
            vec!["read:confluence-user".into(), "read:me".into()]
        } else {
            self.scopes.clone()
        }
    }
}

/// Who an access token speaks for, as the identity endpoints show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Account id.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// Email (empty for a service account).
    pub email: String,
    /// `atlassian` for a person, `app` for a service account.
    pub account_type: &'static str,
}

/// Everything registered so far.
#[derive(Debug, Default)]
pub struct World {
    clients: BTreeMap<String, ClientApp>,
    service_accounts: BTreeMap<String, ServiceAccount>,
    sites: BTreeMap<String, Site>,
    accounts: BTreeMap<String, Account>,
    /// Account ids in the order they were added (the first one consents by default).
    account_order: Vec<String>,
}

impl World {
    /// Adds or replaces an app.
    pub fn register_client(&mut self, app: ClientApp) {
        self.clients.insert(app.client_id.clone(), app);
    }

    /// Adds or replaces a service-account credential.
    pub fn add_service_account(&mut self, sa: ServiceAccount) {
        self.service_accounts.insert(sa.client_id.clone(), sa);
    }

    /// Adds or replaces a site.
    pub fn add_site(&mut self, site: Site) {
        self.sites.insert(site.host.to_ascii_lowercase(), site);
    }

    /// Adds or replaces an account.
    pub fn add_account(&mut self, account: Account) {
        if !self.account_order.contains(&account.account_id) {
            self.account_order.push(account.account_id.clone());
        }
        self.accounts.insert(account.account_id.clone(), account);
    }

    /// The app with this client id.
    pub fn client(&self, client_id: &str) -> Option<&ClientApp> {
        self.clients.get(client_id)
    }

    /// Adds a callback URL to a registered app, as a developer does in the console. False when
    /// no app has this client id.
    pub fn add_callback(&mut self, client_id: &str, redirect_uri: &str) -> bool {
        let Some(app) = self.clients.get_mut(client_id) else {
            return false;
        };
        if !app.redirect_uris.iter().any(|r| r == redirect_uri) {
            app.redirect_uris.push(redirect_uri.to_owned());
        }
        true
    }

    /// The service-account credential with this client id.
    pub fn service_account(&self, client_id: &str) -> Option<&ServiceAccount> {
        self.service_accounts.get(client_id)
    }

    /// The account with this id.
    pub fn account(&self, account_id: &str) -> Option<&Account> {
        self.accounts.get(account_id)
    }

    /// Every account, in the order they were added.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.account_order.iter().filter_map(|id| self.accounts.get(id))
    }

    /// The first account added: who consents when the test has not chosen.
    pub fn default_account(&self) -> Option<&str> {
        self.account_order.first().map(String::as_str)
    }

    /// The site with this host (case-insensitive, port ignored).
    pub fn site_by_host(&self, host: &str) -> Option<&Site> {
        let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        self.sites.get(&host)
    }

    /// Hosts of every site, sorted.
    pub fn sites(&self) -> Vec<String> {
        self.sites.values().map(|s| s.host.clone()).collect()
    }

    /// The site with this cloud id.
    pub fn site_by_cloud_id(&self, cloud_id: &str) -> Option<&Site> {
        self.sites.values().find(|s| s.cloud_id == cloud_id)
    }

    /// Hosts of the known sites an account can use.
    pub fn sites_of(&self, account_id: &str) -> Vec<String> {
        self.account(account_id)
            .map(|a| {
                a.sites
                    .iter()
                    .filter_map(|h| self.site_by_host(h).map(|s| s.host.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The identity behind an account id: a person or a service account.
    pub fn identity(&self, account_id: &str) -> Option<Identity> {
        if let Some(a) = self.account(account_id) {
            return Some(Identity {
                account_id: a.account_id.clone(),
                name: a.name.clone(),
                email: a.email.clone(),
                account_type: "atlassian",
            });
        }
        self.service_accounts
            .values()
            .find(|sa| sa.account_id == account_id)
            .map(|sa| Identity {
                account_id: sa.account_id.clone(),
                name: sa.name.clone(),
                email: String::new(),
                account_type: "app",
            })
    }
}

impl ClientApp {
    /// Whether `redirect_uri` is exactly one of the registered callback URLs.
    pub fn allows_redirect(&self, redirect_uri: &str) -> bool {
        self.redirect_uris.iter().any(|registered| registered == redirect_uri)
    }

    /// The first requested scope this app may not request, if any.
    pub fn disallowed_scope<'a>(&self, requested: &'a [String]) -> Option<&'a str> {
        requested
            .iter()
            .find(|s| {
                if self.scopes.is_empty() {
                    !is_known_scope(s)
                } else {
                    !self.scopes.contains(s)
                }
            })
            .map(String::as_str)
    }
}

/// Client id of the demo app ([`seed_demo`]).
pub const DEMO_CLIENT_ID: &str = "demo-client";
/// Client secret of the demo app.
pub const DEMO_CLIENT_SECRET: &str = "demo-secret";
/// Client id of the demo service account.
pub const DEMO_SERVICE_CLIENT_ID: &str = "demo-service-client";
/// Client secret of the demo service account.
pub const DEMO_SERVICE_CLIENT_SECRET: &str = "demo-service-secret";

/// Account id of the demo world's admin, Ada Admin (acme and globex): she installs the app,
/// as the installation `acme` of `examples/` needs.
pub const DEMO_ADMIN_ACCOUNT_ID: &str = "557058:aaaaaaaa-0000-4000-8000-000000000001";
/// Display name of [`DEMO_ADMIN_ACCOUNT_ID`].
pub const DEMO_ADMIN_NAME: &str = "Ada Admin";
/// Account id of the demo world's user Alice (acme only): she consents for the user auth
/// `alice` of `examples/`.
pub const DEMO_USER_ACCOUNT_ID: &str = "557058:bbbbbbbb-0000-4000-8000-000000000002";
/// Display name of [`DEMO_USER_ACCOUNT_ID`].
pub const DEMO_USER_NAME: &str = "Alice Example";

/// Seeds the demo world (described in `testbed/ATLASSIAN.md`): the app `demo-client`, the
/// sites `acme.atlassian.net` and `globex.atlassian.net`, two people (Ada Admin and Alice
/// Example, named for the resources of `examples/` they consent for) and a service account.
pub fn seed_demo(world: &mut World) {
    world.register_client(ClientApp {
        client_id: DEMO_CLIENT_ID.into(),
        client_secret: DEMO_CLIENT_SECRET.into(),
        // Callback URLs are exact, so whoever runs an operator against the demo world adds its
        // own (`StandIn::add_callback`, or `POST /_testbed/callbacks`).
        redirect_uris: Vec::new(),
        scopes: Vec::new(),
    });
    world.add_site(Site {
        host: "acme.atlassian.net".into(),
        cloud_id: "11111111-1111-4111-8111-111111111111".into(),
        name: "acme".into(),
    });
    world.add_site(Site {
        host: "globex.atlassian.net".into(),
        cloud_id: "22222222-2222-4222-8222-222222222222".into(),
        name: "globex".into(),
    });
    world.add_account(Account {
        account_id: DEMO_ADMIN_ACCOUNT_ID.into(),
        name: DEMO_ADMIN_NAME.into(),
        email: "ada@acme.example".into(),
        sites: vec!["acme.atlassian.net".into(), "globex.atlassian.net".into()],
    });
    world.add_account(Account {
        account_id: DEMO_USER_ACCOUNT_ID.into(),
        name: DEMO_USER_NAME.into(),
        email: "alice@acme.example".into(),
        sites: vec!["acme.atlassian.net".into()],
    });
    world.add_service_account(ServiceAccount {
        client_id: DEMO_SERVICE_CLIENT_ID.into(),
        client_secret: DEMO_SERVICE_CLIENT_SECRET.into(),
        account_id: "712020:cccccccc-0000-4000-8000-000000000003".into(),
        name: "Demo Service Account".into(),
        site: "acme.atlassian.net".into(),
        scopes: vec![
            "read:confluence-user".into(),
            "read:me".into(),
            "read:confluence-content.all".into(),
        ],
    });
}

/// Classic Confluence scopes (<https://developer.atlassian.com/cloud/confluence/scopes-for-oauth-2-3LO-and-forge-apps/>)
/// plus the user-identity and refresh scopes.
const CLASSIC_SCOPES: &[&str] = &[
    "offline_access",
    "read:me",
    "read:account",
    "read:confluence-content.all",
    "read:confluence-content.summary",
    "read:confluence-content.permission",
    "read:confluence-space.summary",
    "read:confluence-props",
    "read:confluence-user",
    "read:confluence-groups",
    "write:confluence-content",
    "write:confluence-space",
    "write:confluence-file",
    "write:confluence-props",
    "write:confluence-groups",
    "readonly:content.attachment:confluence",
    "search:confluence",
    "manage:confluence-configuration",
];

/// Whether `scope` is a Confluence scope: a classic one or a granular `verb:thing:confluence`.
pub fn is_known_scope(scope: &str) -> bool {
    if CLASSIC_SCOPES.contains(&scope) {
        return true;
    }
    let parts: Vec<&str> = scope.split(':').collect();
    parts.len() == 3
        && parts[2] == "confluence"
        && parts[..2]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_match_exactly() {
        let app = ClientApp {
            client_id: "app".into(),
            client_secret: "secret".into(),
            redirect_uris: vec!["http://127.0.0.1:8080/oauth/callback".into()],
            scopes: Vec::new(),
        };
        assert!(app.allows_redirect("http://127.0.0.1:8080/oauth/callback"));
        for other in [
            "http://127.0.0.1:8081/oauth/callback",
            "http://127.0.0.1/oauth/callback",
            "http://127.0.0.1:8080/oauth/callback/",
            "http://127.0.0.1:8080/oauth/callbackx",
            "http://localhost:8080/oauth/callback",
            "HTTP://127.0.0.1:8080/oauth/callback",
            "http://127.0.0.1:8080/oauth/callback?x=1",
        ] {
            assert!(!app.allows_redirect(other), "{other}");
        }
    }

    #[test]
    fn known_scopes() {
        assert!(is_known_scope("read:confluence-user"));
        assert!(is_known_scope("read:page:confluence"));
        assert!(!is_known_scope("read:jira-work"));
        assert!(!is_known_scope("read::confluence"));
    }
}
