//! Who may use the HTTP endpoints: bearer tokens (never empty, compared in constant time, never
//! printed) and the rule that a server off loopback needs a token of its own.

use std::{fmt, net::SocketAddr};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq as _;

/// Why a token or a server's access settings are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the {server} token is empty; set a non-empty token ({flag}) or none")]
    EmptyToken { server: &'static str, flag: &'static str },
    #[error(
        "the {server} token contains a character that cannot travel in an HTTP header; use printable ASCII ({flag})"
    )]
    TokenCharacters { server: &'static str, flag: &'static str },
    #[error(
        "the {server} would listen on {addr}, which is not loopback; set a token ({flag}) for remote access"
    )]
    RemoteWithoutToken { server: &'static str, flag: &'static str, addr: SocketAddr },
}

/// A secret a client presents as `Authorization: Bearer <token>`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Token(String);

impl Token {
    /// A token for the `server` (whose option is `flag`, for the error message).
    ///
    /// # Errors
    /// An empty token (it would let anyone in who sends an empty one), or one with characters an
    /// HTTP header cannot carry (no client could present it).
    pub fn new(server: &'static str, flag: &'static str, text: String) -> Result<Self, AuthError> {
        if text.is_empty() {
            return Err(AuthError::EmptyToken { server, flag });
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::TokenCharacters { server, flag });
        }
        Ok(Self(text))
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// The token's text, for a client to present.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Token {
    type Error = AuthError;

    fn try_from(text: String) -> Result<Self, AuthError> {
        Self::new("configured", "token", text)
    }
}

/// Never prints the secret (settings are printed by `check-config`).
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The token an HTTP request presents as `Authorization: Bearer <token>`.
#[must_use]
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// Refuses a non-loopback address without a token, for the `server` (the event stream, the
/// control API) whose token option is `flag`.
///
/// # Errors
/// `RemoteWithoutToken` when `addr` is not loopback and there is no token.
pub fn require_token_for_remote(
    server: &'static str,
    flag: &'static str,
    addr: SocketAddr,
    token: Option<&Token>,
) -> Result<(), AuthError> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(AuthError::RemoteWithoutToken { server, flag, addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_unsendable_tokens_are_refused() {
        assert_eq!(
            Token::new("event stream", "--stream-token", String::new()),
            Err(AuthError::EmptyToken { server: "event stream", flag: "--stream-token" })
        );
        assert!(matches!(Token::new("s", "f", "a b".into()), Err(AuthError::TokenCharacters { .. })));
        assert!(matches!(Token::new("s", "f", "caf\u{e9}".into()), Err(AuthError::TokenCharacters { .. })));
        let error = toml::from_str::<std::collections::BTreeMap<String, Token>>("token = \"\"").unwrap_err();
        assert!(error.to_string().contains("token is empty"), "{error}");
    }

    #[test]
    fn a_token_matches_itself_only_and_never_prints() {
        let token = Token::new("s", "f", "s3cret".into()).unwrap();
        assert!(token.matches("s3cret"));
        for other in ["", "s3cre", "s3cret!", "S3cret", "x3cret"] {
            assert!(!token.matches(other), "{other}");
        }
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
