//! The crypto envelope that keeps token sets at rest (DESIGN.md section 3).
//!
//! ```text
//! envelope = 0x01 | len(key id) | key id | salt (16) | nonce (12) | AES-256-GCM(ciphertext+tag)
//! data key = HKDF-SHA256(ikm = master key, salt, info = "confluence-auth.dev/v1 tenant:" + namespace)
//! aad      = "confluence-auth.dev/v1" NUL namespace NUL kind NUL name NUL uid
//! ```
//!
//! A fresh salt gives every envelope its own data key, so random 96-bit nonces never approach
//! AES-GCM's per-key limit however often a namespace refreshes. The namespace in the HKDF info
//! keeps tenants apart; the AAD pins an envelope to one object, so a copied envelope fails.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use k8s_openapi::ByteString;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Format version byte at the start of every envelope.
pub const FORMAT_VERSION: u8 = 0x01;
/// Prefix of master-key entries in the keys Secret.
pub const KEY_PREFIX: &str = "key-";
/// Entry of the keys Secret naming the key id used for new writes.
pub const PRIMARY_ENTRY: &str = "primary";
const CONTEXT: &str = "confluence-auth.dev/v1";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Why the key ring or an envelope cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The keys Secret holds no `key-<id>` entry.
    #[error("the keys Secret holds no master key: add an entry key-<id> with 32 random bytes and set primary to <id>")]
    NoKeys,
    /// The keys Secret has no `primary` entry.
    #[error("the keys Secret has no 'primary' entry: set it to the id of the key for new writes")]
    NoPrimary,
    /// `primary` names a key that is not in the Secret.
    #[error("the keys Secret's primary names key id {0:?}, but there is no entry key-{0}")]
    PrimaryMissing(String),
    /// A master key is not exactly 32 bytes.
    #[error("master key {id:?} is {len} bytes; it must be exactly 32 random bytes")]
    BadKeyLength {
        /// The key id.
        id: String,
        /// Its length.
        len: usize,
    },
    /// A key id is empty, too long or not `[A-Za-z0-9._-]`.
    #[error("key id {0:?} is not usable: use 1 to 200 characters of letters, digits, '.', '_' or '-'")]
    BadKeyId(String),
    /// The envelope was sealed with a key id the ring does not hold.
    #[error("the envelope was sealed with master key id {0:?}, which the keys Secret no longer holds")]
    UnknownKeyId(String),
    /// The envelope's format byte is not one this operator reads.
    #[error("envelope format version {0:#04x} is not supported")]
    UnsupportedVersion(u8),
    /// The envelope is shorter than its header says.
    #[error("the envelope is truncated or malformed")]
    Malformed,
    /// Authentication failed: tampered bytes, a wrong key, or an envelope moved to another object.
    #[error(
        "the envelope does not decrypt for this object: it was altered, moved from another object, or sealed with a different key"
    )]
    Decrypt,
}

impl VaultError {
    /// Bounded category for Event reasons, condition reasons and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NoKeys
            | Self::NoPrimary
            | Self::PrimaryMissing(_)
            | Self::BadKeyLength { .. }
            | Self::BadKeyId(_) => "KeyRingInvalid",
            Self::UnknownKeyId(_) | Self::UnsupportedVersion(_) | Self::Malformed | Self::Decrypt => "VaultUnreadable",
        }
    }
}

/// The object an envelope belongs to; it becomes the AAD (and the namespace picks the tenant key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// Namespace: the tenant.
    pub namespace: &'a str,
    /// Kind of the owning resource.
    pub kind: &'a str,
    /// Name of the owning resource.
    pub name: &'a str,
    /// UID of the owning resource (a re-created object cannot open the old one's envelope).
    pub uid: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        [CONTEXT, self.namespace, self.kind, self.name, self.uid]
            .join("\0")
            .into_bytes()
    }
}

/// A master key; its bytes are zeroed on drop and never printed.
#[derive(Clone)]
struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

/// The master keys loaded from the keys Secret. Writes use the primary; reads use whichever
/// key the envelope names, so rotation is: add a key, switch `primary`.
#[derive(Clone)]
pub struct KeyRing {
    primary: String,
    keys: BTreeMap<String, MasterKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Loads the ring from the keys Secret's `data`.
    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<Self, VaultError> {
        let mut keys = BTreeMap::new();
        for (entry, value) in data {
            let Some(id) = entry.strip_prefix(KEY_PREFIX) else {
                continue;
            };
            check_key_id(id)?;
            let bytes: [u8; KEY_LEN] = value.0.as_slice().try_into().map_err(|_| VaultError::BadKeyLength {
                id: id.to_string(),
                len: value.0.len(),
            })?;
            keys.insert(id.to_string(), MasterKey(Zeroizing::new(bytes)));
        }
        if keys.is_empty() {
            return Err(VaultError::NoKeys);
        }
        let primary = data.get(PRIMARY_ENTRY).ok_or(VaultError::NoPrimary)?;
        let primary = String::from_utf8_lossy(&primary.0).trim().to_string();
        if !keys.contains_key(&primary) {
            return Err(VaultError::PrimaryMissing(primary));
        }
        Ok(Self { primary, keys })
    }

    /// A ring of one freshly generated key (for the demo and tests; production keys come from
    /// the keys Secret).
    pub fn generate(id: &str) -> Result<Self, VaultError> {
        check_key_id(id)?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut());
        Ok(Self {
            primary: id.to_string(),
            keys: BTreeMap::from([(id.to_string(), MasterKey(bytes))]),
        })
    }

    /// The keys Secret's `data` for this ring (the inverse of [`KeyRing::from_secret_data`]).
    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut data: BTreeMap<String, ByteString> = self
            .keys
            .iter()
            .map(|(id, key)| (format!("{KEY_PREFIX}{id}"), ByteString(key.0.to_vec())))
            .collect();
        data.insert(PRIMARY_ENTRY.to_string(), ByteString(self.primary.clone().into_bytes()));
        data
    }

    /// The key id new envelopes are sealed with.
    pub fn primary_id(&self) -> &str {
        &self.primary
    }

    /// `<id>:<check value>` of the primary key, which seals every envelope written now. The check
    /// value (64 bits from HKDF under its own label, like a key check value) tells a key replaced
    /// under the same id without opening a vault, and says nothing usable about the key.
    pub fn primary_check(&self) -> Option<String> {
        let key = self.keys.get(&self.primary)?;
        Some(format!("{}:{}", self.primary, check_value(key)))
    }

    /// True when `check` (a [`primary_check`](Self::primary_check) of the ring that sealed an
    /// envelope) names a key this ring holds, with the same check value.
    pub fn holds(&self, check: &str) -> bool {
        let Some((id, value)) = check.rsplit_once(':') else {
            return false;
        };
        self.keys.get(id).is_some_and(|key| check_value(key) == value)
    }

    /// Encrypts `plaintext` for the object `binding` with the primary key.
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut salt);
        fill_random(&mut nonce);
        self.seal_with(binding, plaintext, salt, nonce)
    }

    /// `seal` with a chosen salt and nonce: the deterministic core, pinned by a test vector.
    fn seal_with(
        &self,
        binding: &Binding<'_>,
        plaintext: &[u8],
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, VaultError> {
        let master = self
            .keys
            .get(&self.primary)
            .ok_or_else(|| VaultError::PrimaryMissing(self.primary.clone()))?;
        let cipher = data_cipher(master, &salt, binding.namespace);
        let aad = binding.aad();
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Malformed)?;
        let id = self.primary.as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + SALT_LEN + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_VERSION);
        out.push(id.len() as u8); // check_key_id bounds ids to 200 bytes
        out.extend_from_slice(id);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts an envelope of the object `binding`. The plaintext is zeroed on drop.
    pub fn open(&self, binding: &Binding<'_>, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let (&version, rest) = envelope.split_first().ok_or(VaultError::Malformed)?;
        if version != FORMAT_VERSION {
            return Err(VaultError::UnsupportedVersion(version));
        }
        let (&id_len, rest) = rest.split_first().ok_or(VaultError::Malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + SALT_LEN + NONCE_LEN + 16 {
            return Err(VaultError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let (salt, rest) = rest.split_at(SALT_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| VaultError::Malformed)?;
        let master = self
            .keys
            .get(id)
            .ok_or_else(|| VaultError::UnknownKeyId(id.to_string()))?;
        let cipher = data_cipher(master, salt, binding.namespace);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Malformed)?;
        let aad = binding.aad();
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Decrypt)
    }
}

/// A key's check value: 8 bytes of HKDF-SHA256 output under a label of its own, in hex.
fn check_value(master: &MasterKey) -> String {
    let mut out = [0u8; 8];
    Hkdf::<Sha256>::new(None, master.0.as_ref())
        .expand(format!("{CONTEXT} key check").as_bytes(), &mut out)
        .unwrap_or_else(|_| unreachable!("8 bytes is a valid HKDF-SHA256 output length"));
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// The per-envelope, per-tenant AES-256-GCM cipher.
fn data_cipher(master: &MasterKey, salt: &[u8], namespace: &str) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    let info = format!("{CONTEXT} tenant:{namespace}");
    Hkdf::<Sha256>::new(Some(salt), master.0.as_ref())
        .expand(info.as_bytes(), key.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))
}

fn check_key_id(id: &str) -> Result<(), VaultError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::BadKeyId(id.to_string()))
    }
}

fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing means the machine cannot do cryptography at all; there is no safe
    // fallback, so this is one of the few places a panic is the right answer.
    getrandom::fill(buf).unwrap_or_else(|e| panic!("the operating system's random source failed: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDING: Binding<'static> = Binding {
        namespace: "team-a",
        kind: "ConfluenceInstallation",
        name: "acme",
        uid: "uid-1",
    };

    fn ring(entries: &[(&str, [u8; 32])], primary: &str) -> KeyRing {
        let mut data: BTreeMap<String, ByteString> = entries
            .iter()
            .map(|(id, key)| (format!("key-{id}"), ByteString(key.to_vec())))
            .collect();
        data.insert("primary".into(), ByteString(primary.as_bytes().to_vec()));
        KeyRing::from_secret_data(&data).unwrap()
    }

    #[test]
    fn round_trip() {
        let ring = KeyRing::generate("k1").unwrap();
        let envelope = ring.seal(&BINDING, b"{\"refresh_token\":\"x\"}").unwrap();
        assert_eq!(
            ring.open(&BINDING, &envelope).unwrap().as_slice(),
            b"{\"refresh_token\":\"x\"}"
        );
        assert_eq!(envelope[0], FORMAT_VERSION);
        assert_eq!(&envelope[2..4], b"k1");
    }

    #[test]
    fn every_single_flipped_byte_fails() {
        let ring = KeyRing::generate("k1").unwrap();
        let envelope = ring.seal(&BINDING, b"token set").unwrap();
        for i in 0..envelope.len() {
            let mut bad = envelope.clone();
            bad[i] ^= 0x01;
            assert!(ring.open(&BINDING, &bad).is_err(), "flipping byte {i} went unnoticed");
        }
        assert_eq!(
            ring.open(&BINDING, &envelope[..envelope.len() - 1]),
            Err(VaultError::Decrypt)
        );
        assert_eq!(ring.open(&BINDING, &envelope[..20]), Err(VaultError::Malformed));
        assert_eq!(ring.open(&BINDING, &[]), Err(VaultError::Malformed));
    }

    #[test]
    fn an_envelope_moved_to_another_object_fails() {
        let ring = KeyRing::generate("k1").unwrap();
        let envelope = ring.seal(&BINDING, b"token set").unwrap();
        let moved = [
            Binding {
                namespace: "team-b",
                ..BINDING
            },
            Binding {
                name: "other",
                ..BINDING
            },
            Binding {
                kind: "ConfluenceUserAuth",
                ..BINDING
            },
            Binding {
                uid: "uid-2",
                ..BINDING
            },
        ];
        for binding in moved {
            assert_eq!(ring.open(&binding, &envelope), Err(VaultError::Decrypt), "{binding:?}");
        }
    }

    #[test]
    fn an_unknown_key_id_is_named() {
        let a = ring(&[("a", [1; 32])], "a");
        let b = ring(&[("b", [2; 32])], "b");
        let envelope = a.seal(&BINDING, b"x").unwrap();
        let err = b.open(&BINDING, &envelope).unwrap_err();
        assert_eq!(err, VaultError::UnknownKeyId("a".into()));
        assert!(err.to_string().contains("\"a\""), "{err}");
        assert_eq!(err.category(), "VaultUnreadable");
    }

    #[test]
    fn rotation_keeps_old_envelopes_readable_and_writes_with_the_new_primary() {
        let before = ring(&[("a", [1; 32])], "a");
        let old = before.seal(&BINDING, b"old").unwrap();
        let after = ring(&[("a", [1; 32]), ("b", [2; 32])], "b");
        assert_eq!(after.open(&BINDING, &old).unwrap().as_slice(), b"old");
        let new = after.seal(&BINDING, b"new").unwrap();
        assert_eq!(&new[1..3], &[1, b'b']);
        assert_eq!(before.open(&BINDING, &new), Err(VaultError::UnknownKeyId("b".into())));
    }

    #[test]
    fn the_same_key_under_another_id_does_not_open_it() {
        // The id is authenticated indirectly: a different id picks a different key entry.
        let a = ring(&[("a", [7; 32])], "a");
        let envelope = a.seal(&BINDING, b"x").unwrap();
        let wrong_key = ring(&[("a", [8; 32])], "a");
        assert_eq!(wrong_key.open(&BINDING, &envelope), Err(VaultError::Decrypt));
    }

    #[test]
    fn two_namespaces_get_different_data_keys() {
        let ring = ring(&[("a", [9; 32])], "a");
        let (salt, nonce) = ([3; 16], [4; 12]);
        let one = ring.seal_with(&BINDING, b"same plaintext", salt, nonce).unwrap();
        let two = ring
            .seal_with(
                &Binding {
                    namespace: "team-b",
                    ..BINDING
                },
                b"same plaintext",
                salt,
                nonce,
            )
            .unwrap();
        let header = 2 + 1 + 16 + 12;
        assert_ne!(
            one[header..],
            two[header..],
            "same master key, salt and nonce must still differ per tenant"
        );
    }

    /// Pins the byte format: version, id, salt, nonce, then AES-256-GCM under the HKDF key.
    /// The expected bytes were cross-checked with Python's `cryptography` (HKDF + AESGCM).
    #[test]
    fn fixed_key_and_nonce_test_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let ring = ring(&[("v1", key)], "v1");
        let salt: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let nonce: [u8; 12] = std::array::from_fn(|i| 0xb0 + i as u8);
        let envelope = ring.seal_with(&BINDING, b"hello vault", salt, nonce).unwrap();
        assert_eq!(hex::encode(&envelope), TEST_VECTOR);
        assert_eq!(ring.open(&BINDING, &envelope).unwrap().as_slice(), b"hello vault");
    }

    const TEST_VECTOR: &str = "01027631a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbf6b67ba97ad8ae97c363dbf6aaf270d848d39ebb04e3042e125b28";

    #[rstest::rstest]
    #[case(&[], VaultError::NoKeys)]
    #[case(&[("key-a", &[1u8; 32][..])], VaultError::NoPrimary)]
    #[case(&[("key-a", &[1u8; 32][..]), ("primary", b"b")], VaultError::PrimaryMissing("b".into()))]
    #[case(&[("key-a", &[1u8; 31][..]), ("primary", b"a")], VaultError::BadKeyLength { id: "a".into(), len: 31 })]
    #[case(&[("key-a/b", &[1u8; 32][..]), ("primary", b"a/b")], VaultError::BadKeyId("a/b".into()))]
    fn bad_key_secrets_are_refused(#[case] entries: &[(&str, &[u8])], #[case] expected: VaultError) {
        let data = entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect();
        assert_eq!(KeyRing::from_secret_data(&data).unwrap_err(), expected);
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let ring = ring(&[("a", [0x5a; 32])], "a");
        let shown = format!("{ring:?}");
        assert_eq!(shown, r#"KeyRing { primary: "a", key_ids: ["a"] }"#);
    }

    #[test]
    fn secret_data_round_trips() {
        let ring = KeyRing::generate("gen").unwrap();
        let again = KeyRing::from_secret_data(&ring.to_secret_data()).unwrap();
        let envelope = ring.seal(&BINDING, b"x").unwrap();
        assert_eq!(again.open(&BINDING, &envelope).unwrap().as_slice(), b"x");
        assert_eq!(again.primary_id(), "gen");
    }

    #[test]
    fn a_key_check_names_the_key_and_tells_a_replaced_one() {
        let ring = KeyRing::generate("1").unwrap();
        let check = ring.primary_check().unwrap();
        assert!(check.starts_with("1:") && check.len() == 2 + 16, "{check}");
        assert!(ring.holds(&check));
        let impostor = KeyRing::generate("1").unwrap();
        assert!(!impostor.holds(&check), "another key under the same id");
        assert!(!ring.holds("2:0000000000000000"));
        assert!(!ring.holds("garbage"));
        assert_eq!(ring.primary_check(), Some(check), "stable for one key");
    }
}
