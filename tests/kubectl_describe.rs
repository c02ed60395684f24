//! What `kubectl describe cfi NAME` and `kubectl describe cfua NAME` (kubectl 1.32) show of
//! resources the operator brought to Ready: the conditions with their reasons and messages, the
//! authorization link while consent is awaited, the token's expiry, and the Events the operator
//! recorded (found, as on a real server, through a field selector on `involvedObject`). No
//! secret value appears anywhere in the output.

mod support;

use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus};
use kube::api::Api;
use support::*;

/// The lines of the `Events:` section, without its header and rule.
fn event_lines(described: &str) -> Vec<Vec<String>> {
    described
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .skip(3)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The `Conditions:` entries of a describe, each as (Type, Status, Reason, Message).
fn conditions(described: &str) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let mut fields: std::collections::BTreeMap<String, String> = Default::default();
    let mut inside = false;
    for line in described.lines() {
        let trimmed = line.trim_start();
        if trimmed == "Conditions:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        // Entries are indented four spaces under `  Conditions:`; anything shallower ends them.
        let indent = line.len() - trimmed.len();
        if indent < 4 {
            break;
        }
        if let Some((key, value)) = trimmed.split_once(':') {
            if key == "Last Transition Time" && !fields.is_empty() {
                out.push(take(&mut fields));
            }
            fields.insert(key.to_string(), value.trim().to_string());
        }
    }
    if !fields.is_empty() {
        out.push(take(&mut fields));
    }
    out
}

fn take(fields: &mut std::collections::BTreeMap<String, String>) -> (String, String, String, String) {
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let entry = (get("Type"), get("Status"), get("Reason"), get("Message"));
    fields.clear();
    entry
}

/// A status' conditions as (Type, Status, Reason, Message).
fn tuples(status: &CredentialStatus) -> Vec<(String, String, String, String)> {
    status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone()))
        .collect()
}

/// The value of a top-level `Status:` field line such as `  Phase:  Ready`.
fn field<'a>(described: &'a str, name: &str) -> Option<&'a str> {
    described
        .lines()
        .find_map(|l| l.strip_prefix(&format!("  {name}:")))
        .map(str::trim)
}

fn assert_no_secret(env: &Env, described: &str) {
    let issued = env.atlassian.issued_secrets();
    assert!(!issued.is_empty());
    for secret in issued {
        assert!(
            !described.contains(&secret.value),
            "{:?} issued by the stand-in shows in describe:\n{described}",
            secret.kind
        );
    }
    // The app's client secret (examples/client-secret.yaml) is only referenced, never shown.
    assert!(!described.contains("demo-secret"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_conditions_link_expiry_and_the_operators_events() {
    let (env, _operator, ns) = with_operator("describe").await;
    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let link = link_of(&installations, "acme").await;

    // Awaiting consent: the link is there to be opened.
    let awaiting = env.kubectl_ok(&["describe", "cfi", "acme", "-n", &ns]);
    assert!(
        awaiting.starts_with(&format!("Name:         acme\nNamespace:    {ns}\n")),
        "{awaiting}"
    );
    assert_eq!(field(&awaiting, "Phase"), Some("AwaitingAuthorization"), "{awaiting}");
    assert_eq!(field(&awaiting, "Authorization URL"), Some(link.as_str()), "{awaiting}");
    let waiting = conditions(&awaiting)
        .into_iter()
        .find(|c| c.0 == "Ready")
        .unwrap_or_else(|| panic!("no Ready condition in:\n{awaiting}"));
    assert_eq!(waiting.1, "False", "{awaiting}");
    assert_eq!(waiting.2, "AwaitingConsent", "{awaiting}");
    assert!(waiting.3.contains("status.authorizationUrl"), "{awaiting}");

    env.atlassian.consent_as(ADA);
    let page = Browser::new().authorize(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    ready(&installations, "acme").await;
    // Read together until they agree: describe, and the status it shows (later conditions land
    // a moment after Ready).
    let (described, status) = eventually(
        "describe listing the Authorized Event and the current conditions",
        || {
            let text = env.kubectl_ok(&["describe", "cfi", "acme", "-n", &ns]);
            let installations = installations.clone();
            async move {
                let status = installations.get("acme").await.ok()?.credential()?.clone();
                let authorized = event_lines(&text)
                    .iter()
                    .any(|e| e.get(1).map(String::as_str) == Some("Authorized"));
                (authorized && conditions(&text) == tuples(&status)).then_some((text, status))
            }
        },
    )
    .await;

    assert_eq!(field(&described, "Phase"), Some("Ready"), "{described}");
    assert_eq!(field(&described, "Authorization URL"), None, "{described}");
    assert_eq!(
        field(&described, "Access Token Expires At"),
        Some(
            status
                .access_token_expires_at
                .as_ref()
                .unwrap()
                .0
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
                .as_str()
        ),
        "{described}"
    );
    assert_eq!(
        field(&described, "Site URL"),
        Some("https://acme.atlassian.net"),
        "{described}"
    );
    let described_conditions = conditions(&described);
    assert_eq!(described_conditions, tuples(&status), "{described}");
    let current = described_conditions.iter().find(|c| c.0 == "Ready").unwrap();
    assert_eq!(
        (current.1.as_str(), current.2.as_str()),
        ("True", "TokenValid"),
        "{described}"
    );
    assert!(!current.3.is_empty(), "{described}");
    assert!(
        described_conditions
            .iter()
            .any(|c| c.0 == "Authorized" && c.1 == "True"),
        "{described}"
    );

    let events = event_lines(&described);
    let authorized = events
        .iter()
        .find(|e| e[1] == "Authorized")
        .unwrap_or_else(|| panic!("no Authorized Event in:\n{described}"));
    assert_eq!(authorized[0], "Normal", "{described}");
    assert_eq!(authorized[3], "confluence-auth-operator", "{described}");
    assert!(
        authorized[4].contains("acme.atlassian.net"),
        "the Event says what was authorized: {described}"
    );
    assert_no_secret(&env, &described);

    // A user auth inside it reads the same way, its account and installation named.
    env.apply_examples(&ns, &["user-auth.yaml"]);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    let user_link = link_of(&users, "alice").await;
    env.atlassian.consent_as(ALICE);
    assert_eq!(Browser::new().authorize(&user_link).await.status, 200);
    ready(&users, "alice").await;
    let described = eventually("describe of the user listing its Authorized Event", || {
        let text = env.kubectl_ok(&["describe", "cfua", "alice", "-n", &ns]);
        let authorized = event_lines(&text)
            .iter()
            .any(|e| e.get(1).map(String::as_str) == Some("Authorized"));
        async move { authorized.then_some(text) }
    })
    .await;
    assert_eq!(field(&described, "Phase"), Some("Ready"), "{described}");
    assert_eq!(field(&described, "Account Id"), Some(ALICE), "{described}");
    assert_eq!(field(&described, "Display Name"), Some("Alice Example"), "{described}");
    assert!(field(&described, "Access Token Expires At").is_some(), "{described}");
    assert!(
        conditions(&described)
            .iter()
            .any(|c| c.0 == "InstallationReady" && c.1 == "True" && !c.2.is_empty() && !c.3.is_empty()),
        "{described}"
    );
    // alice's own Events: her account authorized, not the installation's admin.
    let authorized = event_lines(&described)
        .into_iter()
        .find(|e| e[1] == "Authorized")
        .unwrap();
    assert!(
        authorized[4].contains(ALICE) && !authorized[4].contains(ADA),
        "{described}"
    );
    assert_no_secret(&env, &described);
}
