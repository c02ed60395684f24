//! Every validation rule, with the exact message a user sees; and the CRD schema's patterns
//! agree with the Rust checks.

use confluence_auth_operator::crd::{
    ConfluenceInstallation, ConfluenceInstallationSpec, ConfluenceUserAuthSpec, GrantType, InstallationRef,
    SecretKeyRef,
};
use confluence_auth_operator::validation;
use kube::CustomResourceExt;
use rstest::rstest;

fn installation() -> ConfluenceInstallationSpec {
    ConfluenceInstallationSpec {
        grant: GrantType::AuthorizationCode,
        client_id: "client-abc".into(),
        client_secret_ref: SecretKeyRef {
            name: "atlassian-app".into(),
            key: "client-secret".into(),
        },
        scopes: vec![
            "offline_access".into(),
            "read:confluence-content.all".into(),
            "read:me".into(),
        ],
        site: None,
        expected_account_id: None,
        refresh_before: "15m".into(),
        health_check_interval: "15m".into(),
        secret_name: None,
    }
}

fn user() -> ConfluenceUserAuthSpec {
    ConfluenceUserAuthSpec {
        installation_ref: InstallationRef { name: "acme".into() },
        user_id: "user_123".into(),
        scopes: None,
        expected_account_id: None,
        refresh_before: None,
        health_check_interval: None,
        secret_name: None,
    }
}

fn installation_messages(spec: &ConfluenceInstallationSpec) -> Vec<String> {
    match validation::installation("acme", spec) {
        Ok(_) => vec![],
        Err(e) => e.violations.into_iter().map(|v| v.message).collect(),
    }
}

fn user_messages(spec: &ConfluenceUserAuthSpec, bound: Option<&str>) -> Vec<String> {
    match validation::user_auth("alice", spec, &installation(), bound) {
        Ok(_) => vec![],
        Err(e) => e.violations.into_iter().map(|v| v.message).collect(),
    }
}

#[test]
fn a_sound_installation_yields_its_policy() {
    let mut spec = installation();
    spec.site = Some("https://acme.atlassian.net/".into());
    spec.refresh_before = "10m".into();
    let policy = validation::installation("acme", &spec).unwrap();
    assert_eq!(policy.refresh_before.as_secs(), 600);
    assert_eq!(policy.health_check_interval.as_secs(), 900);
    assert_eq!(policy.site_host.as_deref(), Some("acme.atlassian.net"));
    assert_eq!(policy.token_secret_name, "acme-token");
}

#[rstest]
#[case::empty_client_id(|s: &mut ConfluenceInstallationSpec| s.client_id = " ".into(),
    "spec.clientId is empty: set it to the app's OAuth client id from developer.atlassian.com")]
#[case::empty_secret_ref(|s: &mut ConfluenceInstallationSpec| s.client_secret_ref.key = String::new(),
    "spec.clientSecretRef needs both name and key: name the Secret (same namespace) and the key that holds the client secret")]
#[case::no_offline_access(|s: &mut ConfluenceInstallationSpec| s.scopes = vec!["read:me".into()],
    "spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes")]
#[case::unknown_scope(|s: &mut ConfluenceInstallationSpec| s.scopes.push("read:jira-work".into()),
    "spec.scopes[3] \"read:jira-work\" is not a Confluence scope: use a classic scope such as read:confluence-content.all, read:me or offline_access, or a granular one such as read:page:confluence")]
#[case::client_id_too_long(|s: &mut ConfluenceInstallationSpec| s.client_id = "c".repeat(257),
    "spec.clientId is 257 characters long: shorten it to at most 256")]
#[case::too_many_scopes(|s: &mut ConfluenceInstallationSpec| s.scopes.extend((0..62).map(|i| format!("read:page{i}:confluence"))),
    "spec.scopes lists 65 scopes: list at most 64")]
#[case::empty_expected_account(|s: &mut ConfluenceInstallationSpec| s.expected_account_id = Some(" ".into()),
    "spec.expectedAccountId is empty: remove it or set it to the Atlassian account id that must consent")]
#[case::bad_site(|s: &mut ConfluenceInstallationSpec| s.site = Some("http://acme".into()),
    "spec.site \"http://acme\" is not a site address: write its host, e.g. acme.atlassian.net")]
#[case::client_credentials_without_site(|s: &mut ConfluenceInstallationSpec| s.grant = GrantType::ClientCredentials,
    "spec.site is required when spec.grant is ClientCredentials: set it to the service account's site, e.g. acme.atlassian.net")]
#[case::malformed_refresh_before(|s: &mut ConfluenceInstallationSpec| s.refresh_before = "15 minutes".into(),
    "spec.refreshBefore: \"15 minutes\" is not a duration: write whole hours, minutes and seconds such as 90s, 15m or 1h30m")]
#[case::refresh_before_too_long(|s: &mut ConfluenceInstallationSpec| s.refresh_before = "1h".into(),
    "spec.refreshBefore \"1h\" is out of range: use between 5s and 55m")]
#[case::health_check_too_often(|s: &mut ConfluenceInstallationSpec| s.health_check_interval = "9s".into(),
    "spec.healthCheckInterval \"9s\" is out of range: use between 10s and 24h")]
#[case::bad_secret_name(|s: &mut ConfluenceInstallationSpec| s.secret_name = Some("Acme_Token".into()),
    "spec.secretName \"Acme_Token\" is not a valid Secret name: use lower-case letters, digits, '-' and '.'")]
#[case::secret_name_is_the_vault(|s: &mut ConfluenceInstallationSpec| s.secret_name = Some("acme-vault".into()),
    "spec.secretName \"acme-vault\" is the name of the encrypted vault Secret: choose another name")]
fn each_installation_rule_names_the_field_and_the_fix(
    #[case] break_it: fn(&mut ConfluenceInstallationSpec),
    #[case] expected: &str,
) {
    let mut spec = installation();
    break_it(&mut spec);
    assert_eq!(installation_messages(&spec), vec![expected.to_string()]);
}

#[test]
fn empty_scopes_is_reported_with_the_missing_offline_access() {
    let mut spec = installation();
    spec.scopes.clear();
    assert_eq!(
        installation_messages(&spec),
        vec![
            "spec.scopes is empty: list the scopes to request, e.g. [offline_access, read:confluence-content.all]"
                .to_string(),
            "spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes".to_string(),
        ]
    );
}

#[test]
fn client_credentials_need_no_offline_access_but_a_site() {
    let mut spec = installation();
    spec.grant = GrantType::ClientCredentials;
    spec.scopes = vec!["read:confluence-content.all".into()];
    spec.site = Some("acme.atlassian.net".into());
    assert_eq!(installation_messages(&spec), Vec::<String>::new());
}

#[test]
fn all_violations_are_reported_at_once_and_joined_for_conditions() {
    let mut spec = installation();
    spec.client_id = String::new();
    spec.refresh_before = "2h".into();
    let err = validation::installation("acme", &spec).unwrap_err();
    let fields: Vec<&str> = err.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["spec.clientId", "spec.refreshBefore"]);
    assert_eq!(
        err.to_string(),
        "spec.clientId is empty: set it to the app's OAuth client id from developer.atlassian.com; spec.refreshBefore \"2h\" is out of range: use between 5s and 55m"
    );
}

#[test]
fn a_sound_user_auth_takes_the_installation_defaults() {
    let policy = validation::user_auth("alice", &user(), &installation(), Some("acme")).unwrap();
    assert_eq!(policy.scopes, installation().scopes);
    assert_eq!(policy.refresh_before.as_secs(), 900);
    assert_eq!(policy.token_secret_name, "alice-token");
}

#[rstest]
#[case::empty_installation_ref(|s: &mut ConfluenceUserAuthSpec| s.installation_ref.name = String::new(), None,
    vec!["spec.installationRef.name is empty: name the ConfluenceInstallation in this namespace", "spec.installationRef.name is immutable: delete this ConfluenceUserAuth and create a new one to authorize in another installation"])]
#[case::installation_ref_changed(|s: &mut ConfluenceUserAuthSpec| s.installation_ref.name = "globex".into(), None,
    vec!["spec.installationRef.name is immutable: delete this ConfluenceUserAuth and create a new one to authorize in another installation"])]
#[case::user_id_too_long(|s: &mut ConfluenceUserAuthSpec| s.user_id = "u".repeat(254), None,
    vec!["spec.userId is 254 characters long: shorten it to at most 253"])]
#[case::empty_user_expected_account(|s: &mut ConfluenceUserAuthSpec| s.expected_account_id = Some(String::new()), None,
    vec!["spec.expectedAccountId is empty: remove it or set it to the Atlassian account id that must consent"])]
#[case::empty_user_id(|s: &mut ConfluenceUserAuthSpec| s.user_id = String::new(), None,
    vec!["spec.userId is empty: set it to your application's identifier for this user, e.g. user_123"])]
#[case::scope_outside_installation(|s: &mut ConfluenceUserAuthSpec| s.scopes = Some(vec!["offline_access".into(), "write:confluence-content".into()]), None,
    vec!["spec.scopes[1] \"write:confluence-content\" is not among installation \"acme\"'s scopes: remove it, or add it to the installation's spec.scopes"])]
#[case::user_scopes_without_offline_access(|s: &mut ConfluenceUserAuthSpec| s.scopes = Some(vec!["read:me".into()]), None,
    vec!["spec.scopes must include offline_access (without it Atlassian issues no refresh token): add offline_access to spec.scopes"])]
#[case::unknown_user_scope(|s: &mut ConfluenceUserAuthSpec| s.scopes = Some(vec!["offline_access".into(), "admin".into()]), None,
    vec!["spec.scopes[1] \"admin\" is not a Confluence scope: use a classic scope such as read:confluence-content.all, read:me or offline_access, or a granular one such as read:page:confluence",
         "spec.scopes[1] \"admin\" is not among installation \"acme\"'s scopes: remove it, or add it to the installation's spec.scopes"])]
#[case::bad_refresh_before(|s: &mut ConfluenceUserAuthSpec| s.refresh_before = Some("4s".into()), None,
    vec!["spec.refreshBefore \"4s\" is out of range: use between 5s and 55m"])]
#[case::bad_health_interval(|s: &mut ConfluenceUserAuthSpec| s.health_check_interval = Some("1d".into()), None,
    vec!["spec.healthCheckInterval: \"1d\" is not a duration: write whole hours, minutes and seconds such as 90s, 15m or 1h30m"])]
#[case::secret_name_is_the_vault(|s: &mut ConfluenceUserAuthSpec| s.secret_name = Some("alice-vault".into()), None,
    vec!["spec.secretName \"alice-vault\" is the name of the encrypted vault Secret: choose another name"])]
fn each_user_auth_rule_names_the_field_and_the_fix(
    #[case] break_it: fn(&mut ConfluenceUserAuthSpec),
    #[case] _unused: Option<()>,
    #[case] expected: Vec<&str>,
) {
    let mut spec = user();
    break_it(&mut spec);
    assert_eq!(user_messages(&spec, Some("acme")), expected);
}

#[test]
fn installation_ref_is_free_until_a_credential_binds_it() {
    let mut spec = user();
    spec.installation_ref.name = "globex".into();
    assert_eq!(user_messages(&spec, None), Vec::<String>::new());
}

#[rstest]
#[case("offline_access", true)]
#[case("read:confluence-content.all", true)]
#[case("readonly:content.attachment:confluence", true)]
#[case("read:page:confluence", true)]
#[case("write:comment:confluence", true)]
#[case("read:space.permission:confluence", true)]
#[case("delete:attachment:confluence", true)]
#[case("read:jira-work", false)]
#[case("manage:page:confluence", false)]
#[case("read:Page:confluence", false)]
#[case("read::confluence", false)]
#[case("read:page:confluence:x", false)]
#[case("", false)]
fn the_schema_pattern_and_the_rust_check_agree_on_scopes(#[case] scope: &str, #[case] known: bool) {
    assert_eq!(validation::is_known_scope(scope), known);
    let pattern = regex::Regex::new(&validation::schema::scope_pattern()).unwrap();
    assert_eq!(pattern.is_match(scope), known, "schema pattern disagrees on {scope:?}");
}

#[rstest]
#[case("acme.atlassian.net", Some("acme.atlassian.net"))]
#[case("https://acme.atlassian.net", Some("acme.atlassian.net"))]
#[case("https://acme.atlassian.net/", Some("acme.atlassian.net"))]
#[case("acme.localhost", Some("acme.localhost"))]
#[case("acme.atlassian.net:8443", None)]
#[case("https://acme.atlassian.net:443/", None)]
#[case("http://acme.atlassian.net", None)]
#[case("acme", None)]
#[case("ACME.atlassian.net", None)]
#[case("acme.atlassian.net/wiki", None)]
fn the_schema_pattern_and_the_rust_check_agree_on_sites(#[case] site: &str, #[case] host: Option<&str>) {
    assert_eq!(validation::site_host(site).as_deref(), host);
    let crd = serde_json::to_value(ConfluenceInstallation::crd()).unwrap();
    let pattern =
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["site"]["pattern"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(
        regex::Regex::new(&pattern).unwrap().is_match(site),
        host.is_some(),
        "schema pattern disagrees on {site:?}"
    );
}
