//! What a user sees: `kubectl get cfi,cfua` (and `-o wide`) of Ready resources, and `kubectl
//! explain` of every spec and status field. The status is written directly through the status
//! subresource, as the operator would leave it.

mod support;

use confluence_auth_operator::crd::{self, ConfluenceInstallation, ConfluenceUserAuth};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::Env;

const INSTALLATION: &str = r#"
apiVersion: confluence-auth.dev/v1alpha1
kind: ConfluenceInstallation
metadata:
  name: acme
spec:
  grant: AuthorizationCode
  clientId: demo-client
  clientSecretRef: {name: atlassian-app, key: client-secret}
  scopes: [offline_access, read:me]
  site: acme.atlassian.net
"#;

const USER_AUTH: &str = r#"
apiVersion: confluence-auth.dev/v1alpha1
kind: ConfluenceUserAuth
metadata:
  name: alice
spec:
  installationRef: {name: acme}
  userId: user_123
"#;

/// An instant `minutes` from now, to the second, as RFC 3339 (what the operator writes).
fn instant_in(minutes: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(minutes);
    jiff::Timestamp::from_second(t.as_second()).unwrap().to_string()
}

/// The AGE cell of each data row of a non-wide listing (the last column), checked to be a few
/// seconds (two digits at most, so the column is exactly as wide as its `AGE` header).
fn ages(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("NAME"))
        .map(|l| {
            let age = l.split_whitespace().last().unwrap().to_string();
            let seconds = age.strip_suffix('s').and_then(|n| n.parse::<u32>().ok());
            assert!(seconds.is_some_and(|s| s < 100), "AGE {age:?} in:\n{listing}");
            age
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_ready_resources_with_readable_columns() {
    let env = Env::start().await;
    let ns = env.namespace("get").await;
    let dir = tempfile::tempdir().unwrap();
    for (file, yaml) in [("installation.yaml", INSTALLATION), ("user.yaml", USER_AUTH)] {
        let path = dir.path().join(file);
        std::fs::write(&path, yaml).unwrap();
        env.kubectl_ok(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
    }
    let expires = instant_in(27);
    let next_refresh = instant_in(12);
    let refresh_token_expires = instant_in(365 * 24 * 60);
    let now = instant_in(0);
    let ready = json!({"type": "Ready", "status": "True", "reason": "TokenIssued",
                       "message": "A current access token is in the token Secret.", "lastTransitionTime": now});
    let shared = json!({"phase": "Ready", "siteUrl": "https://acme.atlassian.net", "siteName": "acme",
                        "accessTokenExpiresAt": expires, "nextRefreshTime": next_refresh,
                        "refreshTokenExpiresAt": refresh_token_expires, "conditions": [ready]});
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    installations
        .patch_status(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": shared})),
        )
        .await
        .unwrap();
    let mut user_status = shared.clone();
    user_status["displayName"] = json!("Alice Example");
    user_status["accountId"] = json!("557058:a11ce");
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    users
        .patch_status(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": user_status})),
        )
        .await
        .unwrap();

    let listing = env.kubectl_ok(&["get", "cfi,cfua", "-n", &ns]);
    let age = ages(&listing);
    let expected = format!(
        "\
NAME                                              READY   PHASE   SITE                         EXPIRES                AGE
confluenceinstallation.confluence-auth.dev/acme   True    Ready   https://acme.atlassian.net   {expires}   {}

NAME                                           READY   PHASE   SITE                         ACCOUNT         EXPIRES                AGE
confluenceuserauth.confluence-auth.dev/alice   True    Ready   https://acme.atlassian.net   Alice Example   {expires}   {}
",
        age[0], age[1]
    );
    assert_eq!(listing, expected);
    assert!(!listing.contains("<invalid>"));

    let wide = env.kubectl_ok(&["get", "cfi,cfua", "-n", &ns, "-o", "wide"]);
    let wide_age: Vec<String> = wide
        .lines()
        .filter(|l| l.starts_with("confluence"))
        .map(|l| {
            l.split_whitespace()
                .nth(if l.contains("Alice Example") { 7 } else { 5 })
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(wide_age.len(), 2, "{wide}");
    let expected_wide = format!(
        "\
NAME                                              READY   PHASE   SITE                         EXPIRES                AGE   GRANT               NEXT REFRESH           REFRESH TOKEN EXPIRES
confluenceinstallation.confluence-auth.dev/acme   True    Ready   https://acme.atlassian.net   {expires}   {:<6}AuthorizationCode   {next_refresh}   {refresh_token_expires}

NAME                                           READY   PHASE   SITE                         ACCOUNT         EXPIRES                AGE   INSTALLATION   USER       ACCOUNT ID     NEXT REFRESH           REFRESH TOKEN EXPIRES
confluenceuserauth.confluence-auth.dev/alice   True    Ready   https://acme.atlassian.net   Alice Example   {expires}   {:<6}acme           user_123   557058:a11ce   {next_refresh}   {refresh_token_expires}
",
        wide_age[0], wide_age[1]
    );
    assert_eq!(wide, expected_wide);
    assert!(!wide.contains("<invalid>"));
}

/// The fields of `kubectl explain <path>` and whether each has a description line.
fn explained_fields(text: &str) -> Vec<(String, bool)> {
    let mut fields: Vec<(String, bool)> = Vec::new();
    let body = text
        .split("FIELDS:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no FIELDS in:\n{text}"));
    for line in body.lines() {
        if let Some(entry) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            if let Some((name, _type)) = entry.split_once('\t') {
                fields.push((name.to_string(), false));
            }
        } else if line.starts_with("    ")
            && !line.trim().is_empty()
            && let Some(last) = fields.last_mut()
        {
            last.1 = true;
        }
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_describes_every_spec_and_status_field() {
    let env = Env::start().await;
    for definition in crd::all() {
        let kind = definition.spec.names.kind.to_lowercase();
        let schema = serde_json::to_value(&definition.spec.versions[0].schema).unwrap();
        for part in ["spec", "status"] {
            let mut expected: Vec<String> = schema["openAPIV3Schema"]["properties"][part]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            expected.sort();
            let text = env.kubectl_ok(&["explain", &format!("{kind}.{part}")]);
            assert!(
                text.contains(&format!("FIELD: {part} <Object>")),
                "{kind}.{part}:\n{text}"
            );
            let fields = explained_fields(&text);
            let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(names, expected, "{kind}.{part}:\n{text}");
            for (name, described) in &fields {
                assert!(described, "{kind}.{part}.{name} has no description:\n{text}");
            }
        }
    }
    // One field read whole, so the test shows what a user gets.
    let text = env.kubectl_ok(&["explain", "confluenceuserauth.status.accessTokenExpiresAt"]);
    assert!(
        text.contains("When the access token in the token Secret expires (RFC 3339, the `EXPIRES`\n    column)."),
        "{text}"
    );
}
