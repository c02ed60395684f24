//! The attacks of the security review (SECURITY.md, findings 1-4, 7, 9, 10), each performed by
//! someone with rights only inside one namespace, against the operator binary, the test
//! control plane and the Atlassian stand-in; each asserts the safe outcome.

mod support;

use std::collections::BTreeMap;

use confluence_auth_operator::crd::conditions;
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use confluence_auth_operator::oauth::state;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use support::*;
use testbed::atlassian::{Endpoint, Fault};

fn apply_yaml(env: &Env, ns: &str, yaml: &str) {
    let path = env.dir.path().join(format!("apply-{}.yaml", random_suffix()));
    std::fs::write(&path, yaml).unwrap();
    env.kubectl_ok(&["apply", "-n", ns, "-f", &path.to_string_lossy()]);
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

fn example(path: &str) -> String {
    std::fs::read_to_string(repo("examples").join(path)).unwrap()
}

/// A user auth manifest like `examples/user-auth.yaml` with another name and extra spec lines.
fn user_auth(name: &str, extra: &str) -> String {
    format!(
        "{}{extra}",
        example("user-auth.yaml").replace("name: alice", &format!("name: {name}"))
    )
}

/// Installation `acme` Ready (consented by Ada) in `ns`.
async fn ready_installation(env: &Env, ns: &str) -> Api<ConfluenceInstallation> {
    env.apply_examples(ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), ns);
    let link = link_of(&installations, "acme").await;
    env.atlassian.consent_as(ADA);
    let page = Browser::new().authorize(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    ready(&installations, "acme").await;
    installations
}

/// The condition `type_` of an object once it has `reason`.
async fn condition_with<K: CredentialResource>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    reason: &str,
) -> (String, String) {
    eventually(&format!("{name}: condition {type_} with reason {reason}"), || async {
        let obj = api.get(name).await.ok()?;
        let c = conditions::find(&obj.credential()?.conditions, type_)?;
        (c.reason == reason).then(|| (c.status.clone(), c.message.clone()))
    })
    .await
}

/// resourceVersion, owner uids and data of a Secret: what a takeover would change.
async fn fingerprint(secrets: &Api<Secret>, name: &str) -> (String, Vec<String>, BTreeMap<String, Vec<u8>>) {
    let s = secrets.get(name).await.unwrap();
    (
        s.resource_version().unwrap(),
        s.owner_references().iter().map(|r| r.uid.clone()).collect(),
        s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
    )
}

/// Finding 1: a user auth pointing its token Secret at another resource's, or named like an
/// installation (same vault name), takes nothing over: `SecretConflict`, no write, no link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_cannot_take_over_another_resources_secrets() {
    let (env, operator, ns) = with_operator("takeover").await;
    let installations = ready_installation(&env, &ns).await;
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    apply_yaml(&env, &ns, &example("user-auth.yaml"));
    let alice_link = link_of(&users, "alice").await;
    env.atlassian.consent_as(BOB);
    assert_eq!(Browser::new().authorize(&alice_link).await.status, 200);
    ready(&users, "alice").await;
    let alice_token = fingerprint(&secrets, "alice-token").await;
    let acme_vault = fingerprint(&secrets, "acme-vault").await;

    // Mallory names Alice's token Secret as hers.
    apply_yaml(&env, &ns, &user_auth("mallory", "  secretName: alice-token\n"));
    let (status, message) = condition_with(&users, "mallory", conditions::READY, "SecretConflict").await;
    assert_eq!(status, "False");
    assert!(message.contains("\"alice-token\""), "{message}");
    // A user auth named like the installation would write the installation's vault.
    apply_yaml(&env, &ns, &user_auth("acme", ""));
    let (_, message) = condition_with(&users, "acme", conditions::READY, "SecretConflict").await;
    assert!(message.contains("\"acme-vault\""), "{message}");
    for name in ["mallory", "acme"] {
        let obj = users.get(name).await.unwrap();
        assert!(
            obj.credential().unwrap().authorization_url.is_none(),
            "{name} got a link to consent into a taken Secret"
        );
        assert_eq!(obj.credential().unwrap().phase, Some(Phase::Failed));
    }
    // Deleting the intruders garbage-collects nothing of Alice's or the installation's.
    users.delete("mallory", &DeleteParams::default()).await.unwrap();
    users.delete("acme", &DeleteParams::default()).await.unwrap();
    eventually("the intruders to be gone", || async {
        let left = users.list(&Default::default()).await.unwrap().items.len();
        (left == 1).then_some(())
    })
    .await;
    assert_eq!(fingerprint(&secrets, "alice-token").await, alice_token);
    assert_eq!(fingerprint(&secrets, "acme-vault").await, acme_vault);
    ready(&installations, "acme").await;

    // A Secret created by hand under a name a pending consent would write, the token
    // Secret's or the vault's (written first): the consent stores nothing and says which
    // Secret is in the way. Ada both times: a consent that stored nothing holds no claim on
    // her account.
    for (user, taken, other) in [
        ("carol", "carol-token", "carol-vault"),
        ("dave", "dave-vault", "dave-token"),
    ] {
        apply_yaml(&env, &ns, &user_auth(user, ""));
        let link = link_of(&users, user).await;
        let mut browser = Browser::new();
        env.atlassian.consent_as(ADA);
        let callback = browser.consent(&link).await;
        apply_yaml(
            &env,
            &ns,
            &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {taken}\nstringData:\n  note: mine\n"),
        );
        let squatter = fingerprint(&secrets, taken).await;
        let page = browser.get(&callback).await;
        assert_eq!(page.status, 409, "{user}: {}", page.body);
        assert!(page.body.contains(taken), "{}", page.body);
        assert_eq!(fingerprint(&secrets, taken).await, squatter);
        assert!(secrets.get_opt(other).await.unwrap().is_none(), "{other} was written");
        let (status, message) = condition_with(&users, user, conditions::READY, "SecretConflict").await;
        assert_eq!(status, "False");
        assert!(message.contains(&format!("{taken:?}")), "{message}");
    }
    drop(operator);
}

/// Finding 2: of several browsers completing one link at once exactly one succeeds and only
/// one code is exchanged; two user auths binding one account at once cannot both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_used_once_and_an_account_binds_once_under_concurrency() {
    let (env, operator, ns) = with_operator("once").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let link = link_of(&installations, "acme").await;
    env.atlassian.consent_as(ADA);
    let mut flows = Vec::new();
    for _ in 0..6 {
        let mut browser = Browser::new();
        let callback = browser.consent(&link).await;
        flows.push((browser, callback));
    }
    let codes_before = env.atlassian.counters().grants("authorization_code");
    let answers = futures::future::join_all(flows.iter_mut().map(|(b, c)| b.get(c))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one callback may succeed: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 410), "{statuses:?}");
    assert_eq!(
        env.atlassian.counters().grants("authorization_code") - codes_before,
        1,
        "only the winning callback exchanges its code"
    );
    ready(&installations, "acme").await;

    // Two user auths, one Atlassian account, both callbacks at once.
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    apply_yaml(&env, &ns, &user_auth("bob-one", ""));
    apply_yaml(&env, &ns, &user_auth("bob-two", ""));
    let (one, two) = (link_of(&users, "bob-one").await, link_of(&users, "bob-two").await);
    env.atlassian.consent_as(BOB);
    let (mut b1, mut b2) = (Browser::new(), Browser::new());
    let (c1, c2) = (b1.consent(&one).await, b2.consent(&two).await);
    let (p1, p2) = tokio::join!(b1.get(&c1), b2.get(&c2));
    let mut statuses = [p1.status, p2.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", p1.body, p2.body);
    let loser = if p1.status == 409 { "bob-one" } else { "bob-two" };
    let winner = if loser == "bob-one" { "bob-two" } else { "bob-one" };
    let page = if p1.status == 409 { &p1 } else { &p2 };
    assert!(
        page.body.contains(&format!(
            "already authorized in this installation by ConfluenceUserAuth {winner}"
        )),
        "{}",
        page.body
    );
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    assert!(secrets.get_opt(&format!("{loser}-vault")).await.unwrap().is_none());
    assert!(secrets.get_opt(&format!("{loser}-token")).await.unwrap().is_none());
    ready(&users, winner).await;
    drop(operator);
}

/// Finding 3: a callback in flight while its resource is deleted and re-created under the same
/// name stores nothing into the new object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_in_flight_does_not_write_into_a_recreated_resource() {
    let (env, operator, ns) = with_operator("recreate").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let link = link_of(&installations, "acme").await;
    env.atlassian.consent_as(ADA);
    let mut browser = Browser::new();
    let callback = browser.consent(&link).await;
    // The code exchange takes 3 s: time enough to delete and re-create the resource.
    env.atlassian
        .fail_next(Endpoint::Token, 1, Fault::delay(std::time::Duration::from_millis(1500)));
    let tokens_before = env.atlassian.counters().calls(Endpoint::Token);
    let in_flight = tokio::spawn(async move { browser.get(&callback).await });
    eventually("the code exchange to be in flight", || async {
        (env.atlassian.counters().calls(Endpoint::Token) > tokens_before).then_some(())
    })
    .await;
    let old_uid = installations.get("acme").await.unwrap().uid();
    installations.delete("acme", &DeleteParams::default()).await.unwrap();
    eventually("acme to be gone", || async {
        installations.get_opt("acme").await.unwrap().is_none().then_some(())
    })
    .await;
    env.apply_examples(&ns, &["installation.yaml"]);
    let page = in_flight.await.unwrap();
    assert_eq!(page.status, 410, "{}", page.body);
    let recreated = installations.get("acme").await.unwrap();
    assert_ne!(recreated.uid(), old_uid);
    let status = recreated.credential().cloned().unwrap_or_default();
    assert!(
        status.installed_by.is_none() && status.phase != Some(Phase::Ready),
        "{status:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    for name in ["acme-vault", "acme-token"] {
        if let Some(secret) = secrets.get_opt(name).await.unwrap() {
            assert!(
                secret
                    .owner_references()
                    .iter()
                    .all(|r| Some(&r.uid) != recreated.uid().as_ref()),
                "{name} was written for the re-created object"
            );
        }
    }
    // The re-created object gets its own link and works.
    let fresh = link_of(&installations, "acme").await;
    assert_eq!(Browser::new().authorize(&fresh).await.status, 200);
    ready(&installations, "acme").await;
    drop(operator);
}

/// Finding 4: `clientSecretRef` never reads a Secret the operator manages or its keys; the
/// operator's own namespace is not served unless listed; with
/// `--require-client-secret-label` only labelled Secrets are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_refs_cannot_make_the_operator_read_its_own_secrets() {
    let (env, operator, ns) = with_operator("deputy").await;
    ready_installation(&env, &ns).await;
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let bot = |name: &str, secret: &str, key: &str| {
        example("service-account-installation.yaml")
            .replace("name: acme-bot", &format!("name: {name}"))
            .replace(
                "    name: atlassian-service-account\n",
                &format!("    name: {secret}\n"),
            )
            .replace("    key: client-secret\n", &format!("    key: {key}\n"))
    };
    apply_yaml(&env, &ns, &bot("reads-token", "acme-token", "access_token"));
    let (status, message) =
        condition_with(&installations, "reads-token", conditions::READY, "ClientSecretRefused").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("\"acme-token\"") && message.contains("manages"),
        "{message}"
    );
    apply_yaml(&env, &ns, &bot("reads-vault", "acme-vault", "envelope"));
    condition_with(&installations, "reads-vault", conditions::READY, "ClientSecretRefused").await;

    drop(operator);

    // The operator's own namespace (its keys) is not served when watching "all namespaces":
    // a resource there is left alone, while one applied later elsewhere is reconciled. Only on
    // the testbed: on a real cluster an all-namespaces operator would reconcile other tests'.
    if !env.real_cluster() {
        let everywhere = Operator::spawn_all_namespaces(&env, &env.operator_ns, &[]);
        everywhere.ready().await;
        apply_yaml(
            &env,
            &env.operator_ns,
            &bot("keys-thief", "confluence-auth-operator-keys", "key-1"),
        );
        apply_yaml(&env, &ns, &bot("later", "atlassian-service-account", "client-secret"));
        eventually("the later installation to be reconciled", || async {
            installations.get("later").await.ok().and_then(|o| o.status).map(|_| ())
        })
        .await;
        let in_operator_ns: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &env.operator_ns);
        assert!(
            in_operator_ns.get("keys-thief").await.unwrap().status.is_none(),
            "the operator reconciled a resource in its own namespace"
        );
        drop(everywhere);
    }

    // Stricter clusters: only Secrets labelled confluence-auth.dev/client-secret=true are read.
    let ns2 = env.namespace("strict").await;
    let strict = Operator::spawn_with(&env, &env.operator_ns, &["--require-client-secret-label"]);
    strict.ready().await;
    let strict_api: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns2);
    apply_yaml(&env, &ns2, &example("service-account-installation.yaml"));
    let (_, message) = condition_with(&strict_api, "acme-bot", conditions::READY, "ClientSecretRefused").await;
    assert!(message.contains("confluence-auth.dev/client-secret=true"), "{message}");
    env.kubectl_ok(&[
        "label",
        "-n",
        &ns2,
        "secret",
        "atlassian-service-account",
        "confluence-auth.dev/client-secret=true",
    ]);
    // Relabelling does not touch the installation: nudge it with an annotation.
    env.kubectl_ok(&["annotate", "-n", &ns2, "cfi", "acme-bot", "nudge=1"]);
    ready(&strict_api, "acme-bot").await;
    drop(strict);
}

/// Finding 7: a start link is a page that names where the grant lands, not a redirect; only a
/// POST from that page (its token matching its cookie) goes on to Atlassian; an installation's
/// `expectedAccountId` refuses another admin's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_shows_a_confirmation_page_and_needs_its_button() {
    let (env, operator, ns) = with_operator("confirm").await;
    ready_installation(&env, &ns).await;
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    apply_yaml(&env, &ns, &example("user-auth.yaml"));
    let link = link_of(&users, "alice").await;
    let authorize_before = env.atlassian.counters().calls(Endpoint::Authorize);
    let mut browser = Browser::new();
    let page = browser.get(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.location.is_none(), "a GET of the link must not redirect");
    for shown in [ns.as_str(), "ConfluenceUserAuth", "alice", "user_123", "acme"] {
        assert!(
            page.body.contains(&format!("<td>{shown}</td>")),
            "the page lacks {shown}: {}",
            page.body
        );
    }
    let cookie = page
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(
        cookie
            .iter()
            .any(|c| c.starts_with("cao_confirm=") && c.contains("SameSite=Strict") && c.contains("HttpOnly")),
        "{cookie:?}"
    );
    let form = ConfirmForm::parse(&page.body);
    let origin = link.split("/oauth/").next().unwrap();
    let action = format!("{origin}{}", form.action);
    // Another site posting the form (no cookie: SameSite=Strict) gets nowhere.
    let forged = Browser::new()
        .post_form(&action, &[("nonce", &form.nonce), ("csrf", &form.csrf)])
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    // A guessed token with the real cookie gets nowhere either.
    let mut guessing = Browser::new();
    guessing.cookies = browser.cookies.clone();
    let guessed = guessing
        .post_form(&action, &[("nonce", &form.nonce), ("csrf", "guess")])
        .await;
    assert_eq!(guessed.status, 403, "{}", guessed.body);
    assert_eq!(
        env.atlassian.counters().calls(Endpoint::Authorize),
        authorize_before,
        "nothing reached Atlassian yet"
    );
    let go = browser
        .post_form(&action, &[("nonce", &form.nonce), ("csrf", &form.csrf)])
        .await;
    assert_eq!(go.status, 303, "{}", go.body);
    assert!(go.location.unwrap().starts_with(&env.atlassian.url()));

    // An installation reserved for one admin account refuses a grant by another.
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    apply_yaml(
        &env,
        &ns,
        &example("installation.yaml")
            .replace("name: acme", "name: reserved")
            .replace(
                "  refreshBefore: 15m\n",
                &format!("  expectedAccountId: \"{ADA}\"\n  refreshBefore: 15m\n"),
            ),
    );
    let reserved = link_of(&installations, "reserved").await;
    env.atlassian.consent_as(BOB);
    let page = Browser::new().authorize(&reserved).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("reserved for another Atlassian account"),
        "{}",
        page.body
    );
    condition_with(&installations, "reserved", conditions::AUTHORIZED, "UnexpectedAccount").await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    assert!(secrets.get_opt("reserved-vault").await.unwrap().is_none());
    drop(operator);
}

/// Finding 9: the webhook serves links only for the namespaces the operator watches; a valid
/// nonce in another namespace gets the same answer as an unknown link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_outside_the_watched_namespaces_are_refused_like_unknown_ones() {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let (watched, other) = (env.namespace("watched").await, env.namespace("other").await);
    let operator = Operator::spawn_with(&env, &env.operator_ns, &["--namespaces", &watched]);
    operator.ready().await;
    env.apply_examples(&other, &["client-secret.yaml", "installation.yaml"]);
    // Give the out-of-scope installation a well-formed current link, as a status writer could.
    let (nonce, hash) = state::new_nonce();
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let in_other: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &other);
    in_other
        .patch_status(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "authorizationNonceHash": hash,
                "authorizationExpiresAt": expires.to_string(),
                "authorizationUrl": "x",
            }})),
        )
        .await
        .unwrap();
    let out_of_scope = Browser::new()
        .get(&format!(
            "{}/oauth/start/{other}/installation/acme?nonce={nonce}",
            operator.public_url
        ))
        .await;
    let unknown = Browser::new()
        .get(&format!(
            "{}/oauth/start/{watched}/installation/nobody?nonce={nonce}",
            operator.public_url
        ))
        .await;
    assert_eq!(out_of_scope.status, 404);
    assert_eq!(
        (out_of_scope.status, &out_of_scope.body),
        (unknown.status, &unknown.body)
    );
    drop(operator);
}

/// Finding 10: what status says about an account does not decide who may bind it; the claim
/// (and the vault) do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_edits_do_not_move_account_bindings() {
    let (env, operator, ns) = with_operator("anchor").await;
    ready_installation(&env, &ns).await;
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    apply_yaml(&env, &ns, &example("user-auth.yaml"));
    let link = link_of(&users, "alice").await;
    env.atlassian.consent_as(BOB);
    assert_eq!(Browser::new().authorize(&link).await.status, 200);
    ready(&users, "alice").await;
    // A status writer erases Alice's account, as if she had none.
    users
        .patch_status(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"accountId": null, "boundInstallation": null}})),
        )
        .await
        .unwrap();
    // Bob authorizing a second time in the installation is still refused (the claim holds).
    apply_yaml(&env, &ns, &user_auth("alice-again", ""));
    let again = link_of(&users, "alice-again").await;
    let page = Browser::new().authorize(&again).await;
    assert_eq!(page.status, 409, "{}", page.body);
    assert!(page.body.contains("by ConfluenceUserAuth alice"), "{}", page.body);
    drop(operator);
}
