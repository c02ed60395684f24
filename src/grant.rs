//! Pure checks of a fresh grant before anything is stored: refresh token present, the site
//! (pinned, single, or ambiguous), the user's access to the installation's site, the account.

use crate::oauth::atlassian::AccessibleResource;
use crate::validation::OFFLINE_ACCESS;

/// Why a grant is refused; each maps to a condition reason and a page a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// No refresh token came back.
    #[error(
        "the grant has no offline_access: approve the app again and keep offline access (the refresh token) enabled"
    )]
    NoOfflineAccess,
    /// The grant covers no site at all.
    #[error(
        "the consenting account has access to no Confluence site: consent with an account that belongs to the site"
    )]
    NoSite,
    /// The grant covers several sites and nothing picks one.
    #[error("the grant covers several sites ({0}): set spec.site to one of them and authorize again")]
    SiteAmbiguous(String),
    /// The pinned site is not among the grant's sites.
    #[error("the grant does not cover {wanted} (it covers {granted}): consent on the right site, or fix spec.site")]
    SiteNotGranted {
        /// The site asked for.
        wanted: String,
        /// The sites granted.
        granted: String,
    },
    /// The user has no access to the installation's site.
    #[error(
        "this Atlassian account has no access to the installation's site {0}: authorize with an account of that site"
    )]
    UserLacksSite(String),
    /// Someone other than `expectedAccountId` consented.
    #[error(
        "this authorization is reserved for another Atlassian account: sign in to Atlassian as the expected user and open a fresh link"
    )]
    UnexpectedAccount,
    /// Another user auth of the installation already holds this account's grant.
    #[error(
        "this Atlassian account is already authorized in this installation by ConfluenceUserAuth {0}: use that one, or delete it first"
    )]
    DuplicateAccount(String),
}

impl GrantError {
    /// Condition reason for this refusal.
    pub fn reason(&self) -> &'static str {
        use crate::crd::conditions::reason;
        match self {
            Self::NoOfflineAccess => "OfflineAccessMissing",
            Self::NoSite | Self::SiteNotGranted { .. } => reason::SITE_NOT_GRANTED,
            Self::SiteAmbiguous(_) => reason::SITE_AMBIGUOUS,
            Self::UserLacksSite(_) => reason::SITE_ACCESS_LOST,
            Self::UnexpectedAccount => reason::UNEXPECTED_ACCOUNT,
            Self::DuplicateAccount(_) => reason::DUPLICATE_ACCOUNT,
        }
    }
}

/// A grant must carry a refresh token and `offline_access`.
pub fn require_offline_access(has_refresh_token: bool, granted_scopes: &[String]) -> Result<(), GrantError> {
    if has_refresh_token && granted_scopes.iter().any(|s| s == OFFLINE_ACCESS) {
        Ok(())
    } else {
        Err(GrantError::NoOfflineAccess)
    }
}

/// The site an installation grant is for: the pinned host, else the only site.
pub fn choose_site<'a>(
    resources: &'a [AccessibleResource],
    pinned_host: Option<&str>,
) -> Result<&'a AccessibleResource, GrantError> {
    let listed = || resources.iter().map(|r| host_of(&r.url)).collect::<Vec<_>>().join(", ");
    match (pinned_host, resources) {
        (_, []) => Err(GrantError::NoSite),
        (Some(host), _) => {
            resources
                .iter()
                .find(|r| host_of(&r.url) == host)
                .ok_or_else(|| GrantError::SiteNotGranted {
                    wanted: host.to_string(),
                    granted: listed(),
                })
        }
        (None, [only]) => Ok(only),
        (None, _) => Err(GrantError::SiteAmbiguous(listed())),
    }
}

/// The user's grant must reach the installation's site.
pub fn require_site<'a>(
    resources: &'a [AccessibleResource],
    cloud_id: &str,
    site_url: &str,
) -> Result<&'a AccessibleResource, GrantError> {
    resources
        .iter()
        .find(|r| r.id == cloud_id)
        .ok_or_else(|| GrantError::UserLacksSite(site_url.to_string()))
}

/// `expectedAccountId`, when set, must be who consented.
pub fn require_account(expected: Option<&str>, actual: &str) -> Result<(), GrantError> {
    match expected {
        Some(expected) if expected != actual => Err(GrantError::UnexpectedAccount),
        _ => Ok(()),
    }
}

/// `https://acme.atlassian.net/` → `acme.atlassian.net`.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: &str, host: &str) -> AccessibleResource {
        AccessibleResource {
            id: id.into(),
            url: format!("https://{host}"),
            name: host.into(),
            scopes: vec![],
        }
    }

    #[test]
    fn an_installation_picks_its_site() {
        let one = [site("c1", "acme.atlassian.net")];
        let two = [site("c1", "acme.atlassian.net"), site("c2", "globex.atlassian.net")];
        assert_eq!(choose_site(&one, None).unwrap().id, "c1");
        assert_eq!(choose_site(&two, Some("globex.atlassian.net")).unwrap().id, "c2");
        assert_eq!(
            choose_site(&two, None).unwrap_err(),
            GrantError::SiteAmbiguous("acme.atlassian.net, globex.atlassian.net".into())
        );
        assert_eq!(
            choose_site(&one, Some("globex.atlassian.net")).unwrap_err().to_string(),
            "the grant does not cover globex.atlassian.net (it covers acme.atlassian.net): consent on the right site, or fix spec.site"
        );
        assert_eq!(choose_site(&[], None).unwrap_err(), GrantError::NoSite);
    }

    #[test]
    fn a_user_must_reach_the_installation_site_and_be_the_expected_account() {
        let sites = [site("c1", "acme.atlassian.net")];
        assert!(require_site(&sites, "c1", "https://acme.atlassian.net").is_ok());
        assert_eq!(
            require_site(&sites, "c9", "https://globex.atlassian.net").unwrap_err(),
            GrantError::UserLacksSite("https://globex.atlassian.net".into())
        );
        assert!(require_account(None, "a").is_ok());
        assert!(require_account(Some("a"), "a").is_ok());
        assert_eq!(require_account(Some("a"), "b"), Err(GrantError::UnexpectedAccount));
    }

    #[test]
    fn offline_access_needs_both_the_scope_and_a_refresh_token() {
        let with = vec!["offline_access".to_string()];
        assert!(require_offline_access(true, &with).is_ok());
        assert_eq!(require_offline_access(false, &with), Err(GrantError::NoOfflineAccess));
        assert_eq!(require_offline_access(true, &[]), Err(GrantError::NoOfflineAccess));
    }
}
