//! JSON encoding of the records this crate keeps in the state store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AuthError;

/// Encodes a record for `tree` (cannot fail for the plain structs of this crate; reported as a
/// corrupt record if it ever does).
pub(crate) fn encode<T: Serialize>(tree: &'static str, record: &T) -> Result<Vec<u8>, AuthError> {
    serde_json::to_vec(record).map_err(|e| AuthError::CorruptRecord { tree, reason: format!("cannot encode: {e}") })
}

/// Decodes a record read from `tree`; a failure means the record is corrupt.
pub(crate) fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, AuthError> {
    serde_json::from_slice(bytes).map_err(|e| AuthError::CorruptRecord { tree, reason: e.to_string() })
}
