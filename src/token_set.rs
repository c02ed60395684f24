//! The token set kept in the vault: everything needed to refresh and to publish the access
//! token. Secret fields are `SecretString`: `Debug` shows `[REDACTED]`.

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credential as stored (encrypted) in the vault Secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenSet {
    /// The current access token.
    #[serde(serialize_with = "expose", deserialize_with = "conceal")]
    pub access_token: SecretString,
    /// The current refresh token (absent for client credentials).
    #[serde(default, serialize_with = "expose_opt", deserialize_with = "conceal_opt")]
    pub refresh_token: Option<SecretString>,
    /// When the access token expires.
    pub expires_at: Timestamp,
    /// Scopes Atlassian granted.
    pub scopes: Vec<String>,
    /// Cloud id of the site.
    pub cloud_id: String,
    /// URL of the site.
    pub site_url: String,
    /// Atlassian account id of the grant's owner.
    pub account_id: String,
    /// When this set was obtained.
    pub obtained_at: Timestamp,
    /// When the grant was first consented (the refresh token dies 365 days later).
    pub consented_at: Timestamp,
    /// For a user grant: the installation it was granted under. Kept here, under the
    /// envelope's authentication, because status can be written by others (SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<String>,
}

impl TokenSet {
    /// Serializes for sealing; the JSON holds secrets, so it is zeroed on drop.
    pub fn to_json(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(
            serde_json::to_vec(self).unwrap_or_else(|e| unreachable!("a TokenSet always serializes: {e}")),
        )
    }

    /// Parses an opened vault envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn expose<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

fn expose_opt<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

fn conceal<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn conceal_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_debug_prints_a_token() {
        let set = TokenSet {
            access_token: "atl_at_secret".into(),
            refresh_token: Some("atl_rt_secret".into()),
            expires_at: Timestamp::from_second(1_800_000_000).unwrap(),
            scopes: vec!["offline_access".into()],
            cloud_id: "c1".into(),
            site_url: "https://acme.atlassian.net".into(),
            account_id: "acc".into(),
            obtained_at: Timestamp::from_second(1_799_996_400).unwrap(),
            consented_at: Timestamp::from_second(1_799_996_400).unwrap(),
            installation: None,
        };
        let again = TokenSet::from_json(&set.to_json()).unwrap();
        assert_eq!(again.access_token.expose_secret(), "atl_at_secret");
        assert_eq!(again.refresh_token.as_ref().unwrap().expose_secret(), "atl_rt_secret");
        assert_eq!(again.expires_at, set.expires_at);
        let shown = format!("{again:?}");
        assert!(
            !shown.contains("atl_at_secret") && !shown.contains("atl_rt_secret"),
            "{shown}"
        );
    }
}
