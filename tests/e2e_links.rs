//! Authorization links expire after `--link-ttl`: the expired link gets the invalid-link page
//! and the operator publishes a fresh one that works.

mod support;

use confluence_auth_operator::crd::{ConfluenceInstallation, CredentialResource};
use kube::api::Api;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_refused_and_replaced_by_a_working_one() {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace("ttl").await;
    let operator = Operator::spawn_with(&env, &env.operator_ns, &["--namespaces", &ns, "--link-ttl", "5s"]);
    operator.ready().await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let first = link_of(&installations, "acme").await;
    let expires = installations
        .get("acme")
        .await
        .unwrap()
        .credential()
        .and_then(|c| c.authorization_expires_at.clone())
        .unwrap()
        .0;
    let published = jiff::Timestamp::now();
    assert!(
        expires <= published + jiff::SignedDuration::from_secs(5),
        "the link lives longer than --link-ttl: {expires}"
    );
    // The operator replaces the link once it expires (no consent meanwhile).
    let second = eventually("a fresh link after the first expired", || async {
        installations
            .get("acme")
            .await
            .ok()
            .and_then(|o| o.credential().and_then(|c| c.authorization_url.clone()))
            .filter(|l| l != &first)
    })
    .await;
    let stale = Browser::new().get(&first).await;
    assert_eq!(stale.status, 404, "{}", stale.body);
    assert!(stale.body.contains("has expired"), "{}", stale.body);
    // The fresh one works (within its own 5 s, so the consent is driven right away).
    env.atlassian.consent_as(ADA);
    let page = Browser::new().authorize(&second).await;
    assert_eq!(page.status, 200, "{}", page.body);
    ready(&installations, "acme").await;
}
