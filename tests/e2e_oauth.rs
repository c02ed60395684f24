//! End to end: the operator binary (`run`) against the test control plane (or `E2E_KUBECONFIG`)
//! and the Atlassian stand-in, driven with `kubectl apply` of the shipped `crds/` and
//! `examples/` and a browser-like client.

mod support;

use std::collections::BTreeMap;

use confluence_auth_operator::crd::conditions;
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use support::*;

fn text(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_then_a_user_authorize_through_the_browser_flow() {
    let (env, operator, ns) = with_operator("e2e").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let link = link_of(&installations, "acme").await;
    assert!(
        link.starts_with(&format!(
            "{}/oauth/start/{ns}/installation/acme?nonce=",
            operator.public_url
        )),
        "{link}"
    );
    let awaiting = installations.get("acme").await.unwrap();
    assert_eq!(awaiting.credential().unwrap().phase, Some(Phase::AwaitingAuthorization));

    env.atlassian.consent_as(ADA);
    let mut browser = Browser::new();
    let mut pages = Vec::new();
    let page = browser.authorize(&link).await;
    pages.push(page.body.clone());
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("https://acme.atlassian.net") && page.body.contains("Ada Admin"),
        "{}",
        page.body
    );
    assert_eq!(page.headers["cache-control"], "no-store");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");

    let cfi = ready(&installations, "acme").await;
    let status = cfi.credential().unwrap();
    assert_eq!(status.cloud_id.as_deref(), Some(ACME_CLOUD_ID));
    assert_eq!(status.site_url.as_deref(), Some("https://acme.atlassian.net"));
    assert_eq!(status.site_name.as_deref(), Some("acme"));
    assert_eq!(status.installed_by.as_deref(), Some(ADA));
    assert_eq!(status.secret_name.as_deref(), Some("acme-token"));
    assert!(status.authorization_url.is_none() && status.authorization_nonce_hash.is_none());
    assert!(
        status
            .granted_scopes
            .as_ref()
            .unwrap()
            .contains(&"offline_access".to_string())
    );
    // Atlassian ends a grant 365 days after the consent: the moment the stand-in issued the
    // authorization code, plus 365 × 86,400 s (a literal here, not the operator's constant).
    let consented = env
        .atlassian
        .issued_secrets()
        .into_iter()
        .find(|s| s.kind == testbed::atlassian::SecretKind::Code)
        .expect("a code was issued")
        .issued_at;
    let expires = status.access_token_expires_at.as_ref().unwrap().0;
    let refresh_dies = status.refresh_token_expires_at.as_ref().unwrap().0;
    let lived = refresh_dies.as_second() - consented.as_second();
    assert!(
        (365 * 86_400 - 5..=365 * 86_400 + 5).contains(&lived),
        "refresh token lives {lived} s from consent, not 365 days"
    );
    assert!(conditions::is_true(&status.conditions, conditions::READY));
    assert!(conditions::is_true(&status.conditions, conditions::AUTHORIZED));

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let vault = secrets.get("acme-vault").await.unwrap();
    assert_eq!(vault.type_.as_deref(), Some("confluence-auth.dev/vault"));
    assert_eq!(vault.data.as_ref().unwrap().keys().collect::<Vec<_>>(), ["envelope"]);
    let token = secrets.get("acme-token").await.unwrap();
    assert_eq!(token.type_.as_deref(), Some("confluence-auth.dev/access-token"));
    for secret in [&vault, &token] {
        let labels = secret.labels();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "confluence-auth-operator");
        assert_eq!(labels["confluence-auth.dev/owner-kind"], "ConfluenceInstallation");
        assert_eq!(labels["confluence-auth.dev/owner-name"], "acme");
        let owner = &secret.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ConfluenceInstallation", "acme", Some(true))
        );
        assert_eq!(Some(&owner.uid), cfi.metadata.uid.as_ref());
    }
    let data = text(&token);
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "access_token",
            "account_id",
            "api_base_url",
            "cloud_id",
            "expires_at",
            "scopes",
            "site_url",
            "token_type"
        ]
    );
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["cloud_id"], ACME_CLOUD_ID);
    assert_eq!(data["site_url"], "https://acme.atlassian.net");
    assert_eq!(
        data["api_base_url"],
        format!(
            "{}/ex/confluence/{ACME_CLOUD_ID}",
            env.atlassian.url().trim_end_matches('/')
        )
    );
    assert_eq!(data["account_id"], ADA);
    assert_eq!(data["scopes"], status.granted_scopes.as_ref().unwrap().join(" "));
    assert_eq!(
        data["expires_at"].parse::<jiff::Timestamp>().unwrap().as_second(),
        expires.as_second()
    );
    let issued = env.atlassian.issued_secrets();
    assert!(
        issued.iter().any(|s| s.value == data["access_token"]),
        "the token Secret holds the access token Atlassian issued"
    );
    let envelope = String::from_utf8_lossy(&vault.data.as_ref().unwrap()["envelope"].0).into_owned();
    for secret in &issued {
        assert!(!envelope.contains(&secret.value), "the vault holds only ciphertext");
        if secret.value != data["access_token"] {
            assert!(
                !data.values().any(|v| v.contains(&secret.value)),
                "the token Secret holds no refresh token or code"
            );
        }
    }

    // The used link is single use.
    let again = browser.get(&link).await;
    pages.push(again.body.clone());
    assert_eq!(again.status, 404, "{}", again.body);
    assert!(
        again.body.contains("unknown, has expired, or was already used"),
        "{}",
        again.body
    );

    // A user authorizes inside the installation.
    env.apply_examples(&ns, &["user-auth.yaml"]);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    let user_link = link_of(&users, "alice").await;
    assert!(
        user_link.contains(&format!("/oauth/start/{ns}/user/alice?nonce=")),
        "{user_link}"
    );
    env.atlassian.consent_as(ALICE);
    let page = Browser::new().authorize(&user_link).await;
    pages.push(page.body.clone());
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Alice Example"), "{}", page.body);
    let alice = ready(&users, "alice").await;
    let status = alice.status.as_ref().unwrap();
    assert_eq!(status.account_id.as_deref(), Some(ALICE));
    assert_eq!(status.display_name.as_deref(), Some("Alice Example"));
    assert_eq!(status.bound_installation.as_deref(), Some("acme"));
    assert_eq!(status.credential.cloud_id.as_deref(), Some(ACME_CLOUD_ID));
    assert!(conditions::is_true(
        &status.credential.conditions,
        conditions::INSTALLATION_READY
    ));
    let alice_token = text(&secrets.get("alice-token").await.unwrap());
    assert_eq!(alice_token["account_id"], ALICE);
    assert_eq!(
        secrets.get("alice-vault").await.unwrap().labels()["confluence-auth.dev/owner-kind"],
        "ConfluenceUserAuth"
    );

    assert_no_secret_leaked(&env, &operator, &ns, &pages).await;
}

/// Every token, code and refresh token the stand-in issued is absent from the operator's logs,
/// every status, every Event and every page.
async fn assert_no_secret_leaked(env: &Env, operator: &Operator, ns: &str, pages: &[String]) {
    // The Events are published after the status write: scan once they exist.
    eventually("the Authorized Events", || async {
        let names = env.kubectl_ok(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "reason=Authorized",
            "-o",
            "name",
        ]);
        (names.lines().count() >= 2).then_some(())
    })
    .await;
    let mut haystack = operator.logs();
    haystack.push_str(&pages.concat());
    haystack.push_str(&env.kubectl_ok(&["get", "cfi,cfua", "-n", ns, "-o", "yaml"]));
    haystack.push_str(&env.kubectl_ok(&["get", "events", "-n", ns, "-o", "yaml"]));
    let issued = env.atlassian.issued_secrets();
    assert!(!issued.is_empty());
    for secret in issued {
        assert!(
            !haystack.contains(&secret.value),
            "{:?} issued by the stand-in leaked",
            secret.kind
        );
    }
    // The wider scan: client secrets and master keys too, in /metrics and every Event as well.
    leaks::assert_no_leaks(env, &[operator], pages, OPERATOR_NS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_limited_to_some_namespaces_leaves_the_others_alone() {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let (watched, ignored) = (env.namespace("watched").await, env.namespace("ignored").await);
    let operator = Operator::spawn_with(
        &env,
        &env.operator_ns,
        &["--namespaces", &format!("elsewhere,{watched}")],
    );
    operator.ready().await;
    env.apply_examples(&ignored, &["client-secret.yaml", "installation.yaml"]);
    env.apply_examples(&watched, &["client-secret.yaml", "installation.yaml"]);
    let in_watched: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &watched);
    link_of(&in_watched, "acme").await;
    // The ignored one was applied first, so a reconcile of it would have landed by now.
    let in_ignored: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ignored);
    assert!(
        in_ignored.get("acme").await.unwrap().status.is_none(),
        "the operator touched a namespace outside --namespaces"
    );
}
