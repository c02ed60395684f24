//! Property tests (issue 10, "Fuzzing") of everything that parses input an attacker or a user
//! controls: the vault envelope, the OAuth `state` (a vault envelope in base64url), the callback
//! query, and the duration strings of the specs.
//!
//! Each property runs proptest's default 256 cases, so CI spends a few seconds here; the
//! `PROPTEST_CASES` environment variable runs more (SECURITY.md, "Fuzzing"):
//! `PROPTEST_CASES=200000 cargo nextest run --test fuzz`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use confluence_auth_operator::crd::ConfluenceInstallationSpec;
use confluence_auth_operator::oauth::flow::CallbackQuery;
use confluence_auth_operator::oauth::state::{self, FlowTarget, ResourceKind, StateError};
use confluence_auth_operator::vault::{Binding, FORMAT_VERSION, KeyRing};
use confluence_auth_operator::{duration, validation, webhook};
use jiff::Timestamp;
use proptest::prelude::*;
use secrecy::ExposeSecret;

fn ring() -> KeyRing {
    KeyRing::generate("k1").unwrap()
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

/// Owned parts of a [`Binding`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
}

impl Owner {
    fn binding(&self) -> Binding<'_> {
        Binding {
            namespace: &self.namespace,
            kind: &self.kind,
            name: &self.name,
            uid: &self.uid,
        }
    }
}

fn owner() -> impl Strategy<Value = Owner> {
    (
        "[a-z0-9-]{0,20}",
        prop_oneof![
            Just("ConfluenceInstallation".to_string()),
            Just("ConfluenceUserAuth".to_string()),
            ".{0,12}"
        ],
        "[a-z0-9.-]{0,30}",
        "[a-f0-9-]{0,36}",
    )
        .prop_map(|(namespace, kind, name, uid)| Owner {
            namespace,
            kind,
            name,
            uid,
        })
}

/// Bytes shaped like an envelope (version byte, a key-id length and id this ring holds, then
/// junk), so the cases reach the decryption and not only the header checks.
fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|junk| {
            let mut bytes = vec![FORMAT_VERSION, 2, b'k', b'1'];
            bytes.extend(junk);
            bytes
        }),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(len, junk)| {
            let mut bytes = vec![FORMAT_VERSION, len];
            bytes.extend(junk);
            bytes
        }),
    ]
}

proptest! {
    /// Arbitrary bytes never open (and never panic): forging an envelope means breaking AES-GCM.
    #[test]
    fn arbitrary_bytes_never_open_as_an_envelope(bytes in envelope_like(), who in owner()) {
        prop_assert!(ring().open(&who.binding(), &bytes).is_err());
    }

    /// Sealing then opening for the same object gives the plaintext back.
    #[test]
    fn an_envelope_round_trips(plaintext in proptest::collection::vec(any::<u8>(), 0..2048), who in owner()) {
        let ring = ring();
        let sealed = ring.seal(&who.binding(), &plaintext).unwrap();
        prop_assert_eq!(&ring.open(&who.binding(), &sealed).unwrap()[..], &plaintext[..]);
    }

    /// Any single changed byte anywhere in an envelope (header, key id, salt, nonce, ciphertext
    /// or tag) makes it fail to open.
    #[test]
    fn any_flipped_byte_fails_to_open(
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        who in owner(),
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let ring = ring();
        let mut sealed = ring.seal(&who.binding(), &plaintext).unwrap();
        let i = position.index(sealed.len());
        sealed[i] ^= mask;
        prop_assert!(ring.open(&who.binding(), &sealed).is_err(), "byte {} of {} changed and it still opened", i, sealed.len());
    }

    /// A truncated envelope fails to open.
    #[test]
    fn a_truncated_envelope_fails_to_open(
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        who in owner(),
        cut in any::<prop::sample::Index>(),
    ) {
        let ring = ring();
        let sealed = ring.seal(&who.binding(), &plaintext).unwrap();
        let keep = cut.index(sealed.len());
        prop_assert!(ring.open(&who.binding(), &sealed[..keep]).is_err());
    }

    /// An envelope opens for its own object only (AAD binding): another namespace, kind, name or
    /// uid is refused, and so is another ring with the same key id.
    #[test]
    fn an_envelope_opens_for_its_owner_only(
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        who in owner(),
        other in owner(),
    ) {
        let ring = ring();
        let sealed = ring.seal(&who.binding(), &plaintext).unwrap();
        if other != who {
            prop_assert!(ring.open(&other.binding(), &sealed).is_err());
        }
        prop_assert!(KeyRing::generate("k1").unwrap().open(&who.binding(), &sealed).is_err());
    }

    /// Any string as `state` is refused as invalid, never a panic and never "expired" (which
    /// would mean it had opened).
    #[test]
    fn arbitrary_states_are_invalid(text in ".{0,600}") {
        prop_assert_eq!(state::open(&ring(), &text, now()).unwrap_err(), StateError::Invalid);
    }

    /// Well-formed base64url that is not a sealed state is refused too (this reaches the
    /// envelope parser instead of stopping at the base64 decoding).
    #[test]
    fn base64_states_that_were_not_sealed_are_invalid(bytes in envelope_like()) {
        let text = URL_SAFE_NO_PAD.encode(&bytes);
        prop_assert_eq!(state::open(&ring(), &text, now()).unwrap_err(), StateError::Invalid);
    }

    /// A started flow's state opens to what was sealed, with its cookie only; any single changed
    /// character of the state makes it invalid.
    #[test]
    fn a_state_round_trips_and_resists_edits(
        namespace in "[a-z0-9-]{1,63}",
        name in "[a-z0-9.-]{1,253}",
        uid in "[a-f0-9-]{1,36}",
        user in any::<bool>(),
        nonce_hash in "[a-f0-9]{64}",
        position in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_-]",
        cookie_header in ".{0,200}",
    ) {
        let ring = ring();
        let target = FlowTarget {
            namespace,
            kind: if user { ResourceKind::User } else { ResourceKind::Installation },
            name,
            uid,
        };
        let flow = state::start(&ring, target.clone(), nonce_hash.clone(), now()).unwrap();
        let opened = state::open(&ring, &flow.state, now()).unwrap();
        prop_assert_eq!(&opened.target, &target);
        prop_assert_eq!(&opened.nonce_hash, &nonce_hash);
        let cookie = format!("{}={}", flow.cookie_name, flow.cookie_value.expose_secret());
        prop_assert_eq!(state::check_cookie(&opened, Some(&cookie)), Ok(()));
        // An arbitrary Cookie header passes only if it carries this very cookie.
        if !cookie_header.contains(flow.cookie_value.expose_secret()) {
            prop_assert!(state::check_cookie(&opened, Some(&cookie_header)).is_err());
        }
        let mut chars: Vec<char> = flow.state.chars().collect();
        let i = position.index(chars.len());
        let new = replacement.chars().next().unwrap();
        if chars[i] != new {
            chars[i] = new;
            let edited: String = chars.into_iter().collect();
            prop_assert_eq!(state::open(&ring, &edited, now()).unwrap_err(), StateError::Invalid);
        }
    }

    /// Any query string parses (missing fields read as missing), never a panic.
    #[test]
    fn arbitrary_callback_queries_parse_without_panicking(query in ".{0,2000}") {
        let parsed: CallbackQuery = webhook::parse_query(&query);
        // Whatever came out, a state that was not sealed here never opens.
        if let Some(text) = parsed.state {
            prop_assert!(state::open(&ring(), &text, now()).is_err());
        }
    }

    /// The callback's fields survive URL encoding and come back exactly, whatever junk
    /// parameters surround them.
    #[test]
    fn callback_queries_round_trip(
        code in proptest::option::of(".{0,100}"),
        state_param in proptest::option::of(".{0,300}"),
        error in proptest::option::of(".{0,60}"),
        description in proptest::option::of(".{0,200}"),
        junk in proptest::collection::vec(("[a-z_]{1,10}", ".{0,30}"), 0..4),
    ) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &junk {
            if !matches!(k.as_str(), "code" | "state" | "error" | "error_description") {
                query.append_pair(k, v);
            }
        }
        let fields = [("code", &code), ("state", &state_param), ("error", &error), ("error_description", &description)];
        for (k, v) in fields {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
        let parsed: CallbackQuery = webhook::parse_query(&query.finish());
        prop_assert_eq!(parsed.code, code);
        prop_assert_eq!(parsed.state, state_param);
        prop_assert_eq!(parsed.error, error);
        prop_assert_eq!(parsed.error_description, description);
    }

    /// Any string given as a duration is accepted or refused, never a panic; what is accepted
    /// matches the CRD schema's pattern (so the API server and the operator agree).
    #[test]
    fn arbitrary_durations_never_panic(text in prop_oneof![".{0,40}", "[0-9hms]{0,25}", "[0-9]{0,25}[hms]"]) {
        let pattern = regex::Regex::new(duration::PATTERN).unwrap();
        match duration::parse(&text) {
            Ok(_) => prop_assert!(pattern.is_match(&text), "{:?} parsed but the schema refuses it", text),
            Err(duration::DurationError::Malformed(echo)) => {
                prop_assert_eq!(&echo, &text);
                // The only strings the schema admits and the parser refuses are too large.
                if pattern.is_match(&text) {
                    prop_assert!(text.split(['h', 'm', 's']).any(|n| n.len() > 15), "{:?}", text);
                }
            }
        }
    }

    /// Formatting then parsing gives the duration back, for any whole number of seconds.
    #[test]
    fn durations_round_trip(secs in any::<u64>()) {
        let d = Duration::from_secs(secs);
        prop_assert_eq!(duration::parse(&duration::format(d)), Ok(d));
    }

    /// Any sequence of `<number><unit>` parts parses to their sum.
    #[test]
    fn composed_durations_parse_to_their_sum(parts in proptest::collection::vec((0u64..100_000, prop_oneof![Just('h'), Just('m'), Just('s')]), 1..6)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let sum: u64 = parts.iter().map(|(n, u)| n * match u { 'h' => 3600, 'm' => 60, _ => 1 }).sum();
        prop_assert_eq!(duration::parse(&text), Ok(Duration::from_secs(sum)));
    }

    /// Arbitrary `refreshBefore` and `healthCheckInterval` strings in a spec are accepted exactly
    /// when they parse and lie in range; otherwise the violation names the field. Never a panic.
    #[test]
    fn spec_durations_are_validated_without_panicking(
        refresh_before in prop_oneof![".{0,20}", "[0-9]{1,6}[hms]", "[0-9]{1,3}m[0-9]{1,3}s"],
        health in prop_oneof![".{0,20}", "[0-9]{1,6}[hms]", "[0-9]{1,2}h[0-9]{1,3}m"],
    ) {
        let spec: ConfluenceInstallationSpec = serde_json::from_value(serde_json::json!({
            "clientId": "demo-client",
            "clientSecretRef": {"name": "atlassian-app", "key": "client-secret"},
            "scopes": ["offline_access", "read:me"],
            "site": "acme.atlassian.net",
            "refreshBefore": refresh_before,
            "healthCheckInterval": health,
        }))
        .unwrap();
        let in_range = |text: &str, min: u64, max: u64| {
            duration::parse(text).is_ok_and(|d| d.as_secs() >= min && d.as_secs() <= max)
        };
        let refresh_ok = in_range(&refresh_before, 5, 55 * 60);
        let health_ok = in_range(&health, 10, 24 * 3600);
        match validation::installation("acme", &spec) {
            Ok(policy) => {
                prop_assert!(refresh_ok && health_ok);
                prop_assert_eq!(Ok(policy.refresh_before), duration::parse(&refresh_before));
                prop_assert_eq!(Ok(policy.health_check_interval), duration::parse(&health));
            }
            Err(e) => {
                prop_assert!(!(refresh_ok && health_ok), "refused a valid spec: {}", e);
                let fields: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
                prop_assert_eq!(fields.contains(&"spec.refreshBefore"), !refresh_ok);
                prop_assert_eq!(fields.contains(&"spec.healthCheckInterval"), !health_ok);
            }
        }
    }
}
