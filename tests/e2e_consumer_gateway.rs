//! The per-namespace gateway on the test control plane: routes by path to the right
//! credential's token (the stand-in reports whose token it saw), follows a token Secret update
//! through its watch, admits only allow-listed ServiceAccount tokens (checked by TokenReview),
//! names unknown users and not-Ready phases, and never serves another namespace.
//!
//! The credentials and token Secrets are written here the way the operator writes them
//! (DESIGN.md section 2), so the gateway is tested on its own.

mod support;

use std::collections::BTreeMap;

use confluence_auth_operator::consumer::gateway::{Gateway, serve};
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;
use testbed::atlassian::{ServiceAccount, StandIn};

const SA_INSTALLATION: &str = "712020:cccccccc-0000-4000-8000-000000000003";

/// A service-account token of the stand-in for a new account `account_id`.
async fn token_for(atl: &StandIn, account_id: &str) -> String {
    let client_id = format!("client-{account_id}");
    if account_id != SA_INSTALLATION {
        atl.add_service_account(ServiceAccount {
            client_id: client_id.clone(),
            client_secret: "s".into(),
            account_id: account_id.into(),
            name: account_id.into(),
            site: "acme.atlassian.net".into(),
            scopes: vec![],
        });
    }
    let (id, secret) = if account_id == SA_INSTALLATION {
        ("demo-service-client".to_string(), "demo-service-secret")
    } else {
        (client_id, "s")
    };
    let resp: Value = reqwest::Client::new()
        .post(format!("{}/oauth/token", atl.url()))
        .json(&json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["access_token"].as_str().unwrap().to_string()
}

fn token_secret(name: &str, owner_kind: &str, owner: &str, token: &str, base: &str) -> Secret {
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let data: BTreeMap<String, ByteString> = [
        ("access_token", token),
        ("token_type", "Bearer"),
        ("expires_at", expires.as_str()),
        ("api_base_url", base),
        ("cloud_id", ACME_CLOUD_ID),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), "confluence-auth-operator".into()),
                ("confluence-auth.dev/owner-kind".into(), owner_kind.into()),
                ("confluence-auth.dev/owner-name".into(), owner.into()),
            ])),
            ..Default::default()
        },
        type_: Some("confluence-auth.dev/access-token".into()),
        data: Some(data),
        ..Default::default()
    }
}

async fn set_status<K>(api: &Api<K>, name: &str, phase: &str, secret: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase, "secretName": secret}})),
    )
    .await
    .unwrap();
}

fn user_yaml(name: &str, user_id: &str) -> String {
    format!(
        "apiVersion: confluence-auth.dev/v1alpha1\nkind: ConfluenceUserAuth\nmetadata:\n  name: {name}\nspec:\n  \
         installationRef:\n    name: acme\n  userId: {user_id}\n"
    )
}

fn apply(env: &Env, ns: &str, file: &str, yaml: &str) {
    let path = env.dir.path().join(file);
    std::fs::write(&path, yaml).unwrap();
    env.kubectl_ok(&["apply", "-n", ns, "-f", &path.to_string_lossy()]);
}

async fn call(gw: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{gw}{path}"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn account_behind(gw: &str, path: &str, bearer: &str) -> String {
    let (status, body) = call(gw, &format!("{path}/wiki/rest/api/user/current"), Some(bearer)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str::<Value>(&body).unwrap()["accountId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_users_and_installations_admits_only_allowed_callers_and_follows_refreshes() {
    let env = Env::start().await;
    let ns = env.namespace("gw").await;
    let other = env.namespace("gw-other").await;
    let base = format!("{}/ex/confluence/{ACME_CLOUD_ID}", env.atlassian.url());
    let atl = &env.atlassian;

    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    apply(&env, &ns, "alice.yaml", &user_yaml("alice", "user_123"));
    apply(&env, &ns, "bob.yaml", &user_yaml("bob", "user_456"));
    apply(&env, &ns, "carol.yaml", &user_yaml("carol", "user_789"));
    // The other namespace has an installation `beta` and its own `acme`.
    env.apply_examples(&other, &["client-secret.yaml", "installation.yaml"]);
    apply(
        &env,
        &other,
        "beta.yaml",
        &std::fs::read_to_string(repo("examples/installation.yaml"))
            .unwrap()
            .replace("name: acme", "name: beta"),
    );

    // A user auth past the schema (a wrong type) must not hide the others from the gateway.
    if let Some(api) = &env.api {
        api.set_enforce_schemas(false);
        apply(&env, &ns, "dave.yaml", &user_yaml("dave", "[0]"));
        api.set_enforce_schemas(true);
    }

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let pp = PostParams::default();
    let install_token = token_for(atl, SA_INSTALLATION).await;
    let alice_token = token_for(atl, "712020:alice").await;
    let bob_token = token_for(atl, "712020:bob").await;
    let foreign_token = token_for(atl, "712020:foreign").await;
    secrets
        .create(
            &pp,
            &token_secret("acme-token", "ConfluenceInstallation", "acme", &install_token, &base),
        )
        .await
        .unwrap();
    secrets
        .create(
            &pp,
            &token_secret("alice-token", "ConfluenceUserAuth", "alice", &alice_token, &base),
        )
        .await
        .unwrap();
    secrets
        .create(
            &pp,
            &token_secret("bob-token", "ConfluenceUserAuth", "bob", &bob_token, &base),
        )
        .await
        .unwrap();
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    set_status(&installations, "acme", "Ready", "acme-token").await;
    set_status(&users, "alice", "Ready", "alice-token").await;
    set_status(&users, "bob", "Ready", "bob-token").await;
    set_status(&users, "carol", "AwaitingAuthorization", "carol-token").await;
    let other_secrets: Api<Secret> = Api::namespaced(env.client.clone(), &other);
    let other_installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &other);
    for name in ["acme", "beta"] {
        let secret = format!("{name}-token");
        other_secrets
            .create(
                &pp,
                &token_secret(&secret, "ConfluenceInstallation", name, &foreign_token, &base),
            )
            .await
            .unwrap();
        set_status(&other_installations, name, "Ready", &secret).await;
    }

    env.kubectl_ok(&["create", "serviceaccount", "app", "-n", &ns]);
    env.kubectl_ok(&["create", "serviceaccount", "intruder", "-n", &ns]);
    let app = env
        .kubectl_ok(&["create", "token", "app", "-n", &ns])
        .trim()
        .to_string();
    let intruder = env
        .kubectl_ok(&["create", "token", "intruder", "-n", &ns])
        .trim()
        .to_string();

    let gateway = Gateway::start(env.client.clone(), &ns, vec![format!("system:serviceaccount:{ns}:app")])
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, gateway, std::future::pending()));

    // Callers: none, a forged token, a real but not allowed ServiceAccount.
    let path = "/acme/wiki/rest/api/user/current";
    assert_eq!(call(&gw, path, None).await.0, 401);
    assert_eq!(call(&gw, path, Some("eyJhbGciOi.forged.token")).await.0, 401);
    let (status, body) = call(&gw, path, Some(&intruder)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("system:serviceaccount:{ns}:intruder")), "{body}");

    // Routing: the installation and two users, each with its own token.
    assert_eq!(account_behind(&gw, "/acme", &app).await, SA_INSTALLATION);
    assert_eq!(account_behind(&gw, "/acme/users/user_123", &app).await, "712020:alice");
    assert_eq!(account_behind(&gw, "/acme/users/user_456", &app).await, "712020:bob");

    // An unknown user is a 404 naming the id; a user not Ready is a 503 naming the phase.
    let (status, body) = call(&gw, "/acme/users/user_999/wiki/rest/api/user/current", Some(&app)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("user_999"), "{body}");
    let (status, body) = call(&gw, "/acme/users/user_789/wiki/rest/api/user/current", Some(&app)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("AwaitingAuthorization"), "{body}");

    // Another namespace: its installation is unknown here, and its `acme` is not this `acme`.
    let (status, body) = call(&gw, "/beta/wiki/rest/api/user/current", Some(&app)).await;
    assert_eq!(status, 404, "{body}");

    // A refresh (the operator rewriting the token Secret) is used without a restart.
    let refreshed = token_for(atl, "712020:alice-refreshed").await;
    secrets
        .patch(
            "alice-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"access_token": base64_of(&refreshed)}})),
        )
        .await
        .unwrap();
    eventually("the refreshed token in use", || async {
        (account_behind(&gw, "/acme/users/user_123", &app).await == "712020:alice-refreshed").then_some(())
    })
    .await;
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
