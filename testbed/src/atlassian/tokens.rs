//! Codes, grants and tokens: the pure core of the stand-in's authorization server. Every
//! decision takes `now` from the caller (the stand-in's controllable clock), so the rules are
//! unit-tested here without a server or a wait.
//!
//! The rules follow Atlassian's documentation:
//! - authorization codes are single use and short lived (10 minutes here), and are exchanged at
//!   `/oauth/token` with the same `redirect_uri`
//!   (<https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/>); a PKCE S256
//!   challenge sent to `/authorize` is verified (RFC 7636);
//! - a refresh token is returned only when `offline_access` was granted, and refresh tokens
//!   rotate: every refresh returns a new pair and disables the token sent
//!   (<https://developer.atlassian.com/cloud/oauth/getting-started/refresh-tokens/>);
//! - a superseded refresh token may be reused within a 10-minute leeway; a reuse after it
//!   invalidates every refresh token of the family; a refresh token expires after 90 days
//!   unused, and every token of a family 365 days after the first consent
//!   (<https://community.developer.atlassian.com/t/updated-31-january-2022-action-required-deprecating-persistent-refresh-tokens/54172>);
//! - a refused refresh answers 403 `invalid_grant` "Unknown or invalid refresh token." (same
//!   refresh-tokens page);
//! - a service account's client-credentials token lives 60 minutes and has no refresh token
//!   (<https://support.atlassian.com/user-management/docs/create-oauth-2-0-credential-for-service-accounts>).
//!
//! The stand-in also retires the access tokens of a family 10 minutes after a refresh (the
//! design contract's "a refreshed pair also retires the previous access token after the same
//! 10 minutes"), so consumers that cache a token for long are caught in tests.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// How long an authorization code can be exchanged, in seconds.
pub const CODE_LIFETIME_SECS: i64 = 10 * 60;
/// How long a superseded refresh token (and the access tokens of the previous pair) stays usable.
pub const REUSE_LEEWAY_SECS: i64 = 10 * 60;
/// A refresh token unused this long expires.
pub const INACTIVITY_SECS: i64 = 90 * 86_400;
/// Every token of a family dies this long after the first consent.
pub const ABSOLUTE_SECS: i64 = 365 * 86_400;
/// Default access-token lifetime (3LO and client credentials alike), in seconds.
pub const DEFAULT_ACCESS_LIFETIME_SECS: i64 = 3600;

/// `error_description` of every refused refresh, as Atlassian documents it.
pub const UNKNOWN_REFRESH_TOKEN: &str = "Unknown or invalid refresh token.";
/// `error_description` of a bad, used, expired or foreign authorization code.
pub const INVALID_CODE: &str = "Invalid authorization code";
/// `error_description` of a redirect URI that differs from the authorization request's.
pub const REDIRECT_MISMATCH: &str = "redirect_uri does not match the one used in the authorization request";
/// `error_description` of a missing or wrong PKCE verifier.
pub const BAD_VERIFIER: &str = "Failed to verify code verifier";

/// What kind of secret was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// An authorization code (`atl_code_…`).
    Code,
    /// An access token (`atl_at_…`).
    AccessToken,
    /// A refresh token (`atl_rt_…`).
    RefreshToken,
}

/// One secret the stand-in handed out, so tests can grep logs and objects for leaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IssuedSecret {
    /// Code, access token or refresh token.
    pub kind: SecretKind,
    /// The secret itself.
    pub value: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The account it speaks for.
    pub account_id: String,
    /// When (stand-in clock).
    pub issued_at: Timestamp,
}

/// What a user consented to at `/authorize`: the content of an authorization code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    /// The app.
    pub client_id: String,
    /// The consenting account.
    pub account_id: String,
    /// The `redirect_uri` of the authorization request.
    pub redirect_uri: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The site picked on the consent screen (one per consent, as on Atlassian; none for an
    /// account without sites). Empty or one host.
    pub sites: Vec<String>,
    /// The PKCE S256 challenge, when one was sent.
    pub code_challenge: Option<String>,
}

/// A successful token response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The new access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: i64,
    /// The new refresh token (only with `offline_access`).
    pub refresh_token: Option<String>,
    /// Granted scopes, space separated.
    pub scope: String,
}

/// Why a token request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// The code or refresh token is not (or no longer) good: HTTP 403 `invalid_grant`.
    InvalidGrant(&'static str),
    /// The operating system refused random bytes: HTTP 500.
    NoRandomness,
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// Never issued.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Its family was revoked (by the user or by a refresh-token reuse).
    Revoked,
}

/// Whom a live access token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The app (or service-account credential).
    pub client_id: String,
    /// The account.
    pub account_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Hosts of the sites the grant covers now.
    pub sites: Vec<String>,
}

#[derive(Debug)]
struct CodeEntry {
    consent: Consent,
    issued_at: Timestamp,
    used: bool,
}

/// All tokens descending from one consent.
#[derive(Debug)]
struct Family {
    client_id: String,
    account_id: String,
    scopes: Vec<String>,
    consented_at: Timestamp,
    revoked: bool,
    /// Its refresh tokens not yet superseded, and its access tokens not yet retired: what the
    /// next refresh changes, without a scan of every token ever issued.
    live_refresh: Vec<String>,
    live_access: Vec<String>,
}

#[derive(Debug)]
struct RefreshEntry {
    family: usize,
    issued_at: Timestamp,
    superseded_at: Option<Timestamp>,
}

#[derive(Debug)]
struct AccessEntry {
    family: Option<usize>,
    /// For tokens without a family (client credentials).
    principal: Principal,
    expires_at: Timestamp,
}

/// Every code, family and token issued so far.
#[derive(Debug, Default)]
pub struct TokenStore {
    codes: HashMap<String, CodeEntry>,
    families: Vec<Family>,
    refresh: HashMap<String, RefreshEntry>,
    access: HashMap<String, AccessEntry>,
    issued: Vec<IssuedSecret>,
    /// Sites an account has authorized an app for, by (client id, account id), in consent
    /// order: each consent adds its one site, and every token of that pair sees them all (as
    /// accessible-resources does on Atlassian).
    authorized: HashMap<(String, String), Vec<String>>,
    reuse: ReuseCounters,
}

/// How often a superseded refresh token was sent again (the crash suite's figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReuseCounters {
    /// Within the 10-minute leeway: accepted, a new pair issued.
    pub within_leeway: u64,
    /// After it: refused, and the whole family revoked.
    pub after_leeway: u64,
}

/// `ts` plus `secs` seconds, saturating.
pub fn after(ts: Timestamp, secs: i64) -> Timestamp {
    ts.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MAX)
}

/// A random opaque secret: `prefix` + 32 random bytes, base64url.
fn mint(prefix: &str) -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| TokenError::NoRandomness)?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The S256 challenge of a PKCE verifier (RFC 7636 section 4.2).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl TokenStore {
    /// Reuses of superseded refresh tokens so far.
    pub fn reuse(&self) -> ReuseCounters {
        self.reuse
    }

    /// The family (its index, one per consent) and account of a refresh token ever issued.
    pub fn family_of(&self, refresh_token: &str) -> Option<(usize, String)> {
        let family = self.refresh.get(refresh_token)?.family;
        Some((family, self.families.get(family)?.account_id.clone()))
    }

    /// Every secret issued so far, oldest first.
    pub fn issued(&self) -> &[IssuedSecret] {
        &self.issued
    }

    fn record(&mut self, kind: SecretKind, value: &str, client: &str, account: &str, now: Timestamp) {
        self.issued.push(IssuedSecret {
            kind,
            value: value.to_owned(),
            client_id: client.to_owned(),
            account_id: account.to_owned(),
            issued_at: now,
        });
    }

    /// Issues a single-use authorization code for a consent.
    pub fn issue_code(&mut self, now: Timestamp, consent: Consent) -> Result<String, TokenError> {
        let code = mint("atl_code_")?;
        self.record(SecretKind::Code, &code, &consent.client_id, &consent.account_id, now);
        self.codes.insert(
            code.clone(),
            CodeEntry {
                consent,
                issued_at: now,
                used: false,
            },
        );
        Ok(code)
    }

    /// Exchanges an authorization code (the client is already authenticated). The code is
    /// consumed by any attempt of its own client, successful or not, so a verifier cannot be
    /// guessed by retrying.
    pub fn exchange_code(
        &mut self,
        now: Timestamp,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        access_lifetime: i64,
    ) -> Result<Grant, TokenError> {
        let entry = self
            .codes
            .get_mut(code)
            .filter(|e| e.consent.client_id == client_id)
            .ok_or(TokenError::InvalidGrant(INVALID_CODE))?;
        if entry.used || now >= after(entry.issued_at, CODE_LIFETIME_SECS) {
            return Err(TokenError::InvalidGrant(INVALID_CODE));
        }
        entry.used = true;
        if redirect_uri != Some(entry.consent.redirect_uri.as_str()) {
            return Err(TokenError::InvalidGrant(REDIRECT_MISMATCH));
        }
        if let Some(challenge) = &entry.consent.code_challenge
            && code_verifier.map(s256_challenge).as_deref() != Some(challenge.as_str())
        {
            return Err(TokenError::InvalidGrant(BAD_VERIFIER));
        }
        let consent = entry.consent.clone();
        let authorized = self
            .authorized
            .entry((consent.client_id.clone(), consent.account_id.clone()))
            .or_default();
        for host in consent.sites {
            if !authorized.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
                authorized.push(host);
            }
        }
        self.families.push(Family {
            client_id: consent.client_id,
            account_id: consent.account_id,
            scopes: consent.scopes,
            consented_at: now,
            revoked: false,
            live_refresh: Vec::new(),
            live_access: Vec::new(),
        });
        self.issue_pair(now, self.families.len() - 1, access_lifetime)
    }

    /// Issues a new access token (and refresh token with `offline_access`) in a family.
    fn issue_pair(&mut self, now: Timestamp, family: usize, access_lifetime: i64) -> Result<Grant, TokenError> {
        let access_token = mint("atl_at_")?;
        let (client, account, scopes) = {
            let f = self
                .families
                .get(family)
                .ok_or(TokenError::InvalidGrant(UNKNOWN_REFRESH_TOKEN))?;
            (f.client_id.clone(), f.account_id.clone(), f.scopes.clone())
        };
        let refresh_token = if scopes.iter().any(|s| s == "offline_access") {
            let rt = mint("atl_rt_")?;
            self.record(SecretKind::RefreshToken, &rt, &client, &account, now);
            self.refresh.insert(
                rt.clone(),
                RefreshEntry {
                    family,
                    issued_at: now,
                    superseded_at: None,
                },
            );
            self.families[family].live_refresh.push(rt.clone());
            Some(rt)
        } else {
            None
        };
        self.record(SecretKind::AccessToken, &access_token, &client, &account, now);
        let scope = scopes.join(" ");
        self.access.insert(
            access_token.clone(),
            AccessEntry {
                family: Some(family),
                principal: Principal {
                    client_id: client,
                    account_id: account,
                    scopes,
                    sites: Vec::new(),
                },
                expires_at: after(now, access_lifetime),
            },
        );
        self.families[family].live_access.push(access_token.clone());
        Ok(Grant {
            access_token,
            expires_in: access_lifetime,
            refresh_token,
            scope,
        })
    }

    /// Refreshes with a rotating refresh token (the client is already authenticated).
    pub fn refresh(
        &mut self,
        now: Timestamp,
        client_id: &str,
        refresh_token: &str,
        access_lifetime: i64,
    ) -> Result<Grant, TokenError> {
        const REFUSED: TokenError = TokenError::InvalidGrant(UNKNOWN_REFRESH_TOKEN);
        let entry = self.refresh.get(refresh_token).ok_or(REFUSED)?;
        let family_id = entry.family;
        let family = self.families.get_mut(family_id).ok_or(REFUSED)?;
        if family.client_id != client_id
            || family.revoked
            || now >= after(family.consented_at, ABSOLUTE_SECS)
            || now >= after(entry.issued_at, INACTIVITY_SECS)
        {
            return Err(REFUSED);
        }
        if let Some(superseded) = entry.superseded_at {
            if now > after(superseded, REUSE_LEEWAY_SECS) {
                // Reuse after the leeway: the whole family dies.
                family.revoked = true;
                self.reuse.after_leeway += 1;
                return Err(REFUSED);
            }
            self.reuse.within_leeway += 1;
        }
        // Supersede every live refresh token of the family, and retire its access tokens
        // after the leeway.
        for rt in std::mem::take(&mut family.live_refresh) {
            if let Some(rt) = self.refresh.get_mut(&rt) {
                rt.superseded_at = Some(now);
            }
        }
        let retire_at = after(now, REUSE_LEEWAY_SECS);
        for at in std::mem::take(&mut family.live_access) {
            if let Some(at) = self.access.get_mut(&at)
                && at.expires_at > retire_at
            {
                at.expires_at = retire_at;
            }
        }
        self.issue_pair(now, family_id, access_lifetime)
    }

    /// Issues a client-credentials access token (no refresh token) for a principal.
    pub fn client_credentials(
        &mut self,
        now: Timestamp,
        principal: Principal,
        lifetime: i64,
    ) -> Result<Grant, TokenError> {
        let access_token = mint("atl_at_")?;
        self.record(
            SecretKind::AccessToken,
            &access_token,
            &principal.client_id,
            &principal.account_id,
            now,
        );
        let scope = principal.scopes.join(" ");
        self.access.insert(
            access_token.clone(),
            AccessEntry {
                family: None,
                principal,
                expires_at: after(now, lifetime),
            },
        );
        Ok(Grant {
            access_token,
            expires_in: lifetime,
            refresh_token: None,
            scope,
        })
    }

    /// Whom a bearer token speaks for, if it is live.
    pub fn authenticate(&self, now: Timestamp, token: &str) -> Result<Principal, AccessError> {
        let entry = self.access.get(token).ok_or(AccessError::Unknown)?;
        let Some(family_id) = entry.family else {
            return if now >= entry.expires_at {
                Err(AccessError::Expired)
            } else {
                Ok(entry.principal.clone())
            };
        };
        let family = self.families.get(family_id).ok_or(AccessError::Unknown)?;
        if family.revoked {
            return Err(AccessError::Revoked);
        }
        if now >= entry.expires_at || now >= after(family.consented_at, ABSOLUTE_SECS) {
            return Err(AccessError::Expired);
        }
        Ok(Principal {
            sites: self
                .authorized
                .get(&(family.client_id.clone(), family.account_id.clone()))
                .cloned()
                .unwrap_or_default(),
            ..entry.principal.clone()
        })
    }

    /// The user revokes the app: every family of this account and client dies, and the sites
    /// it was authorized for are forgotten. Returns how many families were live.
    pub fn revoke_user(&mut self, account_id: &str, client_id: &str) -> usize {
        self.authorized.remove(&(client_id.to_owned(), account_id.to_owned()));
        let mut n = 0;
        for f in &mut self.families {
            if f.account_id == account_id && f.client_id == client_id && !f.revoked {
                f.revoked = true;
                n += 1;
            }
        }
        n
    }

    /// An admin removes the app from a site: existing grants of that client stop covering it.
    pub fn remove_site(&mut self, client_id: &str, host: &str) {
        for ((client, _), sites) in &mut self.authorized {
            if client == client_id {
                sites.retain(|h| !h.eq_ignore_ascii_case(host));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn consent(challenge: Option<&str>, scopes: &[&str]) -> Consent {
        Consent {
            client_id: "app".into(),
            account_id: "acc".into(),
            redirect_uri: "https://app/cb".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            sites: vec!["acme.atlassian.net".into()],
            code_challenge: challenge.map(str::to_owned),
        }
    }

    fn first_grant(store: &mut TokenStore, now: Timestamp) -> Grant {
        let code = store
            .issue_code(now, consent(None, &["read:me", "offline_access"]))
            .unwrap();
        store
            .exchange_code(now, "app", &code, Some("https://app/cb"), None, 3600)
            .unwrap()
    }

    const REFUSED: Result<Grant, TokenError> = Err(TokenError::InvalidGrant(UNKNOWN_REFRESH_TOKEN));

    #[test]
    fn code_is_single_use_and_expires() {
        let mut s = TokenStore::default();
        let code = s.issue_code(t0(), consent(None, &["read:me"])).unwrap();
        assert!(code.starts_with("atl_code_"));
        let g = s
            .exchange_code(t0(), "app", &code, Some("https://app/cb"), None, 100)
            .unwrap();
        assert!(g.access_token.starts_with("atl_at_"));
        assert_eq!(g.refresh_token, None);
        assert_eq!(g.scope, "read:me");
        let again = s.exchange_code(t0(), "app", &code, Some("https://app/cb"), None, 100);
        assert_eq!(again, Err(TokenError::InvalidGrant(INVALID_CODE)));

        let code = s.issue_code(t0(), consent(None, &["read:me"])).unwrap();
        let late = after(t0(), CODE_LIFETIME_SECS);
        let r = s.exchange_code(late, "app", &code, Some("https://app/cb"), None, 100);
        assert_eq!(r, Err(TokenError::InvalidGrant(INVALID_CODE)));
    }

    #[test]
    fn code_of_another_client_or_redirect_is_refused() {
        let mut s = TokenStore::default();
        let code = s.issue_code(t0(), consent(None, &["read:me"])).unwrap();
        let r = s.exchange_code(t0(), "other", &code, Some("https://app/cb"), None, 100);
        assert_eq!(r, Err(TokenError::InvalidGrant(INVALID_CODE)));
        let r = s.exchange_code(t0(), "app", &code, Some("https://app/cb2"), None, 100);
        assert_eq!(r, Err(TokenError::InvalidGrant(REDIRECT_MISMATCH)));
    }

    #[test]
    fn pkce_s256() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(s256_challenge(verifier), challenge);
        let mut s = TokenStore::default();
        let code = s.issue_code(t0(), consent(Some(challenge), &["read:me"])).unwrap();
        let r = s.exchange_code(t0(), "app", &code, Some("https://app/cb"), Some("wrong"), 1);
        assert_eq!(r, Err(TokenError::InvalidGrant(BAD_VERIFIER)));
        let code = s.issue_code(t0(), consent(Some(challenge), &["read:me"])).unwrap();
        let r = s.exchange_code(t0(), "app", &code, Some("https://app/cb"), None, 1);
        assert_eq!(r, Err(TokenError::InvalidGrant(BAD_VERIFIER)));
        let code = s.issue_code(t0(), consent(Some(challenge), &["read:me"])).unwrap();
        let r = s.exchange_code(t0(), "app", &code, Some("https://app/cb"), Some(verifier), 1);
        assert!(r.is_ok());
    }

    #[test]
    fn rotation_leeway_and_family_revocation() {
        let mut s = TokenStore::default();
        let g1 = first_grant(&mut s, t0());
        let rt1 = g1.refresh_token.unwrap();
        let g2 = s.refresh(t0(), "app", &rt1, 3600).unwrap();
        let rt2 = g2.refresh_token.clone().unwrap();
        assert_ne!(rt1, rt2);
        // Reuse of rt1 inside the leeway: a new pair again.
        let inside = after(t0(), REUSE_LEEWAY_SECS);
        let g3 = s.refresh(inside, "app", &rt1, 3600).unwrap();
        let rt3 = g3.refresh_token.unwrap();
        assert_eq!(
            s.reuse(),
            ReuseCounters {
                within_leeway: 1,
                after_leeway: 0
            }
        );
        // rt1 after the leeway: the whole family dies.
        let outside = after(t0(), REUSE_LEEWAY_SECS + 1);
        assert_eq!(s.refresh(outside, "app", &rt1, 3600), REFUSED);
        assert_eq!(s.refresh(outside, "app", &rt3, 3600), REFUSED);
        assert_eq!(
            s.reuse(),
            ReuseCounters {
                within_leeway: 1,
                after_leeway: 1
            }
        );
        assert_eq!(s.authenticate(outside, &g3.access_token), Err(AccessError::Revoked));
        let _ = rt2;
    }

    #[test]
    fn refresh_retires_previous_access_token_after_leeway() {
        let mut s = TokenStore::default();
        let g1 = first_grant(&mut s, t0());
        s.refresh(t0(), "app", g1.refresh_token.as_deref().unwrap(), 3600)
            .unwrap();
        assert!(s.authenticate(after(t0(), 599), &g1.access_token).is_ok());
        assert_eq!(
            s.authenticate(after(t0(), 600), &g1.access_token),
            Err(AccessError::Expired)
        );
    }

    #[test]
    fn inactivity_and_absolute_expiry() {
        let mut s = TokenStore::default();
        let g = first_grant(&mut s, t0());
        let rt = g.refresh_token.unwrap();
        let stale = after(t0(), INACTIVITY_SECS);
        assert_eq!(s.refresh(stale, "app", &rt, 3600), REFUSED);

        // Refreshing every 80 days keeps it alive until day 365, never after.
        let mut s = TokenStore::default();
        let mut rt = first_grant(&mut s, t0()).refresh_token.unwrap();
        for day in [80, 160, 240, 320] {
            let g = s.refresh(after(t0(), day * 86_400), "app", &rt, 3600).unwrap();
            rt = g.refresh_token.unwrap();
        }
        assert_eq!(s.refresh(after(t0(), ABSOLUTE_SECS), "app", &rt, 3600), REFUSED);
    }

    #[test]
    fn wrong_client_and_user_revocation() {
        let mut s = TokenStore::default();
        let g = first_grant(&mut s, t0());
        let rt = g.refresh_token.unwrap();
        assert_eq!(s.refresh(t0(), "other", &rt, 3600), REFUSED);
        assert_eq!(s.revoke_user("acc", "app"), 1);
        assert_eq!(s.refresh(t0(), "app", &rt, 3600), REFUSED);
        assert_eq!(s.authenticate(t0(), &g.access_token), Err(AccessError::Revoked));
        assert_eq!(s.authenticate(t0(), "nope"), Err(AccessError::Unknown));
    }

    #[test]
    fn site_removal_and_issued_list() {
        let mut s = TokenStore::default();
        let g = first_grant(&mut s, t0());
        assert_eq!(
            s.authenticate(t0(), &g.access_token).unwrap().sites,
            vec!["acme.atlassian.net".to_string()]
        );
        s.remove_site("app", "ACME.atlassian.net");
        assert!(s.authenticate(t0(), &g.access_token).unwrap().sites.is_empty());
        let kinds: Vec<SecretKind> = s.issued().iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [SecretKind::Code, SecretKind::RefreshToken, SecretKind::AccessToken]
        );
    }

    #[test]
    fn each_consent_adds_its_one_site_and_every_token_of_the_account_sees_them() {
        let mut s = TokenStore::default();
        let acme = first_grant(&mut s, t0());
        let globex_consent = Consent {
            sites: vec!["globex.atlassian.net".into()],
            ..consent(None, &["read:me"])
        };
        let code = s.issue_code(t0(), globex_consent).unwrap();
        let globex = s
            .exchange_code(t0(), "app", &code, Some("https://app/cb"), None, 3600)
            .unwrap();
        let both = vec!["acme.atlassian.net".to_string(), "globex.atlassian.net".to_string()];
        assert_eq!(s.authenticate(t0(), &acme.access_token).unwrap().sites, both);
        assert_eq!(s.authenticate(t0(), &globex.access_token).unwrap().sites, both);
        // Another account's consent does not widen this one's.
        let other = Consent {
            account_id: "other".into(),
            sites: vec!["initech.atlassian.net".into()],
            ..consent(None, &["read:me"])
        };
        let code = s.issue_code(t0(), other).unwrap();
        s.exchange_code(t0(), "app", &code, Some("https://app/cb"), None, 3600)
            .unwrap();
        assert_eq!(s.authenticate(t0(), &acme.access_token).unwrap().sites, both);
        // Revoking the app forgets the sites: a new consent starts from its own site.
        s.revoke_user("acc", "app");
        let code = s.issue_code(t0(), consent(None, &["read:me"])).unwrap();
        let fresh = s
            .exchange_code(t0(), "app", &code, Some("https://app/cb"), None, 3600)
            .unwrap();
        assert_eq!(
            s.authenticate(t0(), &fresh.access_token).unwrap().sites,
            vec!["acme.atlassian.net".to_string()]
        );
    }

    #[test]
    fn client_credentials_token_expires() {
        let mut s = TokenStore::default();
        let p = Principal {
            client_id: "sa".into(),
            account_id: "sa-acc".into(),
            scopes: vec!["read:me".into()],
            sites: vec!["acme.atlassian.net".into()],
        };
        let g = s.client_credentials(t0(), p.clone(), 3600).unwrap();
        assert_eq!(g.refresh_token, None);
        assert_eq!(s.authenticate(after(t0(), 3599), &g.access_token), Ok(p));
        assert_eq!(
            s.authenticate(after(t0(), 3600), &g.access_token),
            Err(AccessError::Expired)
        );
    }
}
