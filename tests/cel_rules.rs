//! The CEL rules embedded in the CRDs (evaluated here with kube's client-side CEL, as an API
//! server would) fire on the objects they forbid and stay silent on sound ones; the messages
//! are written out here as users read them (not taken from the constants the rules are built
//! from), so a changed message fails a test.

use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth};
use kube::core::cel::{validate_cel, validate_cel_update};
use serde_json::json;

fn installation(spec: serde_json::Value) -> ConfluenceInstallation {
    serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1", "kind": "ConfluenceInstallation",
        "metadata": {"name": "acme", "namespace": "team-a"}, "spec": spec
    }))
    .unwrap()
}

fn user(installation: &str) -> ConfluenceUserAuth {
    serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1", "kind": "ConfluenceUserAuth",
        "metadata": {"name": "alice", "namespace": "team-a"},
        "spec": {"installationRef": {"name": installation}, "userId": "user_123"}
    }))
    .unwrap()
}

fn cel_messages(result: Result<(), kube::core::cel::ValidationErrors>) -> Vec<String> {
    result
        .err()
        .map(|e| e.into_vec().into_iter().map(|e| e.message).collect())
        .unwrap_or_default()
}

const SECRET: &str = "atlassian-app";

#[test]
fn a_sound_installation_passes_every_rule() {
    let cfi = installation(
        json!({"clientId": "c", "clientSecretRef": {"name": SECRET, "key": "k"}, "scopes": ["offline_access", "read:me"]}),
    );
    assert_eq!(cel_messages(validate_cel(&cfi)), Vec::<String>::new());
}

#[test]
fn authorization_code_without_offline_access_is_refused() {
    let cfi =
        installation(json!({"clientId": "c", "clientSecretRef": {"name": SECRET, "key": "k"}, "scopes": ["read:me"]}));
    assert_eq!(
        cel_messages(validate_cel(&cfi)),
        vec![
            "spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes"
        ]
    );
}

#[test]
fn client_credentials_need_a_site_but_no_offline_access() {
    let without_site = installation(
        json!({"grant": "ClientCredentials", "clientId": "c", "clientSecretRef": {"name": SECRET, "key": "k"}, "scopes": ["read:me"]}),
    );
    assert_eq!(
        cel_messages(validate_cel(&without_site)),
        vec![
            "spec.site is required when spec.grant is ClientCredentials: set it to the service account's site, e.g. acme.atlassian.net"
        ]
    );
    let with_site = installation(
        json!({"grant": "ClientCredentials", "site": "acme.atlassian.net", "clientId": "c", "clientSecretRef": {"name": SECRET, "key": "k"}, "scopes": ["read:me"]}),
    );
    assert_eq!(cel_messages(validate_cel(&with_site)), Vec::<String>::new());
}

#[test]
fn installation_ref_cannot_change() {
    assert_eq!(
        cel_messages(validate_cel_update(&user("acme"), &user("acme"))),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_messages(validate_cel_update(&user("globex"), &user("acme"))),
        vec![
            "spec.installationRef.name is immutable: delete this ConfluenceUserAuth and create a new one to authorize in another installation"
        ]
    );
}
