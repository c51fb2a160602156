//! What a token says (capabilities, [`Claims`]) and what a verified token yields ([`Principal`]).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::AuthError;
use crate::error::truncate_for_message;

/// A permission a token grants. Capabilities are independent: `Admin` does not imply the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Run searches.
    Search,
    /// Add or delete documents.
    Ingest,
    /// Run actions (two-phase commands on nodes).
    Actions,
    /// Operate the mesh: admit and evict nodes, issue and revoke tokens.
    Admin,
}

impl Capability {
    /// Every capability, in order.
    pub const ALL: [Capability; 4] = [Capability::Search, Capability::Ingest, Capability::Actions, Capability::Admin];

    /// The string form used in tokens, flags and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Search => "search",
            Capability::Ingest => "ingest",
            Capability::Actions => "actions",
            Capability::Admin => "admin",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = AuthError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        for capability in Capability::ALL {
            if capability.as_str() == value {
                return Ok(capability);
            }
        }
        Err(AuthError::UnknownCapability { value: truncate_for_message(value) })
    }
}

/// The claims of an access or context token, as signed by the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the master's configured name.
    pub iss: String,
    /// Audience: the service the token is for (`ragmesh` for access tokens, [`crate::CONTEXT_AUDIENCE`]
    /// for forwarded request context).
    pub aud: String,
    /// Subject: who the caller is.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Unique token id.
    pub jti: String,
    /// The caller's tenant: the only source of tenancy, never a request field.
    pub tenant: String,
    /// Granted capabilities, as strings.
    pub caps: Vec<Capability>,
}

/// The identity a verified token establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who the caller is (`sub`).
    pub subject: String,
    /// Their tenant.
    pub tenant: String,
    /// What they may do.
    pub capabilities: BTreeSet<Capability>,
    /// The token's `jti`, for audit logs and revocation lists.
    pub token_id: String,
    /// The token's `exp`, unix seconds.
    pub expires_at: u64,
    /// The token's `iat`, unix seconds (revocations apply to tokens issued before them).
    pub issued_at: u64,
}

impl Principal {
    /// Whether the principal holds `capability`.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    /// Succeeds when the principal holds `capability`; every RPC calls this with the one it needs.
    pub fn require(&self, capability: Capability) -> Result<(), AuthError> {
        if self.has(capability) {
            return Ok(());
        }
        Err(AuthError::MissingCapability { subject: truncate_for_message(&self.subject), capability })
    }
}

/// Longest subject, tenant or node name accepted as input.
const MAX_NAME_LEN: usize = 256;

/// Checks a name given as input (subject, tenant, node name): non-empty, short, no control characters.
pub(crate) fn check_name(field: &'static str, value: &str) -> Result<(), AuthError> {
    if value.is_empty() {
        return Err(AuthError::InvalidInput { field, problem: "must not be empty".into() });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(AuthError::InvalidInput { field, problem: format!("must be at most {MAX_NAME_LEN} bytes") });
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::InvalidInput { field, problem: "must not contain control characters".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_string_forms_round_trip() {
        for capability in Capability::ALL {
            assert_eq!(capability.to_string().parse::<Capability>().expect("round trip"), capability);
            let json = serde_json::to_string(&capability).expect("serialise");
            assert_eq!(json, format!("\"{capability}\""));
        }
        assert_eq!(Capability::Actions.to_string(), "actions");
    }

    #[test]
    fn unknown_capability_is_an_error_that_lists_the_known_ones() {
        let err = "superuser".parse::<Capability>().expect_err("unknown");
        assert!(matches!(err, AuthError::UnknownCapability { ref value } if value == "superuser"), "{err:?}");
        assert_eq!(err.to_string(), "unknown capability \"superuser\": use one of search, ingest, actions, admin");
        assert!("Search".parse::<Capability>().is_err(), "capability names are case-sensitive");
    }

    #[test]
    fn claims_serialise_capabilities_as_strings_and_omit_absent_nbf() {
        let claims = Claims {
            iss: "m".into(),
            aud: "ragmesh".into(),
            sub: "alice".into(),
            exp: 2,
            iat: 1,
            nbf: None,
            jti: "j".into(),
            tenant: "acme".into(),
            caps: vec![Capability::Search, Capability::Admin],
        };
        let json = serde_json::to_value(&claims).expect("serialise");
        assert_eq!(json["caps"], serde_json::json!(["search", "admin"]));
        assert!(json.get("nbf").is_none());
        let back: Claims = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, claims);
    }

    #[test]
    fn require_names_the_subject_and_the_missing_capability() {
        let principal = Principal {
            subject: "alice".into(),
            tenant: "acme".into(),
            capabilities: [Capability::Search].into_iter().collect(),
            token_id: "j".into(),
            expires_at: 10,
            issued_at: 0,
        };
        assert!(principal.require(Capability::Search).is_ok());
        let err = principal.require(Capability::Ingest).expect_err("lacks ingest");
        assert_eq!(
            err.to_string(),
            "token for subject \"alice\" lacks capability \"ingest\": ask an operator for a token with --cap ingest"
        );
        assert_eq!(err.kind(), ragmesh_proto::ErrorKind::PermissionDenied);
        assert!(principal.require(Capability::Admin).is_err(), "admin is not implied");
    }
}
