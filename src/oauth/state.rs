//! The sealed, expiring, single-use OAuth `state`, its PKCE verifier and the browser cookie
//! bound to it (DESIGN.md section 4, steps 1–3).
//!
//! The state is a vault envelope (same key ring, its own fixed binding), so every replica can
//! open what any replica sealed: the webhook keeps no memory between start and callback.
//! Single use comes from the resource: the state names the status nonce it was started from,
//! and the callback accepts it only while that nonce is still current.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::vault::{Binding, KeyRing};

/// How long a started flow may take to come back.
pub const STATE_TTL: Duration = Duration::from_secs(10 * 60);
/// Prefix of the flow cookie's name (the rest is the flow id, so parallel flows coexist).
pub const COOKIE_PREFIX: &str = "cao_flow_";
/// The vault binding of states: not an object, so its own fixed AAD.
const STATE_BINDING: Binding<'static> = Binding {
    namespace: "",
    kind: "OAuthState",
    name: "",
    uid: "",
};

/// Which of the two kinds a flow is for, as it appears in `/oauth/start/<ns>/<kind>/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A `ConfluenceInstallation`.
    Installation,
    /// A `ConfluenceUserAuth`.
    User,
}

impl ResourceKind {
    /// The path segment.
    pub fn segment(self) -> &'static str {
        match self {
            Self::Installation => "installation",
            Self::User => "user",
        }
    }

    /// Parses a path segment.
    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "installation" => Some(Self::Installation),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// The object a flow is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTarget {
    /// Namespace.
    pub namespace: String,
    /// Kind.
    pub kind: ResourceKind,
    /// Name.
    pub name: String,
    /// UID (a deleted and re-created object has another).
    pub uid: String,
}

/// What the sealed state carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowState {
    /// The object.
    pub target: FlowTarget,
    /// Hash of the status nonce the flow started from.
    pub nonce_hash: String,
    /// PKCE verifier for the code exchange.
    #[serde(serialize_with = "expose", deserialize_with = "conceal")]
    pub pkce_verifier: SecretString,
    /// Names the cookie (`cao_flow_<id>`).
    pub flow_id: String,
    /// SHA-256 of the cookie's value.
    pub cookie_hash: String,
    /// Unix seconds after which the state is refused.
    pub expires_at: i64,
}

/// A started flow: what the start endpoint sends the browser.
#[derive(Debug)]
pub struct StartedFlow {
    /// The `state` parameter.
    pub state: String,
    /// PKCE S256 challenge for the authorize link.
    pub code_challenge: String,
    /// Cookie name.
    pub cookie_name: String,
    /// Cookie value (random; the state holds only its hash).
    pub cookie_value: SecretString,
}

/// Why a state or its cookie is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a state this operator sealed (garbled, forged, or sealed with a retired key).
    #[error("the state parameter is not valid")]
    Invalid,
    /// Older than [`STATE_TTL`].
    #[error("the authorization took longer than 10 minutes")]
    Expired,
    /// The browser did not send the flow's cookie.
    #[error("the browser did not send the cookie set when the authorization started")]
    MissingCookie,
    /// The cookie does not belong to this state.
    #[error("the browser's cookie does not belong to this authorization")]
    CookieMismatch,
}

/// A fresh random nonce for an authorization link, and the hash kept in status.
pub fn new_nonce() -> (String, String) {
    let nonce = random_token(24);
    let hash = hash_hex(&nonce);
    (nonce, hash)
}

/// SHA-256 hex of a string (nonces, cookie values).
pub fn hash_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Starts a flow: PKCE pair, cookie, sealed state.
pub fn start(
    ring: &KeyRing,
    target: FlowTarget,
    nonce_hash: String,
    now: Timestamp,
) -> Result<StartedFlow, crate::vault::VaultError> {
    let pkce_verifier = oauth2::PkceCodeVerifier::new(random_token(48));
    let code_challenge = oauth2::PkceCodeChallenge::from_code_verifier_sha256(&pkce_verifier)
        .as_str()
        .to_string();
    let flow_id = random_token(9);
    let cookie_value = random_token(32);
    let state = FlowState {
        target,
        nonce_hash,
        pkce_verifier: SecretString::from(pkce_verifier.secret().clone()),
        cookie_hash: hash_hex(&cookie_value),
        flow_id: flow_id.clone(),
        expires_at: now.as_second() + STATE_TTL.as_secs() as i64,
    };
    let json = zeroize::Zeroizing::new(serde_json::to_vec(&state).unwrap_or_else(|e| unreachable!("{e}")));
    let sealed = ring.seal(&STATE_BINDING, &json)?;
    Ok(StartedFlow {
        state: URL_SAFE_NO_PAD.encode(sealed),
        code_challenge,
        cookie_name: format!("{COOKIE_PREFIX}{flow_id}"),
        cookie_value: SecretString::from(cookie_value),
    })
}

/// Opens a state from the callback and checks its age.
pub fn open(ring: &KeyRing, state: &str, now: Timestamp) -> Result<FlowState, StateError> {
    let sealed = URL_SAFE_NO_PAD
        .decode(state.as_bytes())
        .map_err(|_| StateError::Invalid)?;
    let json = ring.open(&STATE_BINDING, &sealed).map_err(|_| StateError::Invalid)?;
    let flow: FlowState = serde_json::from_slice(&json).map_err(|_| StateError::Invalid)?;
    if now.as_second() > flow.expires_at {
        return Err(StateError::Expired);
    }
    Ok(flow)
}

/// Checks that the `Cookie` header carries this flow's cookie.
pub fn check_cookie(flow: &FlowState, cookie_header: Option<&str>) -> Result<(), StateError> {
    let name = format!("{COOKIE_PREFIX}{}", flow.flow_id);
    let value = cookie_header
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .ok_or(StateError::MissingCookie)?;
    if hash_hex(value) == flow.cookie_hash {
        Ok(())
    } else {
        Err(StateError::CookieMismatch)
    }
}

/// The `Set-Cookie` value for a started flow: `HttpOnly; SameSite=Lax`, `Secure` on https.
pub fn set_cookie_header(flow: &StartedFlow, secure: bool) -> String {
    format!(
        "{}={}; Path=/oauth/callback; Max-Age={}; HttpOnly; SameSite=Lax{}",
        flow.cookie_name,
        flow.cookie_value.expose_secret(),
        STATE_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes a flow's cookie after the callback.
pub fn clear_cookie_header(flow: &FlowState) -> String {
    format!(
        "{COOKIE_PREFIX}{}=; Path=/oauth/callback; Max-Age=0; HttpOnly; SameSite=Lax",
        flow.flow_id
    )
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).unwrap_or_else(|e| panic!("the operating system's random source failed: {e}"));
    URL_SAFE_NO_PAD.encode(buf)
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

fn conceal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> FlowTarget {
        FlowTarget {
            namespace: "team-a".into(),
            kind: ResourceKind::Installation,
            name: "acme".into(),
            uid: "u1".into(),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn a_started_flow_opens_with_its_cookie() {
        let ring = KeyRing::generate("k").unwrap();
        let flow = start(&ring, target(), "nh".into(), now()).unwrap();
        let opened = open(&ring, &flow.state, now()).unwrap();
        assert_eq!(opened.target, target());
        assert_eq!(opened.nonce_hash, "nh");
        let cookie = format!("other=1; {}={}", flow.cookie_name, flow.cookie_value.expose_secret());
        assert_eq!(check_cookie(&opened, Some(&cookie)), Ok(()));
        // PKCE: the challenge is S256 of the verifier the state keeps.
        let verifier = oauth2::PkceCodeVerifier::new(opened.pkce_verifier.expose_secret().to_string());
        assert_eq!(
            oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier).as_str(),
            flow.code_challenge
        );
    }

    #[test]
    fn expired_garbled_and_foreign_states_are_refused() {
        let ring = KeyRing::generate("k").unwrap();
        let flow = start(&ring, target(), "nh".into(), now()).unwrap();
        let late = now() + jiff::SignedDuration::from_secs(STATE_TTL.as_secs() as i64 + 1);
        assert_eq!(open(&ring, &flow.state, late).unwrap_err(), StateError::Expired);
        assert_eq!(open(&ring, "not-a-state", now()).unwrap_err(), StateError::Invalid);
        let mut tampered = flow.state.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open(&ring, &String::from_utf8(tampered).unwrap(), now()).unwrap_err(),
            StateError::Invalid
        );
        let other_ring = KeyRing::generate("k").unwrap();
        assert_eq!(open(&other_ring, &flow.state, now()).unwrap_err(), StateError::Invalid);
    }

    #[test]
    fn the_cookie_must_be_this_flows() {
        let ring = KeyRing::generate("k").unwrap();
        let flow = start(&ring, target(), "nh".into(), now()).unwrap();
        let other = start(&ring, target(), "nh".into(), now()).unwrap();
        let opened = open(&ring, &flow.state, now()).unwrap();
        assert_eq!(check_cookie(&opened, None), Err(StateError::MissingCookie));
        let foreign = format!("{}={}", other.cookie_name, other.cookie_value.expose_secret());
        assert_eq!(check_cookie(&opened, Some(&foreign)), Err(StateError::MissingCookie));
        let wrong_value = format!("{}=guess", flow.cookie_name);
        assert_eq!(
            check_cookie(&opened, Some(&wrong_value)),
            Err(StateError::CookieMismatch)
        );
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_only_on_https() {
        let ring = KeyRing::generate("k").unwrap();
        let flow = start(&ring, target(), "nh".into(), now()).unwrap();
        let plain = set_cookie_header(&flow, false);
        assert!(
            plain.contains("HttpOnly; SameSite=Lax") && !plain.contains("Secure"),
            "{plain}"
        );
        assert!(set_cookie_header(&flow, true).ends_with("; Secure"));
    }
}
