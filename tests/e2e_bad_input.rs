//! Every bad input to the OAuth web server: its status, its page text, and that nothing was
//! written to the API server for it (grant refusals write only an explanatory condition).

mod support;

use std::collections::BTreeMap;

use confluence_auth_operator::crd::conditions;
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource};
use confluence_auth_operator::oauth::state::{self, FlowTarget, ResourceKind};
use confluence_auth_operator::vault::KeyRing;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use support::*;
use testbed::atlassian::{Account, Endpoint, Fault};

const CAROL: &str = "557058:cccccccc-0000-4000-8000-00000000000c";

/// Secret names with their resourceVersions, plus the resourceVersions of both kinds.
async fn snapshot(env: &Env, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    for s in secrets.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    let cfis: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), ns);
    for o in cfis.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("cfi/{}", o.name_any()),
            o.resource_version().unwrap_or_default(),
        );
    }
    let cfuas: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), ns);
    for o in cfuas.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("cfua/{}", o.name_any()),
            o.resource_version().unwrap_or_default(),
        );
    }
    out
}

fn secrets_only(snapshot: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    snapshot
        .iter()
        .filter(|(k, _)| k.starts_with("secret/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn cluster_keys(env: &Env) -> KeyRing {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.operator_ns);
    let keys = secrets.get("confluence-auth-operator-keys").await.unwrap();
    KeyRing::from_secret_data(&keys.data.unwrap()).unwrap()
}

fn with_query(url: &str, drop: &str, add: &[(&str, &str)]) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    let kept: Vec<(String, String)> = parsed.query_pairs().into_owned().filter(|(k, _)| k != drop).collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .extend_pairs(add.iter().copied());
    parsed.into()
}

/// The one answer for an unknown, expired, used or out-of-scope start link.
const INVALID_LINK: &str = "unknown, has expired, or was already used";

fn nonce_of(link: &str) -> String {
    url::Url::parse(link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "nonce")
        .unwrap()
        .1
        .into_owned()
}

/// The link the operator publishes after `old` was consumed.
async fn next_link(installations: &Api<ConfluenceInstallation>, old: &str) -> String {
    eventually("a fresh link after a consumed one", || async {
        installations
            .get("acme")
            .await
            .ok()
            .and_then(|o| o.credential().and_then(|c| c.authorization_url.clone()))
            .filter(|l| l != old)
    })
    .await
}

struct Case {
    name: &'static str,
    status: u16,
    text: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_clear_page_and_writes_nothing() {
    let (env, operator, ns) = with_operator("bad").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let link = link_of(&installations, "acme").await;
    let acme = installations.get("acme").await.unwrap();
    let base = operator.public_url.clone();
    let keys = cluster_keys(&env).await;
    env.atlassian.consent_as(ADA);
    let mut pages = Vec::new();

    // Each case: a request built fresh, then its expected answer.
    let mut check = |case: Case, seen: Seen| {
        assert_eq!(seen.status, case.status, "{}: {}", case.name, seen.body);
        assert!(
            seen.body.contains(case.text),
            "{}: page lacks {:?}: {}",
            case.name,
            case.text,
            seen.body
        );
        assert_eq!(seen.headers["cache-control"], "no-store", "{}", case.name);
        pages.push(seen.body);
    };

    let before = snapshot(&env, &ns).await;
    let mut browser = Browser::new();
    check(
        Case {
            name: "missing state",
            status: 400,
            text: "no state parameter",
        },
        browser.get(&format!("{base}/oauth/callback?code=abc")).await,
    );
    check(
        Case {
            name: "garbled state",
            status: 400,
            text: "not started by this operator",
        },
        browser
            .get(&format!("{base}/oauth/callback?code=abc&state=%25%25garbage"))
            .await,
    );
    let target = FlowTarget {
        namespace: ns.clone(),
        kind: ResourceKind::Installation,
        name: "acme".into(),
        uid: acme.uid().unwrap(),
    };
    let nonce_hash = acme.credential().unwrap().authorization_nonce_hash.clone().unwrap();
    let forged = state::start(
        &KeyRing::generate("1").unwrap(),
        target.clone(),
        nonce_hash.clone(),
        jiff::Timestamp::now(),
    )
    .unwrap();
    check(
        Case {
            name: "forged state",
            status: 400,
            text: "not started by this operator",
        },
        browser
            .get(&format!("{base}/oauth/callback?code=abc&state={}", forged.state))
            .await,
    );
    let old = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(11);
    let expired = state::start(&keys, target.clone(), nonce_hash.clone(), old).unwrap();
    check(
        Case {
            name: "expired state",
            status: 400,
            text: "longer than 10 minutes",
        },
        browser
            .get(&format!("{base}/oauth/callback?code=abc&state={}", expired.state))
            .await,
    );

    // Real flows, then tampering with what comes back.
    let callback = browser.consent(&link).await;
    let mut cookieless = Browser::new();
    check(
        Case {
            name: "missing cookie",
            status: 400,
            text: "cookie is missing",
        },
        cookieless.get(&callback).await,
    );
    let mut other = Browser::new();
    let _ = other.consent(&link).await;
    check(
        Case {
            name: "cookie of another flow",
            status: 400,
            text: "cookie is missing",
        },
        other.get(&callback).await,
    );
    let mut wrong_value = Browser::new();
    wrong_value.cookies = browser
        .cookies
        .keys()
        .map(|k| (k.clone(), "guess".to_string()))
        .collect();
    check(
        Case {
            name: "cookie with a wrong value",
            status: 400,
            text: "does not belong",
        },
        wrong_value.get(&callback).await,
    );
    // Each tampered callback comes from a browser holding the flow's cookie (a failed callback
    // clears it).
    let holding = |b: &Browser| {
        let mut copy = Browser::new();
        copy.cookies = b.cookies.clone();
        copy
    };
    check(
        Case {
            name: "missing code",
            status: 400,
            text: "no authorization code",
        },
        holding(&browser).get(&with_query(&callback, "code", &[])).await,
    );
    check(
        Case {
            name: "other error",
            status: 403,
            text: "reported an error (server_error)",
        },
        holding(&browser)
            .get(&with_query(&callback, "code", &[("error", "server_error")]))
            .await,
    );
    check(
        Case {
            name: "oversized query",
            status: 414,
            text: "too long",
        },
        holding(&browser)
            .get(&format!("{callback}&pad={}", "x".repeat(5000)))
            .await,
    );
    let mut big_header = Browser::new();
    big_header.cookies.insert("padding".into(), "y".repeat(17 * 1024));
    check(
        Case {
            name: "oversized headers",
            status: 431,
            text: "too large",
        },
        big_header.get(&callback).await,
    );

    check(
        Case {
            name: "unknown kind",
            status: 404,
            text: INVALID_LINK,
        },
        browser
            .get(&format!("{base}/oauth/start/{ns}/robot/acme?nonce=x"))
            .await,
    );
    check(
        Case {
            name: "unknown namespace",
            status: 404,
            text: INVALID_LINK,
        },
        browser
            .get(&format!("{base}/oauth/start/nowhere/installation/acme?nonce=x"))
            .await,
    );
    check(
        Case {
            name: "unknown name",
            status: 404,
            text: INVALID_LINK,
        },
        browser
            .get(&format!("{base}/oauth/start/{ns}/installation/nobody?nonce=x"))
            .await,
    );
    check(
        Case {
            name: "wrong nonce",
            status: 404,
            text: INVALID_LINK,
        },
        browser.get(&with_query(&link, "nonce", &[("nonce", "wrong")])).await,
    );
    check(
        Case {
            name: "missing nonce",
            status: 400,
            text: "has no nonce",
        },
        browser.get(&with_query(&link, "nonce", &[])).await,
    );
    check(
        Case {
            name: "out-of-scope namespace (the operator's own)",
            status: 404,
            text: INVALID_LINK,
        },
        browser
            .get(&format!(
                "{base}/oauth/start/{}/installation/acme?nonce=x",
                env.operator_ns
            ))
            .await,
    );
    check(
        Case {
            name: "a POST without the page's token",
            status: 403,
            text: "did not come from the authorization link",
        },
        Browser::new()
            .post_form(
                &format!("{base}/oauth/start/{ns}/installation/acme"),
                &[("nonce", &nonce_of(&link))],
            )
            .await,
    );
    assert_eq!(
        snapshot(&env, &ns).await,
        before,
        "a bad request wrote to the API server"
    );

    // From here on a callback gets as far as consuming the link (single use is a write before
    // the code exchange): each case needs the current link, and writes no Secret.
    let secrets_before = secrets_only(&before);

    check(
        Case {
            name: "code Atlassian rejects",
            status: 400,
            text: "rejected the authorization code",
        },
        holding(&browser)
            .get(&with_query(&callback, "code", &[("code", "atl_code_bogus")]))
            .await,
    );
    let link = next_link(&installations, &link).await;
    let mut no_offline = Browser::new();
    env.atlassian.withhold_scope_next("offline_access");
    let callback_no_offline = no_offline.consent(&link).await;
    check(
        Case {
            name: "grant without offline_access",
            status: 400,
            text: "the grant has no offline_access",
        },
        no_offline.get(&callback_no_offline).await,
    );
    let link = next_link(&installations, &link).await;

    let mut declining = Browser::new();
    env.atlassian.decline_next_consent();
    let declined = declining.consent(&link).await;
    check(
        Case {
            name: "consent declined",
            status: 403,
            text: "declined at Atlassian (access_denied)",
        },
        declining.get(&declined).await,
    );

    let mut outage = Browser::new();
    let callback_5xx = outage.consent(&link).await;
    env.atlassian
        .fail_next(Endpoint::Token, 1, Fault::Status { status: 503 });
    check(
        Case {
            name: "Atlassian 5xx mid-callback",
            status: 503,
            text: "did not answer properly",
        },
        outage.get(&callback_5xx).await,
    );
    let link = next_link(&installations, &link).await;
    let mut slow = Browser::new();
    let callback_slow = slow.consent(&link).await;
    env.atlassian
        .fail_next(Endpoint::Token, 1, Fault::delay(std::time::Duration::from_secs(4)));
    check(
        Case {
            name: "Atlassian timeout mid-callback",
            status: 503,
            text: "did not answer properly",
        },
        slow.get(&callback_slow).await,
    );
    let link = next_link(&installations, &link).await;
    assert_eq!(
        secrets_only(&snapshot(&env, &ns).await),
        secrets_before,
        "a failed callback stored a Secret"
    );

    // A state for a deleted and re-created object (new uid) is refused; so is a replay.
    let mut recreate = Browser::new();
    let stale_callback = recreate.consent(&link).await;
    installations.delete("acme", &DeleteParams::default()).await.unwrap();
    eventually("acme to be gone", || async {
        installations.get_opt("acme").await.unwrap().is_none().then_some(())
    })
    .await;
    env.apply_examples(&ns, &["installation.yaml"]);
    let new_link = eventually("a new link", || async {
        installations
            .get("acme")
            .await
            .ok()
            .and_then(|o| o.credential().and_then(|c| c.authorization_url.clone()))
            .filter(|l| l != &link)
    })
    .await;
    let before = snapshot(&env, &ns).await;
    check(
        Case {
            name: "state of a re-created object",
            status: 410,
            text: "expired, was already used",
        },
        recreate.get(&stale_callback).await,
    );
    assert_eq!(secrets_only(&snapshot(&env, &ns).await), secrets_only(&before));
    let mut good = Browser::new();
    let good_callback = good.consent(&new_link).await;
    // A replay with the cookie still in hand (as a thief of both would have).
    let mut thief = holding(&good);
    assert_eq!(good.get(&good_callback).await.status, 200);
    let after_success = snapshot(&env, &ns).await;
    check(
        Case {
            name: "replayed callback",
            status: 410,
            text: "expired, was already used",
        },
        thief.get(&good_callback).await,
    );
    check(
        Case {
            name: "used start link",
            status: 404,
            text: INVALID_LINK,
        },
        good.get(&new_link).await,
    );
    assert_eq!(secrets_only(&snapshot(&env, &ns).await), secrets_only(&after_success));

    let issued = env.atlassian.issued_secrets();
    for page in &pages {
        for secret in &issued {
            assert!(!page.contains(&secret.value), "a page shows a {:?}", secret.kind);
        }
        assert!(!page.contains("state="), "a page echoes the state");
    }
    let logs = operator.logs();
    for secret in &issued {
        assert!(!logs.contains(&secret.value), "the log shows a {:?}", secret.kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_grants_store_no_credential_and_say_why() {
    let (env, operator, ns) = with_operator("refuse").await;
    env.atlassian.add_account(Account {
        account_id: CAROL.into(),
        name: "Carol Globex".into(),
        email: "carol@globex.example".into(),
        sites: vec!["globex.atlassian.net".into()],
    });
    env.apply_examples(&ns, &["client-secret.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    let apply = |yaml: String| {
        let path = env.dir.path().join(format!("{}.yaml", yaml.len()));
        std::fs::write(&path, yaml).unwrap();
        env.kubectl_ok(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
    };

    // A Ready installation: Ada Admin consents for acme (one consent, one site).
    apply(repo_text("examples/installation.yaml"));
    let acme_link = link_of(&installations, "acme").await;
    env.atlassian.consent_as(ADA);
    assert_eq!(Browser::new().authorize(&acme_link).await.status, 200);
    ready(&installations, "acme").await;

    // Ada consents again, for globex: her grant now covers several sites (as on Atlassian, from
    // several consents), and an installation with no spec.site cannot pick one.
    apply(
        repo_text("examples/installation.yaml")
            .replace("name: acme", "name: multi")
            .replace("  site: acme.atlassian.net\n", ""),
    );
    let link = link_of(&installations, "multi").await;
    env.atlassian.consent_site_next("globex.atlassian.net");
    let before = secrets_only(&snapshot(&env, &ns).await);
    let page = Browser::new().authorize(&link).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body
            .contains("covers several sites (acme.atlassian.net, globex.atlassian.net)"),
        "{}",
        page.body
    );
    assert_eq!(secrets_only(&snapshot(&env, &ns).await), before);
    let multi = installations.get("multi").await.unwrap();
    let authorized = conditions::find(&multi.credential().unwrap().conditions, conditions::AUTHORIZED).unwrap();
    assert_eq!(
        (authorized.status.as_str(), authorized.reason.as_str()),
        ("False", "SiteAmbiguous")
    );
    assert!(authorized.message.contains("set spec.site"), "{}", authorized.message);

    // Users who may not hold a credential in the Ready installation.
    let refusals = [
        (
            "wrong-account",
            format!("  expectedAccountId: \"{ADA}\"\n"),
            ALICE,
            403,
            "reserved for another Atlassian account",
            "UnexpectedAccount",
        ),
        (
            "no-site-access",
            String::new(),
            CAROL,
            403,
            "has no access to the installation&#39;s site https://acme.atlassian.net",
            "SiteAccessLost",
        ),
    ];
    for (name, extra, who, status, text, reason) in refusals {
        apply(format!(
            "{}{extra}",
            repo_text("examples/user-auth.yaml").replace("name: alice", &format!("name: {name}"))
        ));
        let link = link_of(&users, name).await;
        env.atlassian.consent_as(who);
        let before = secrets_only(&snapshot(&env, &ns).await);
        let page = Browser::new().authorize(&link).await;
        assert_eq!(page.status, status, "{name}: {}", page.body);
        assert!(page.body.contains(text), "{name}: {}", page.body);
        assert_eq!(
            secrets_only(&snapshot(&env, &ns).await),
            before,
            "{name} stored something"
        );
        let user = users.get(name).await.unwrap();
        let authorized = conditions::find(&user.credential().unwrap().conditions, conditions::AUTHORIZED).unwrap();
        assert_eq!(
            (authorized.status.as_str(), authorized.reason.as_str()),
            ("False", reason),
            "{name}"
        );
    }

    // One grant per Atlassian account per installation.
    apply(repo_text("examples/user-auth.yaml"));
    let alice = link_of(&users, "alice").await;
    env.atlassian.consent_as(ALICE);
    assert_eq!(Browser::new().authorize(&alice).await.status, 200);
    ready(&users, "alice").await;
    apply(repo_text("examples/user-auth.yaml").replace("name: alice", "name: alice-again"));
    let again = link_of(&users, "alice-again").await;
    let before = secrets_only(&snapshot(&env, &ns).await);
    let page = Browser::new().authorize(&again).await;
    assert_eq!(page.status, 409, "{}", page.body);
    assert!(
        page.body
            .contains("already authorized in this installation by ConfluenceUserAuth alice"),
        "{}",
        page.body
    );
    assert_eq!(secrets_only(&snapshot(&env, &ns).await), before);
    drop(operator);
}

fn repo_text(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}
