//! Redaction (secrets become `***` before anything is logged, audited or echoed) and the
//! argument digest: an HMAC-SHA256 over a canonical encoding, for idempotency comparison and
//! the audit record.

use std::collections::BTreeMap;

use hmac::{KeyInit as _, Mac as _};

use crate::schema::{ArgSpec, ArgValue, ValidArgs};
use crate::spec::ActionSpec;

/// What a secret (or an undeclared argument's) value is shown as.
pub const REDACTED: &str = "***";

/// Version tag at the start of the digested encoding; change it if the encoding changes.
const DIGEST_DOMAIN: &[u8] = b"ragmesh-actions/args-digest/v1";

/// A call's raw arguments safe to log: values of secret arguments, and of arguments the action
/// does not declare (a misspelt secret must not leak either), become [`REDACTED`].
pub fn redacted(spec: &ActionSpec, args: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    redacted_args(&spec.args, args)
}

/// [`redacted`] against the argument schema `schema` alone.
pub fn redacted_args(schema: &[ArgSpec], args: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut shown = BTreeMap::new();
    for (name, value) in args {
        let visible = schema.iter().any(|arg| arg.name == *name && !arg.secret);
        let text = if visible { value.clone() } else { REDACTED.to_owned() };
        shown.insert(name.clone(), text);
    }
    shown
}

/// HMAC-SHA256 under `key` of the canonical encoding of `args`: equal arguments give equal
/// digests whatever order they were passed in (the map is sorted, values canonical: `+7` is
/// `7`), and distinct arguments give distinct encodings (every field is length-prefixed and
/// typed). Keyed, so a digest in the audit log does not let anyone guess a low-entropy secret.
/// The action name and target are not included: callers add them to their own comparison.
pub fn digest(key: &[u8], args: &ValidArgs) -> [u8; 32] {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(&encode(args));
    mac.finalize().into_bytes().into()
}

/// The canonical, unambiguous encoding: domain tag, count, then per argument in name order
/// `len(name) name kind len(value) value`, lengths as 8-byte big-endian.
pub fn encode(args: &ValidArgs) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, DIGEST_DOMAIN);
    out.extend_from_slice(&(args.values().len() as u64).to_be_bytes());
    for (name, value) in args.values() {
        put(&mut out, name.as_bytes());
        let kind: u8 = match value {
            ArgValue::String(_) => b's',
            ArgValue::Integer(_) => b'i',
            ArgValue::Number(_) => b'n',
            ArgValue::Boolean(_) => b'b',
        };
        out.push(kind);
        put(&mut out, value.text().as_bytes());
    }
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}
