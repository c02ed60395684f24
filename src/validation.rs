//! Spec validation the reconcilers run before anything else.
//!
//! The CRD schema carries the same rules (patterns, enums and CEL `x-kubernetes-validations`),
//! but not every API server evaluates CEL, so the operator checks again here. Every violation
//! names the field and the fix, and all violations are reported at once.

use std::fmt;
use std::time::Duration;

use crate::crd::{ConfluenceInstallationSpec, ConfluenceUserAuthSpec, GrantType};
use crate::duration;

/// Messages shared by the CEL rules in the CRDs and by this module, so a user sees the same
/// words whichever side refuses the spec.
pub mod messages {
    /// `offline_access` missing from an `AuthorizationCode` installation's scopes.
    pub const OFFLINE_ACCESS_REQUIRED: &str = "spec.scopes must include offline_access when spec.grant is AuthorizationCode (without it Atlassian issues no refresh token): add offline_access to spec.scopes";
    /// A user auth's `installationRef.name` is empty.
    pub const INSTALLATION_REF_EMPTY: &str =
        "spec.installationRef.name is empty: name the ConfluenceInstallation in this namespace";
    /// `site` missing for `ClientCredentials`.
    pub const SITE_REQUIRED_FOR_CLIENT_CREDENTIALS: &str = "spec.site is required when spec.grant is ClientCredentials: set it to the service account's site, e.g. acme.atlassian.net";
    /// `installationRef.name` changed after creation.
    pub const INSTALLATION_REF_IMMUTABLE: &str = "spec.installationRef.name is immutable: delete this ConfluenceUserAuth and create a new one to authorize in another installation";
}

/// CEL rules and schema fragments the CRD types embed.
pub mod schema {
    use schemars::{Schema, SchemaGenerator, json_schema};

    /// `offline_access` is required unless the grant is `ClientCredentials`.
    pub const RULE_OFFLINE_ACCESS: &str =
        "(has(self.grant) && self.grant == 'ClientCredentials') || 'offline_access' in self.scopes";
    /// `site` is required for `ClientCredentials`.
    pub const RULE_SITE_FOR_CLIENT_CREDENTIALS: &str =
        "!has(self.grant) || self.grant != 'ClientCredentials' || has(self.site)";
    /// Transition rule: the reference keeps its name.
    pub const RULE_SAME_NAME: &str = "self.name == oldSelf.name";

    /// The item pattern every requested scope must match (built from [`super::CLASSIC_SCOPES`]).
    pub fn scope_pattern() -> String {
        let classic: Vec<String> = super::CLASSIC_SCOPES.iter().map(|s| s.replace('.', "\\.")).collect();
        format!(
            "^({}|(read|write|delete):[a-z][a-z0-9.-]*:confluence)$",
            classic.join("|")
        )
    }

    /// Schema of a scope list.
    pub fn scopes(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {"type": "string", "pattern": scope_pattern()}
        })
    }

    /// Schema of an optional scope list.
    pub fn optional_scopes(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = scopes(generator);
        schema.insert("nullable".into(), true.into());
        schema
    }
}

/// Classic (non-granular) scopes a Confluence app may request, plus the identity and refresh
/// scopes. Granular scopes (`read:page:confluence`, …) are matched by shape instead.
pub const CLASSIC_SCOPES: &[&str] = &[
    "offline_access",
    "read:me",
    "read:account",
    "search:confluence",
    "read:confluence-content.all",
    "read:confluence-content.summary",
    "read:confluence-content.permission",
    "read:confluence-props",
    "read:confluence-space.summary",
    "read:confluence-groups",
    "read:confluence-user",
    "write:confluence-content",
    "write:confluence-file",
    "write:confluence-props",
    "write:confluence-space",
    "write:confluence-groups",
    "manage:confluence-configuration",
    "readonly:content.attachment:confluence",
];

/// The scope that makes Atlassian issue a refresh token.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// Shortest and longest accepted `refreshBefore` (DESIGN.md section 1): an Atlassian access
/// token lives 60 minutes; the short end serves short-lived test tokens.
const REFRESH_BEFORE_RANGE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(55 * 60));
/// Shortest and longest accepted `healthCheckInterval` (DESIGN.md section 1).
const HEALTH_CHECK_RANGE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(24 * 3600));

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as a user writes it in YAML (`spec.scopes[1]`).
    pub field: String,
    /// What is wrong and how to fix it; starts with the field.
    pub message: String,
}

/// Every rule a spec breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The violations, in field order.
    pub violations: Vec<Violation>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: Vec<&str> = self.violations.iter().map(|v| v.message.as_str()).collect();
        f.write_str(&messages.join("; "))
    }
}

/// What a valid installation spec means, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationPolicy {
    /// Refresh this long before expiry.
    pub refresh_before: Duration,
    /// Health-check interval.
    pub health_check_interval: Duration,
    /// The pinned site's host (`acme.atlassian.net`), if any.
    pub site_host: Option<String>,
    /// Name of the token Secret.
    pub token_secret_name: String,
}

/// What a valid user-auth spec means, with the installation's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuthPolicy {
    /// Refresh this long before expiry.
    pub refresh_before: Duration,
    /// Health-check interval.
    pub health_check_interval: Duration,
    /// Scopes to request.
    pub scopes: Vec<String>,
    /// Name of the token Secret.
    pub token_secret_name: String,
}

#[derive(Default)]
struct Collector(Vec<Violation>);

impl Collector {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ValidationError { violations: self.0 })
        }
    }
}

/// Validates an installation named `name`.
pub fn installation(name: &str, spec: &ConfluenceInstallationSpec) -> Result<InstallationPolicy, ValidationError> {
    let mut errors = Collector::default();
    if spec.client_id.trim().is_empty() {
        errors.add(
            "spec.clientId",
            "spec.clientId is empty: set it to the app's OAuth client id from developer.atlassian.com",
        );
    }
    if spec.client_secret_ref.name.is_empty() || spec.client_secret_ref.key.is_empty() {
        errors.add(
            "spec.clientSecretRef",
            "spec.clientSecretRef needs both name and key: name the Secret (same namespace) and the key that holds the client secret",
        );
    }
    check_length(&mut errors, "spec.clientId", &spec.client_id, 256);
    check_length(
        &mut errors,
        "spec.clientSecretRef.name",
        &spec.client_secret_ref.name,
        253,
    );
    check_length(
        &mut errors,
        "spec.clientSecretRef.key",
        &spec.client_secret_ref.key,
        253,
    );
    if let Some(site) = &spec.site {
        check_length(&mut errors, "spec.site", site, 253);
    }
    check_expected_account(&mut errors, spec.expected_account_id.as_deref());
    check_scopes(&mut errors, &spec.scopes);
    if spec.grant == GrantType::AuthorizationCode && !spec.scopes.iter().any(|s| s == OFFLINE_ACCESS) {
        errors.add("spec.scopes", messages::OFFLINE_ACCESS_REQUIRED);
    }
    let site_host = spec.site.as_deref().and_then(|site| match site_host(site) {
        Some(host) => Some(host),
        None => {
            errors.add(
                "spec.site",
                format!("spec.site {site:?} is not a site address: write its host, e.g. acme.atlassian.net"),
            );
            None
        }
    });
    if spec.grant == GrantType::ClientCredentials && spec.site.is_none() {
        errors.add("spec.site", messages::SITE_REQUIRED_FOR_CLIENT_CREDENTIALS);
    }
    let refresh_before = check_duration(
        &mut errors,
        "spec.refreshBefore",
        &spec.refresh_before,
        REFRESH_BEFORE_RANGE,
    );
    let health_check_interval = check_duration(
        &mut errors,
        "spec.healthCheckInterval",
        &spec.health_check_interval,
        HEALTH_CHECK_RANGE,
    );
    let token_secret_name = check_secret_name(&mut errors, name, spec.secret_name.as_deref());
    errors.finish(InstallationPolicy {
        refresh_before,
        health_check_interval,
        site_host,
        token_secret_name,
    })
}

/// Validates a user auth named `name`. `installation` is its installation's spec when known
/// (scope subset and defaults need it); `bound_installation` is `status.boundInstallation`.
pub fn user_auth(
    name: &str,
    spec: &ConfluenceUserAuthSpec,
    installation: &ConfluenceInstallationSpec,
    bound_installation: Option<&str>,
) -> Result<UserAuthPolicy, ValidationError> {
    let mut errors = Collector::default();
    if spec.installation_ref.name.is_empty() {
        errors.add("spec.installationRef.name", messages::INSTALLATION_REF_EMPTY);
    }
    if bound_installation.is_some_and(|bound| bound != spec.installation_ref.name) {
        errors.add("spec.installationRef.name", messages::INSTALLATION_REF_IMMUTABLE);
    }
    if spec.user_id.trim().is_empty() {
        errors.add(
            "spec.userId",
            "spec.userId is empty: set it to your application's identifier for this user, e.g. user_123",
        );
    }
    check_length(
        &mut errors,
        "spec.installationRef.name",
        &spec.installation_ref.name,
        253,
    );
    check_length(&mut errors, "spec.userId", &spec.user_id, 253);
    check_expected_account(&mut errors, spec.expected_account_id.as_deref());
    if let Some(scopes) = &spec.scopes {
        check_scopes(&mut errors, scopes);
        if !scopes.iter().any(|s| s == OFFLINE_ACCESS) {
            errors.add("spec.scopes", "spec.scopes must include offline_access (without it Atlassian issues no refresh token): add offline_access to spec.scopes");
        }
        for (i, scope) in scopes.iter().enumerate() {
            if !installation.scopes.contains(scope) {
                errors.add(
                    format!("spec.scopes[{i}]"),
                    format!("spec.scopes[{i}] {scope:?} is not among installation {:?}'s scopes: remove it, or add it to the installation's spec.scopes", spec.installation_ref.name),
                );
            }
        }
    }
    let refresh_before = match &spec.refresh_before {
        Some(text) => check_duration(&mut errors, "spec.refreshBefore", text, REFRESH_BEFORE_RANGE),
        None => duration::parse(&installation.refresh_before).unwrap_or(REFRESH_BEFORE_RANGE.0),
    };
    let health_check_interval = match &spec.health_check_interval {
        Some(text) => check_duration(&mut errors, "spec.healthCheckInterval", text, HEALTH_CHECK_RANGE),
        None => duration::parse(&installation.health_check_interval).unwrap_or(HEALTH_CHECK_RANGE.0),
    };
    let token_secret_name = check_secret_name(&mut errors, name, spec.secret_name.as_deref());
    let scopes = spec.effective_scopes(installation).to_vec();
    errors.finish(UserAuthPolicy {
        refresh_before,
        health_check_interval,
        scopes,
        token_secret_name,
    })
}

/// True for a scope the operator accepts.
pub fn is_known_scope(scope: &str) -> bool {
    if CLASSIC_SCOPES.contains(&scope) {
        return true;
    }
    // Granular scopes: `<read|write|delete>:<object>:confluence`, object in [a-z0-9.-].
    let mut parts = scope.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("read" | "write" | "delete"), Some(object), Some("confluence"), None) => {
            object.starts_with(|c: char| c.is_ascii_lowercase())
                && object
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        }
        _ => false,
    }
}

/// The host of a site written as `acme.atlassian.net`, `https://acme.atlassian.net` or with a
/// trailing slash; `None` when it is not a host name (a port is refused, as in the schema).
pub fn site_host(site: &str) -> Option<String> {
    let host = site.strip_prefix("https://").unwrap_or(site);
    let host = host.strip_suffix('/').unwrap_or(host);
    let labels_ok = host.contains('.') && host.split('.').all(is_dns_label);
    (labels_ok && host.len() <= 253).then(|| host.to_string())
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The limits the CRD schema sets on strings, checked again for objects that got past it.
fn check_length(errors: &mut Collector, field: &str, value: &str, max: usize) {
    let length = value.chars().count();
    if length > max {
        errors.add(
            field,
            format!("{field} is {length} characters long: shorten it to at most {max}"),
        );
    }
}

fn check_expected_account(errors: &mut Collector, expected: Option<&str>) {
    match expected {
        Some(id) if id.trim().is_empty() => errors.add(
            "spec.expectedAccountId",
            "spec.expectedAccountId is empty: remove it or set it to the Atlassian account id that must consent",
        ),
        Some(id) => check_length(errors, "spec.expectedAccountId", id, 128),
        None => {}
    }
}

fn check_scopes(errors: &mut Collector, scopes: &[String]) {
    if scopes.is_empty() {
        errors.add(
            "spec.scopes",
            "spec.scopes is empty: list the scopes to request, e.g. [offline_access, read:confluence-content.all]",
        );
    }
    if scopes.len() > 64 {
        errors.add(
            "spec.scopes",
            format!("spec.scopes lists {} scopes: list at most 64", scopes.len()),
        );
    }
    for (i, scope) in scopes.iter().enumerate() {
        if !is_known_scope(scope) {
            errors.add(
                format!("spec.scopes[{i}]"),
                format!("spec.scopes[{i}] {scope:?} is not a Confluence scope: use a classic scope such as read:confluence-content.all, read:me or offline_access, or a granular one such as read:page:confluence"),
            );
        }
    }
}

fn check_duration(errors: &mut Collector, field: &str, text: &str, (min, max): (Duration, Duration)) -> Duration {
    match duration::parse(text) {
        Ok(d) if d >= min && d <= max => d,
        Ok(_) => {
            errors.add(
                field,
                format!(
                    "{field} {text:?} is out of range: use between {} and {}",
                    duration::format(min),
                    duration::format(max)
                ),
            );
            min
        }
        Err(e) => {
            errors.add(field, format!("{field}: {e}"));
            min
        }
    }
}

fn check_secret_name(errors: &mut Collector, name: &str, secret_name: Option<&str>) -> String {
    let Some(secret_name) = secret_name else {
        return format!("{name}-token");
    };
    if secret_name.len() > 253 || !secret_name.split('.').all(is_dns_label) {
        errors.add(
            "spec.secretName",
            format!("spec.secretName {secret_name:?} is not a valid Secret name: use lower-case letters, digits, '-' and '.'"),
        );
    } else if secret_name == vault_secret_name(name) {
        errors.add(
            "spec.secretName",
            format!("spec.secretName {secret_name:?} is the name of the encrypted vault Secret: choose another name"),
        );
    }
    secret_name.to_string()
}

/// Name of the vault Secret of the resource named `name`.
pub fn vault_secret_name(name: &str) -> String {
    format!("{name}-vault")
}

/// Site suffixes accepted when `--allowed-site-suffixes` is not given: Atlassian Cloud sites.
pub const DEFAULT_SITE_SUFFIXES: &[&str] = &["atlassian.net", "jira.com"];

/// Refuses a site host the operator must not contact: only DNS names strictly under one of
/// `suffixes` (`acme.atlassian.net` under `atlassian.net`), never an IP literal, never a port,
/// and compared label by label (so `xatlassian.net` and `atlassian.net.evil.com` do not pass).
/// Upper case and a trailing dot are refused rather than normalised: `spec.site` is written in
/// lower case without one, and the operator fetches exactly what was written.
pub fn site_allowed(host: &str, suffixes: &[String]) -> Result<(), ValidationError> {
    let allowed = suffixes.join(", ");
    let refuse = |why: &str| {
        Err(ValidationError {
            violations: vec![Violation {
                field: "spec.site".into(),
                message: format!(
                    "spec.site {host:?} {why}: the operator only contacts sites under the allowed suffixes ({allowed}); write the Atlassian site's host, e.g. acme.atlassian.net, or ask the operator's administrator to add the suffix to --allowed-site-suffixes"
                ),
            }],
        })
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return refuse("is an IP address");
    }
    if host.contains(':') {
        return refuse("carries a port");
    }
    let labels: Vec<&str> = host.split('.').collect();
    if host.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
        return refuse("is not a lower-case DNS name");
    }
    if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return refuse("is an IP address");
    }
    let under = |suffix: &String| {
        let suffix = suffix.trim().trim_matches('.').to_ascii_lowercase();
        !suffix.is_empty()
            && host
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|rest| !rest.is_empty())
    };
    if suffixes.iter().any(under) {
        Ok(())
    } else {
        refuse("is not under an allowed suffix")
    }
}

/// [`site_allowed`] for the site an installation pins, if it pins one.
pub fn pinned_site_allowed(policy: &InstallationPolicy, suffixes: &[String]) -> Result<(), ValidationError> {
    policy
        .site_host
        .as_deref()
        .map_or(Ok(()), |host| site_allowed(host, suffixes))
}

#[cfg(test)]
mod site_tests {
    use super::*;

    fn defaults() -> Vec<String> {
        DEFAULT_SITE_SUFFIXES.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sites_under_the_allowed_suffixes_pass_and_nothing_else() {
        let cases: &[(&str, bool)] = &[
            ("acme.atlassian.net", true),
            ("globex.atlassian.net", true),
            ("acme.jira.com", true),
            ("a.b.atlassian.net", true),
            ("atlassian.net", false),
            ("169.254.169.254", false),
            ("127.0.0.1", false),
            ("::1", false),
            ("[::1]", false),
            ("[fd00::1]", false),
            ("10.0.0.1.atlassian.net", true),
            ("acme.atlassian.net:443", false),
            ("acme.atlassian.net:8080", false),
            ("evil.example.com", false),
            ("atlassian.net.evil.com", false),
            ("acme.atlassian.net.evil.com", false),
            ("xatlassian.net", false),
            ("acme.xatlassian.net", false),
            ("ACME.atlassian.net", false),
            ("acme.ATLASSIAN.NET", false),
            ("acme.atlassian.net.", false),
            ("", false),
            (".atlassian.net", false),
            ("acme..atlassian.net", false),
            ("user@acme.atlassian.net", false),
            ("acme.atlassian.net/path", false),
            ("localhost", false),
        ];
        for (host, expected) in cases {
            assert_eq!(site_allowed(host, &defaults()).is_ok(), *expected, "{host}");
        }
    }

    #[test]
    fn the_refusal_names_the_field_the_suffixes_and_the_fix() {
        let err = site_allowed("evil.example.com", &defaults()).unwrap_err();
        assert_eq!(err.violations[0].field, "spec.site");
        let message = err.to_string();
        assert!(message.starts_with("spec.site \"evil.example.com\""), "{message}");
        assert!(message.contains("atlassian.net, jira.com"), "{message}");
        assert!(message.contains("--allowed-site-suffixes"), "{message}");
    }

    #[test]
    fn only_a_pinned_site_is_checked() {
        let policy = |site_host: Option<&str>| InstallationPolicy {
            refresh_before: Duration::from_secs(300),
            health_check_interval: Duration::from_secs(300),
            site_host: site_host.map(str::to_string),
            token_secret_name: "t".into(),
        };
        assert!(pinned_site_allowed(&policy(None), &defaults()).is_ok());
        assert!(pinned_site_allowed(&policy(Some("acme.atlassian.net")), &defaults()).is_ok());
        assert!(pinned_site_allowed(&policy(Some("10.0.0.1")), &defaults()).is_err());
    }

    #[test]
    fn configured_suffixes_replace_the_defaults() {
        let only = vec!["example.org".to_string()];
        assert!(site_allowed("wiki.example.org", &only).is_ok());
        assert!(site_allowed("acme.atlassian.net", &only).is_err());
        // Written with dots around it or in upper case, a configured suffix means the same.
        assert!(site_allowed("wiki.example.org", &[" .Example.ORG. ".to_string()]).is_ok());
        assert!(site_allowed("example.org", &[".example.org".to_string()]).is_err());
        assert!(site_allowed("acme.atlassian.net", &[]).is_err());
    }
}
