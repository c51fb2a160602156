//! Ed25519 keys: the master's [`SigningKey`] (private, PKCS#8) and the [`PublicKey`] it hands to agents.
//!
//! A key's id (`kid`) is its RFC 7638 JWK thumbprint, so it is derived from the public key: anyone
//! can recompute it, two keys never share it, and a `kid` cannot be attached to the wrong key.
//!
//! Keys are generated and read with ring (PKCS#8, as before); tokens are signed with jsonwebtoken,
//! which gets the same PKCS#8 document as its [`jsonwebtoken::EncodingKey`].

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{b64url_decode, b64url_encode, sha256};
use crate::{AuthError, Claims};

/// The JWS algorithm name of every key of this crate.
pub const ALG_EDDSA: &str = "EdDSA";

/// Length of an Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The master's private Ed25519 key. It never leaves the master; `Debug` shows only its `kid`.
pub struct SigningKey {
    kid: String,
    public: [u8; ED25519_PUBLIC_KEY_LEN],
    /// The PKCS#8 document, for jsonwebtoken (wiped on drop, like `pkcs8`).
    encoding: jsonwebtoken::EncodingKey,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl SigningKey {
    /// Generates a fresh key with the system's CSPRNG.
    pub fn generate() -> Result<Self, AuthError> {
        let rng = ring::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AuthError::Random)?;
        Self::from_pkcs8_der(document.as_ref())
    }

    /// Loads an unencrypted PKCS#8 (v1 or v2) Ed25519 private key in DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, AuthError> {
        // v2 documents (ring's own) have their public key checked against the private key; v1
        // documents (`openssl genpkey -algorithm ed25519`) have none to check.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| AuthError::InvalidSigningKey { reason: e.to_string() })?;
        let mut public = [0u8; ED25519_PUBLIC_KEY_LEN];
        public.copy_from_slice(pair.public_key().as_ref());
        let encoding = jsonwebtoken::EncodingKey::from_ed_der(der);
        // jsonwebtoken parses the document only when it signs: sign once now, so that a key it
        // cannot use is refused at load time rather than at the first token.
        jsonwebtoken::crypto::sign(b"probe", &encoding, jsonwebtoken::Algorithm::EdDSA)
            .map_err(|e| AuthError::InvalidSigningKey { reason: format!("jsonwebtoken cannot sign with it: {e}") })?;
        Ok(Self { kid: thumbprint(&public), public, encoding, pkcs8: Zeroizing::new(der.to_vec()) })
    }

    /// Loads an unencrypted PKCS#8 Ed25519 private key in PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, AuthError> {
        let block = pem::parse(text).map_err(|e| AuthError::InvalidSigningKey { reason: e.to_string() })?;
        if block.tag() != "PRIVATE KEY" {
            return Err(AuthError::InvalidSigningKey {
                reason: format!("PEM block is \"{}\", expected \"PRIVATE KEY\"", block.tag()),
            });
        }
        let der = Zeroizing::new(block.into_contents());
        Self::from_pkcs8_der(&der)
    }

    /// The key in PKCS#8 PEM, for persistence. Secret: store it only where the master's other
    /// secrets live (its data directory, mode 0700); the buffer is wiped when dropped.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.pkcs8.to_vec());
        Zeroizing::new(pem::encode(&block))
    }

    /// The key id (RFC 7638 thumbprint of the public key).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for verifiers; `verify_until` is `None` (the current key).
    pub fn public_key(&self) -> PublicKey {
        PublicKey { kid: self.kid.clone(), raw: self.public, verify_until: None }
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        self.public_key().to_jwk()
    }

    /// Signs `claims` into a compact JWT with this key's `kid`.
    ///
    /// Low level: it checks nothing about the claims. Use [`crate::KeyRing::issue`] to mint tokens.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        crate::jwt::encode(&self.encoding, &self.kid, claims)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("private_key", &"<redacted>").finish()
    }
}

/// An Ed25519 public key with its `kid`, as the master publishes it to agents.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    kid: String,
    raw: [u8; ED25519_PUBLIC_KEY_LEN],
    verify_until: Option<u64>,
}

impl PublicKey {
    /// The key as the master sends it to agents (the inverse of [`PublicKey::new`]).
    pub fn to_wire(&self) -> ragmesh_proto::v1::VerificationKey {
        ragmesh_proto::v1::VerificationKey {
            kid: self.kid().to_owned(),
            algorithm: self.alg().to_owned(),
            public_key: self.raw().to_vec(),
            verify_until: self.verify_until().unwrap_or(0),
        }
    }

    /// Builds a key from its parts as sent over the wire; rejects an `alg` other than EdDSA and a
    /// `kid` that is not the key's thumbprint.
    pub fn new(kid: &str, alg: &str, raw: &[u8], verify_until: Option<u64>) -> Result<Self, AuthError> {
        if alg != ALG_EDDSA {
            return Err(AuthError::InvalidPublicKey { reason: format!("algorithm \"{alg}\" is not EdDSA") });
        }
        let key = Self::from_raw(raw, verify_until)?;
        if key.kid != kid {
            return Err(AuthError::InvalidPublicKey {
                reason: format!("key id \"{kid}\" is not the key's thumbprint \"{}\"", key.kid),
            });
        }
        Ok(key)
    }

    /// Builds a key from its 32 raw bytes; the `kid` is computed.
    pub fn from_raw(raw: &[u8], verify_until: Option<u64>) -> Result<Self, AuthError> {
        let raw: [u8; ED25519_PUBLIC_KEY_LEN] = raw.try_into().map_err(|_| AuthError::InvalidPublicKey {
            reason: format!("an Ed25519 public key is {ED25519_PUBLIC_KEY_LEN} bytes, not {}", raw.len()),
        })?;
        Ok(Self { kid: thumbprint(&raw), raw, verify_until })
    }

    /// Builds a key from a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8], verify_until: Option<u64>) -> Result<Self, AuthError> {
        match der.strip_prefix(ED25519_SPKI_PREFIX.as_slice()) {
            Some(raw) => Self::from_raw(raw, verify_until),
            None => Err(AuthError::InvalidPublicKey { reason: "not an Ed25519 SubjectPublicKeyInfo".into() }),
        }
    }

    /// Builds a key from PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str, verify_until: Option<u64>) -> Result<Self, AuthError> {
        let block = pem::parse(text).map_err(|e| AuthError::InvalidPublicKey { reason: e.to_string() })?;
        if block.tag() != "PUBLIC KEY" {
            return Err(AuthError::InvalidPublicKey {
                reason: format!("PEM block is \"{}\", expected \"PUBLIC KEY\"", block.tag()),
            });
        }
        Self::from_spki_der(block.contents(), verify_until)
    }

    /// Builds a key from a JWK (`kty` OKP, `crv` Ed25519); checks `alg` and `kid` when present.
    pub fn from_jwk(jwk: &Jwk, verify_until: Option<u64>) -> Result<Self, AuthError> {
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(AuthError::InvalidPublicKey {
                reason: format!("JWK is kty \"{}\" crv \"{}\", expected OKP Ed25519", jwk.kty, jwk.crv),
            });
        }
        let raw = b64url_decode(&jwk.x).map_err(|e| AuthError::InvalidPublicKey { reason: format!("JWK x: {e}") })?;
        let alg = jwk.alg.as_deref().unwrap_or(ALG_EDDSA);
        match &jwk.kid {
            Some(kid) => Self::new(kid, alg, &raw, verify_until),
            None if alg == ALG_EDDSA => Self::from_raw(&raw, verify_until),
            None => Err(AuthError::InvalidPublicKey { reason: format!("algorithm \"{alg}\" is not EdDSA") }),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS algorithm, always `EdDSA`.
    pub fn alg(&self) -> &'static str {
        ALG_EDDSA
    }

    /// The 32 raw key bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// For a retired key, the last unix second at which tokens signed with it are accepted;
    /// `None` for the current key.
    pub fn verify_until(&self) -> Option<u64> {
        self.verify_until
    }

    /// The key as a DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        der
    }

    /// The key as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der()))
    }

    /// The key as a JWK.
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64url_encode(&self.raw),
            kid: Some(self.kid.clone()),
            alg: Some(ALG_EDDSA.into()),
            key_use: Some("sig".into()),
        }
    }

    /// The same key with another end of validity.
    pub(crate) fn with_verify_until(mut self, verify_until: Option<u64>) -> Self {
        self.verify_until = verify_until;
        self
    }

    /// Whether a token signed with this key is still acceptable at `now`.
    pub(crate) fn is_acceptable_at(&self, now: u64) -> bool {
        self.verify_until.is_none_or(|until| now <= until)
    }

    /// The key as jsonwebtoken wants it for EdDSA: the 32 raw bytes (despite the name of
    /// `from_ed_der`, its RustCrypto backend reads the first 32 bytes as the key, not a DER SPKI).
    pub(crate) fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        jsonwebtoken::DecodingKey::from_ed_der(&self.raw)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("alg", &ALG_EDDSA)
            .field("verify_until", &self.verify_until)
            .finish()
    }
}

/// A JSON Web Key (RFC 7517/8037) for an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type, `OKP`.
    pub kty: String,
    /// Curve, `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Algorithm, `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use, `sig`.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 of the canonical JWK members, base64url.
fn thumbprint(raw: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64url_encode(raw));
    b64url_encode(&sha256(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3: thumbprint of the example Ed25519 key.
        let x = b64url_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").expect("x");
        assert_eq!(thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn private_key_round_trips_through_pem_and_keeps_its_kid() {
        let key = SigningKey::generate().expect("generate");
        let pem_text = key.to_pkcs8_pem();
        assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = SigningKey::from_pkcs8_pem(&pem_text).expect("parse");
        assert_eq!(back.kid(), key.kid());
        assert_eq!(back.public_key(), key.public_key());
        let other = SigningKey::generate().expect("generate");
        assert_ne!(other.kid(), key.kid(), "fresh keys get fresh ids");
    }

    #[test]
    fn openssl_style_pkcs8_v1_key_loads() {
        // RFC 8410 section 10.3 example private key (PKCS#8 v1, as `openssl genpkey` writes).
        let text = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pkcs8_pem(text).expect("v1 key");
        // Its public key per RFC 8410 section 10.1.
        let expected = PublicKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
            None,
        )
        .expect("public key");
        assert_eq!(key.public_key(), expected);
    }

    #[test]
    fn bad_private_keys_are_rejected_with_what_to_provide() {
        let err = SigningKey::from_pkcs8_pem("not pem").expect_err("garbage");
        assert!(matches!(err, AuthError::InvalidSigningKey { .. }), "{err:?}");
        assert!(err.to_string().contains("PKCS#8 PEM"), "{err}");
        let public_pem = SigningKey::generate().expect("generate").public_key().to_pem();
        let err = SigningKey::from_pkcs8_pem(&public_pem).expect_err("a public key is not a private key");
        assert!(err.to_string().contains("expected \"PRIVATE KEY\""), "{err}");
    }

    #[test]
    fn public_key_forms_round_trip_and_check_the_kid() {
        let key = SigningKey::generate().expect("generate").public_key();
        assert_eq!(PublicKey::from_pem(&key.to_pem(), None).expect("pem"), key);
        assert_eq!(PublicKey::from_spki_der(&key.spki_der(), None).expect("der"), key);
        assert_eq!(PublicKey::from_jwk(&key.to_jwk(), None).expect("jwk"), key);
        assert_eq!(PublicKey::new(key.kid(), "EdDSA", key.raw(), Some(5)).expect("parts").verify_until(), Some(5));

        let err = PublicKey::new("someone-else", "EdDSA", key.raw(), None).expect_err("kid mismatch");
        assert!(err.to_string().contains("thumbprint"), "{err}");
        let err = PublicKey::new(key.kid(), "HS256", key.raw(), None).expect_err("alg");
        assert!(err.to_string().contains("not EdDSA"), "{err}");
        assert!(PublicKey::from_raw(&[0u8; 31], None).is_err());
    }

    #[test]
    fn debug_never_shows_private_material() {
        let key = SigningKey::generate().expect("generate");
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()) && shown.contains("<redacted>"), "{shown}");
        let pem_body: String = key.to_pkcs8_pem().lines().nth(1).unwrap_or_default().to_owned();
        assert!(!shown.contains(&pem_body));
    }
}
