//! The project's own CRDs (`../crds/`) enforced as a real API server enforces them: kubectl
//! 1.32 is refused with the message it prints against a cluster (the shape of
//! `kubectl/apply-invalid.log`), and with enforcement off a bad spec goes straight past the
//! schema (for tests of what the operator itself reports).

mod common;

use std::path::Path;

use common::Kubectl;
use testbed::apiserver::{ApiServer, ApiServerOptions};

fn crds() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds")
        .to_string_lossy()
        .into_owned()
}

async fn with_crds(options: ApiServerOptions) -> (ApiServer, Kubectl) {
    let server = ApiServer::start_with(options).await.unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["apply", "-f", &crds()]);
    k.ok(&["create", "namespace", "team-a"]);
    (server, k)
}

fn installation(scopes: &[&str], refresh_before: &str) -> String {
    let scopes: String = scopes.iter().map(|s| format!("    - {s}\n")).collect();
    format!(
        "apiVersion: confluence-auth.dev/v1alpha1\nkind: ConfluenceInstallation\nmetadata:\n  name: acme\nspec:\n  clientId: demo-client\n  clientSecretRef:\n    name: atlassian-app\n    key: client-secret\n  scopes:\n{scopes}  refreshBefore: {refresh_before}\n"
    )
}

fn user_auth(installation: &str) -> String {
    format!(
        "apiVersion: confluence-auth.dev/v1alpha1\nkind: ConfluenceUserAuth\nmetadata:\n  name: alice\nspec:\n  installationRef:\n    name: {installation}\n  userId: user_123\n"
    )
}

/// `kubectl apply` of one object into `team-a`: stdout on success, stderr on refusal.
fn apply(k: &Kubectl, yaml: &str) -> Result<String, String> {
    k.try_apply_in("team-a", "object.yaml", yaml)
}

/// The scope pattern, as the CRD declares it (the server quotes it in the message).
const SCOPE_PATTERN: &str = r"^(offline_access|read:me|read:account|search:confluence|read:confluence-content\.all|read:confluence-content\.summary|read:confluence-content\.permission|read:confluence-props|read:confluence-space\.summary|read:confluence-groups|read:confluence-user|write:confluence-content|write:confluence-file|write:confluence-props|write:confluence-space|write:confluence-groups|manage:confluence-configuration|readonly:content\.attachment:confluence|(read|write|delete):[a-z][a-z0-9.-]*:confluence)$";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_is_refused_as_a_real_server_refuses_it() {
    let (_server, k) = with_crds(ApiServerOptions::default()).await;
    assert_eq!(
        apply(&k, &installation(&["read:me"], "15m")),
        Err(
            "The ConfluenceInstallation \"acme\" is invalid: spec: Invalid value: \"object\": spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes"
                .into()
        )
    );
    assert_eq!(
        apply(&k, &installation(&["offline_access", "read:jira-work"], "15m")),
        Err(format!(
            "The ConfluenceInstallation \"acme\" is invalid: spec.scopes[1]: Invalid value: \"read:jira-work\": spec.scopes[1] in body should match '{SCOPE_PATTERN}'"
        ))
    );
    assert_eq!(
        apply(&k, &installation(&["offline_access", "read:me"], "15 minutes")),
        Err(
            "The ConfluenceInstallation \"acme\" is invalid: spec.refreshBefore: Invalid value: \"15 minutes\": spec.refreshBefore in body should match '^([0-9]+[hms])+$'"
                .into()
        )
    );
    // Several problems at once: kubectl lists each cause.
    assert_eq!(
        apply(&k, &installation(&["read:jira-work"], "soon")),
        Err(format!(
            "The ConfluenceInstallation \"acme\" is invalid: \n* spec: Invalid value: \"object\": spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes\n* spec.refreshBefore: Invalid value: \"soon\": spec.refreshBefore in body should match '^([0-9]+[hms])+$'\n* spec.scopes[0]: Invalid value: \"read:jira-work\": spec.scopes[0] in body should match '{SCOPE_PATTERN}'"
        ))
    );
    assert!(
        !k.run(&["get", "cfi", "acme", "-n", "team-a"]).status.success(),
        "nothing was stored"
    );

    // A sound one is stored with the schema's defaults filled in.
    assert_eq!(
        apply(&k, &installation(&["offline_access", "read:me"], "10m")),
        Ok("confluenceinstallation.confluence-auth.dev/acme created".into())
    );
    assert_eq!(
        k.ok(&[
            "get",
            "cfi",
            "acme",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.grant} {.spec.healthCheckInterval}"
        ]),
        "AuthorizationCode 15m"
    );

    // installationRef.name is immutable (a CEL transition rule with oldSelf).
    assert_eq!(
        apply(&k, &user_auth("acme")),
        Ok("confluenceuserauth.confluence-auth.dev/alice created".into())
    );
    assert_eq!(
        apply(&k, &user_auth("globex")),
        Err(
            "The ConfluenceUserAuth \"alice\" is invalid: spec.installationRef: Invalid value: \"object\": spec.installationRef.name is immutable: delete this ConfluenceUserAuth and create a new one to authorize in another installation"
                .into()
        )
    );
    assert_eq!(
        k.ok(&[
            "get",
            "cfua",
            "alice",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.installationRef.name}"
        ]),
        "acme"
    );
    // A merge patch and a status write are judged the same way.
    let patched = k.run(&[
        "patch",
        "cfi",
        "acme",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"scopes":["read:me"]}}"#,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&patched.stderr).trim(),
        "The ConfluenceInstallation \"acme\" is invalid: spec: Invalid value: \"object\": spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes"
    );
    let status = k.run(&[
        "patch",
        "cfi",
        "acme",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Sideways"}}"#,
    ]);
    assert!(!status.status.success());
    assert!(
        String::from_utf8_lossy(&status.stderr)
            .contains("status.phase: Unsupported value: \"Sideways\": supported values:"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enforcement_off_a_bad_spec_goes_past_the_schema() {
    let (server, k) = with_crds(ApiServerOptions {
        enforce_schemas: false,
        ..ApiServerOptions::default()
    })
    .await;
    assert_eq!(
        apply(&k, &installation(&["read:jira-work"], "soon")),
        Ok("confluenceinstallation.confluence-auth.dev/acme created".into())
    );
    // Turned back on, a later write that leaves the bad values alone is not refused for them
    // (validation ratcheting), one that touches them is.
    server.set_enforce_schemas(true);
    k.ok(&["label", "cfi", "acme", "-n", "team-a", "team=a"]);
    let touched = k.run(&[
        "patch",
        "cfi",
        "acme",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"refreshBefore":"later"}}"#,
    ]);
    assert!(!touched.status.success());
    // The spec changed, so its CEL rule is judged again; the untouched scope is not.
    assert_eq!(
        String::from_utf8_lossy(&touched.stderr).trim(),
        "The ConfluenceInstallation \"acme\" is invalid: \n* spec: Invalid value: \"object\": spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes\n* spec.refreshBefore: Invalid value: \"later\": spec.refreshBefore in body should match '^([0-9]+[hms])+$'"
    );
}
