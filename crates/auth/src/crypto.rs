//! Small primitives the other modules share: system randomness, SHA-256 and strict unpadded base64url.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::AuthError;

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| AuthError::Random)?;
    Ok(bytes)
}

/// A random identifier or secret: `N` random bytes in base64url.
pub(crate) fn random_b64url<const N: usize>() -> Result<String, AuthError> {
    Ok(b64url_encode(&random_bytes::<N>()?))
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Unpadded base64url, as JWTs and our opaque tokens use.
pub(crate) fn b64url_encode(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Unpadded base64url; rejects padding and non-canonical trailing bits, so that every byte string
/// has exactly one accepted encoding (a changed character is never silently the same token).
pub(crate) fn b64url_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_canonical() {
        // 1 byte -> 2 characters; "AQ" is canonical for [1], "AR" has trailing bits set.
        assert_eq!(b64url_decode("AQ").expect("canonical"), vec![1]);
        assert!(b64url_decode("AR").is_err(), "non-canonical trailing bits are rejected");
        assert!(b64url_decode("AQ==").is_err(), "padding is rejected");
        assert!(b64url_decode("A+").is_err(), "standard alphabet is rejected");
    }

    #[test]
    fn random_values_differ() {
        let a = random_b64url::<16>().expect("rng");
        let b = random_b64url::<16>().expect("rng");
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
    }
}
