//! The leak scan (issue 10, "Leaks"): every secret the Atlassian stand-in issued or received in a
//! test (authorization codes, access tokens, refresh tokens, client secrets) and the master keys,
//! searched for in every place the operator publishes something: its logs, all Events, all
//! custom resources (status included), `/metrics`, `/healthz`, `/readyz`, and the pages it served.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use super::{Env, Operator};
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource};

/// One secret to look for: what it is (named in a failure; the value never is) and its value.
#[derive(Debug, Clone)]
pub struct Needle {
    /// E.g. `RefreshToken issued to demo-client`.
    pub what: String,
    /// The exact value.
    pub value: String,
}

/// Every code, access token and refresh token the stand-in issued so far, and the client secrets
/// it knows (it received them on every token call).
pub fn stand_in_secrets(env: &Env) -> Vec<Needle> {
    let mut needles: Vec<Needle> = env
        .atlassian
        .issued_secrets()
        .into_iter()
        .map(|s| Needle {
            what: format!("{:?} issued to {}", s.kind, s.client_id),
            value: s.value,
        })
        .collect();
    for (what, value) in [
        ("the demo app's client secret", testbed::atlassian::DEMO_CLIENT_SECRET),
        (
            "the demo service account's client secret",
            testbed::atlassian::DEMO_SERVICE_CLIENT_SECRET,
        ),
    ] {
        needles.push(Needle {
            what: what.to_string(),
            value: value.to_string(),
        });
    }
    needles
}

/// The master keys in the keys Secret `namespace/name`, as base64 and as hex (the forms a
/// careless log line would print them in). Empty when the Secret is missing.
pub async fn master_keys(env: &Env, namespace: &str, name: &str) -> Vec<Needle> {
    use base64::Engine;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), namespace);
    let Some(secret) = secrets.get_opt(name).await.unwrap() else {
        return Vec::new();
    };
    let mut needles = Vec::new();
    for (entry, bytes) in secret.data.unwrap_or_default() {
        if !entry.starts_with("key-") {
            continue;
        }
        needles.push(Needle {
            what: format!("master key {entry} (base64)"),
            value: base64::engine::general_purpose::STANDARD.encode(&bytes.0),
        });
        needles.push(Needle {
            what: format!("master key {entry} (hex)"),
            value: hex::encode(&bytes.0),
        });
    }
    needles
}

/// The texts a secret must never appear in, each with where it came from.
#[derive(Debug, Default)]
pub struct Haystacks {
    places: Vec<(String, String)>,
}

impl Haystacks {
    /// Nothing collected yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one text (a page a test received, the log of an operator that is gone, …).
    pub fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.places.push((place.into(), text.into()));
    }

    /// How many texts were collected.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// A running operator's log, `/metrics`, `/healthz` and `/readyz`, and its answer to a bare
    /// callback.
    pub async fn add_operator(&mut self, operator: &Operator) {
        self.add(format!("log {}", operator.log.display()), operator.logs());
        let http = reqwest::Client::new();
        for path in ["/metrics", "/healthz", "/readyz"] {
            let url = format!("{}{path}", operator.metrics_url);
            if let Ok(answer) = http.get(&url).send().await {
                self.add(url, answer.text().await.unwrap_or_default());
            }
        }
        let url = format!("{}/oauth/callback", operator.public_url);
        if let Ok(answer) = http.get(&url).send().await {
            self.add(url, answer.text().await.unwrap_or_default());
        }
    }

    /// Every Event (both APIs, all namespaces), every custom resource as JSON (status
    /// included), and the confirmation page of every authorization link in a status (fetched
    /// from whichever operator published it, when it still runs).
    pub async fn add_cluster(&mut self, env: &Env) {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(env.client.clone());
        for event in events.list(&ListParams::default()).await.unwrap().items {
            let place = format!(
                "Event {}/{}",
                event.metadata.namespace.clone().unwrap_or_default(),
                event.metadata.name.clone().unwrap_or_default()
            );
            self.add(place, serde_json::to_string(&event).unwrap());
        }
        let core: Api<k8s_openapi::api::core::v1::Event> = Api::all(env.client.clone());
        if let Ok(list) = core.list(&ListParams::default()).await {
            for event in list.items {
                let place = format!("core Event {}", event.metadata.name.clone().unwrap_or_default());
                self.add(place, serde_json::to_string(&event).unwrap());
            }
        }
        let mut links = Vec::new();
        let installations: Api<ConfluenceInstallation> = Api::all(env.client.clone());
        for obj in installations.list(&ListParams::default()).await.unwrap().items {
            links.extend(obj.credential().and_then(|s| s.authorization_url.clone()));
            let place = format!("ConfluenceInstallation {}", kube::ResourceExt::name_any(&obj));
            self.add(place, serde_json::to_string(&obj).unwrap());
        }
        let users: Api<ConfluenceUserAuth> = Api::all(env.client.clone());
        for obj in users.list(&ListParams::default()).await.unwrap().items {
            links.extend(obj.credential().and_then(|s| s.authorization_url.clone()));
            let place = format!("ConfluenceUserAuth {}", kube::ResourceExt::name_any(&obj));
            self.add(place, serde_json::to_string(&obj).unwrap());
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for link in links {
            if let Ok(answer) = http.get(&link).send().await {
                self.add(format!("page {link}"), answer.text().await.unwrap_or_default());
            }
        }
    }

    /// Every leak, as "what in where" (never the value).
    pub fn leaks(&self, needles: &[Needle]) -> Vec<String> {
        let mut leaks = Vec::new();
        for needle in needles {
            for (place, text) in &self.places {
                if text.contains(&needle.value) {
                    leaks.push(format!("{} in {place}", needle.what));
                }
            }
        }
        leaks
    }

    /// Panics naming the place and the kind of secret (never the value) of every leak.
    pub fn assert_clean(&self, needles: &[Needle]) {
        assert!(!needles.is_empty(), "the leak scan has nothing to look for");
        let leaks = self.leaks(needles);
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

/// The whole scan for a test whose operators still run: their logs and endpoints, the cluster,
/// `pages` the test received, against everything the stand-in issued or received and the master
/// keys in `keys_namespace`. Returns how many secrets were looked for in how many texts.
pub async fn assert_no_leaks(
    env: &Env,
    operators: &[&Operator],
    pages: &[String],
    keys_namespace: &str,
) -> (usize, usize) {
    let mut haystacks = Haystacks::new();
    for operator in operators {
        haystacks.add_operator(operator).await;
    }
    haystacks.add_cluster(env).await;
    for (i, page) in pages.iter().enumerate() {
        haystacks.add(format!("page #{i} the test received"), page.clone());
    }
    let mut needles = stand_in_secrets(env);
    needles.extend(master_keys(env, keys_namespace, "confluence-auth-operator-keys").await);
    haystacks.assert_clean(&needles);
    (needles.len(), haystacks.len())
}
