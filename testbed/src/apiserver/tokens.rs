//! ServiceAccount tokens: the `token` subresource (`TokenRequest`, what `kubectl create token`
//! asks for) and `authentication.k8s.io/v1` `TokenReview` (what a gateway asks to learn who a
//! bearer token belongs to), in the shapes of `raw/tokenreview-*.json` and
//! `kubectl/create-token.log`.
//!
//! Tokens are JWT-shaped (header, claims, a random signature part) and valid only as issued by
//! this server: a review looks the token up, checks expiry, audiences, and that the
//! ServiceAccount still exists with the same uid (deleting it revokes its tokens, as on a
//! real cluster).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use serde_json::{Value, json};

/// The audience a token gets when the request names none (a kubeadm cluster's issuer).
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Default lifetime (`expirationSeconds` unset): one hour.
const DEFAULT_SECONDS: i64 = 3600;

/// The shortest lifetime the real server accepts.
const MIN_SECONDS: i64 = 600;

#[derive(Debug, Clone)]
struct Issued {
    namespace: String,
    name: String,
    uid: String,
    audiences: Vec<String>,
    expires: i64,
    jti: String,
}

/// Tokens this server issued.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
}

/// Why a TokenRequest is refused (422, field and message as the real server words them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field.
    pub field: &'static str,
    /// The message after the field.
    pub message: String,
}

impl Tokens {
    /// Issues a token for the ServiceAccount `namespace/name` (its `uid`) from a TokenRequest
    /// body; returns the TokenRequest answer.
    pub fn issue(&self, namespace: &str, name: &str, uid: &str, request: &Value) -> Result<Value, Refusal> {
        let seconds = request["spec"]["expirationSeconds"].as_i64().unwrap_or(DEFAULT_SECONDS);
        if seconds < MIN_SECONDS {
            return Err(Refusal {
                field: "spec.expirationSeconds",
                message: format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
            });
        }
        let mut audiences: Vec<String> = request["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if audiences.is_empty() {
            audiences.push(DEFAULT_AUDIENCE.to_string());
        }
        let now = jiff::Timestamp::now().as_second();
        let expires = now + seconds;
        let jti = random_uuid();
        let claims = json!({
            "aud": audiences, "exp": expires, "iat": now, "nbf": now, "iss": DEFAULT_AUDIENCE, "jti": jti,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut signature = [0u8; 32];
        let _ = getrandom::fill(&mut signature);
        let token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"testbed"}"#),
            b64(claims.to_string().as_bytes()),
            b64(&signature)
        );
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).insert(
            token.clone(),
            Issued {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
                audiences: audiences.clone(),
                expires,
                jti,
            },
        );
        let expiration = jiff::Timestamp::from_second(expires)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        Ok(json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": request["spec"]["boundObjectRef"].clone()},
            "status": {"token": token, "expirationTimestamp": expiration},
        }))
    }

    /// Answers a TokenReview: `current_uid(namespace, name)` gives the ServiceAccount's uid
    /// now (`None` once deleted).
    pub fn review(&self, review: &Value, current_uid: impl Fn(&str, &str) -> Option<String>) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut answer = json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"].clone(),
        });
        let issued = self
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        let now = jiff::Timestamp::now().as_second();
        let valid =
            issued.filter(|i| i.expires > now && current_uid(&i.namespace, &i.name).is_some_and(|uid| uid == i.uid));
        let Some(issued) = valid else {
            answer["status"] = json!({"user": {}, "error": "invalid bearer token"});
            return answer;
        };
        let audiences: Vec<String> = if wanted.is_empty() {
            issued.audiences.clone()
        } else {
            wanted
                .iter()
                .filter(|a| issued.audiences.contains(a))
                .cloned()
                .collect()
        };
        if audiences.is_empty() {
            answer["status"] = json!({"user": {}, "error": format!("token audiences {:?} is invalid for the target audiences {:?}", issued.audiences, wanted)});
            return answer;
        }
        answer["status"] = json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", issued.namespace, issued.name),
                "uid": issued.uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", issued.namespace), "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [format!("JTI={}", issued.jti)]},
            },
            "audiences": audiences,
        });
        answer
    }
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_reviews_as_its_service_account_until_that_is_gone() {
        let tokens = Tokens::default();
        let answer = tokens
            .issue("ns", "robot", "u-1", &json!({"spec": {"expirationSeconds": 600}}))
            .unwrap();
        let token = answer["status"]["token"].as_str().unwrap().to_string();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(answer["spec"]["audiences"], json!([DEFAULT_AUDIENCE]));
        let review = json!({"spec": {"token": token}});
        let ok = tokens.review(&review, |ns, n| (ns == "ns" && n == "robot").then(|| "u-1".into()));
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(ok["status"]["user"]["username"], "system:serviceaccount:ns:robot");
        assert_eq!(ok["status"]["user"]["uid"], "u-1");
        // Recreated with a new uid, or gone: the old token no longer authenticates.
        let stale = tokens.review(&review, |_, _| Some("u-2".into()));
        assert_eq!(stale["status"], json!({"user": {}, "error": "invalid bearer token"}));
        let garbage = tokens.review(&json!({"spec": {"token": "not-a-token"}}), |_, _| Some("u-1".into()));
        assert_eq!(garbage["status"], json!({"user": {}, "error": "invalid bearer token"}));
        let elsewhere = tokens.review(&json!({"spec": {"token": token, "audiences": ["other"]}}), |_, _| {
            Some("u-1".into())
        });
        assert!(elsewhere["status"]["authenticated"].is_null());
        assert!(
            elsewhere["status"]["error"]
                .as_str()
                .unwrap()
                .contains("invalid for the target audiences")
        );
    }

    #[test]
    fn short_lifetimes_are_refused() {
        let refusal = Tokens::default()
            .issue("ns", "robot", "u", &json!({"spec": {"expirationSeconds": 60}}))
            .unwrap_err();
        assert_eq!(refusal.field, "spec.expirationSeconds");
    }
}
