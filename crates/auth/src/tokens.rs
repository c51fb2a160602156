//! Newtypes for the bearer secrets this crate hands out; their `Debug` never shows the secret.

use std::fmt;

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// A bearer secret: `Debug` prints only its length, and there is no `Display`, so that it cannot
        /// end up in a log line by accident. Use [`Self::as_str`] to send it.
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub(crate) fn new(secret: String) -> Self {
                Self(secret)
            }

            /// The secret text, to send to its holder.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The secret text, by value.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(<redacted, {} bytes>)"), self.0.len())
            }
        }
    };
}

secret_string!(
    /// A signed access token (a JWT) for a client to present on every RPC.
    AccessToken
);
secret_string!(
    /// A short-lived signed assertion of the caller's identity, forwarded by the master to agents.
    ContextToken
);
secret_string!(
    /// An opaque refresh token (`rmr_` + 32 random bytes in base64url); only its hash is stored.
    RefreshToken
);
secret_string!(
    /// An opaque agent join token (`rmj_` + 32 random bytes in base64url); only its hash is stored.
    JoinToken
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let token = RefreshToken::new("rmr_supersecret".into());
        let shown = format!("{token:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert_eq!(shown, "RefreshToken(<redacted, 15 bytes>)");
        assert_eq!(token.as_str(), "rmr_supersecret");
    }
}
