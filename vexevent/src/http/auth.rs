//! Who may use the HTTP endpoints: bearer tokens (never empty, compared in constant time, never
//! printed); the tokens an instance generates at start and keeps in files only root (and, for
//! the read-only metrics token, a configured group) can read; the rule that a server off
//! loopback needs a token of its own.

use std::{
    fmt::{self, Write as _},
    fs::{self, OpenOptions, Permissions},
    io::{self, Read as _, Write as _},
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq as _;

/// The token file's name, in the directory of the stats file (`/run/vexevent` by default).
pub const TOKEN_FILE: &str = "token";
/// The read-only metrics token's file name, beside the token file.
pub const METRICS_TOKEN_FILE: &str = "metrics-token";

/// Random bytes in a generated token (64 hex digits).
const TOKEN_BYTES: usize = 32;
/// Longest token file read (a generated one is 65 bytes).
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why a token or a server's access settings are refused.
#[derive(Debug, thiserror::Error)]
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
    #[error(
        "the {server} would serve plain HTTP on {addr}, which is not loopback; give it a certificate and key ([{section}.tls] cert, key) or set {section}.plaintext_off_loopback = true (behind a TLS proxy)"
    )]
    RemotePlaintext { server: &'static str, section: &'static str, addr: SocketAddr },
    #[error("cannot write token file {path} (its directory must be writable by root)")]
    WriteTokenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read token file {path} (run as root, or pass --token)")]
    ReadTokenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("token file {path} holds no usable token; restart vexevent or pass --token")]
    BadTokenFile { path: PathBuf },
    #[error("cannot generate a token: {0}")]
    Random(#[source] io::Error),
    #[error("control.metrics_group {name:?} is not a group in /etc/group nor a number")]
    UnknownGroup { name: String },
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
        Self::new("configured", "`token` in the configuration", text)
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

/// A random token of `TOKEN_BYTES` bytes from the kernel's generator, as hex.
pub(super) fn random_token() -> Result<Token, AuthError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let written = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if let Ok(written) = usize::try_from(written) {
            filled += written;
        } else {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(AuthError::Random(error));
            }
        }
    }
    let hex = bytes.iter().fold(String::with_capacity(2 * TOKEN_BYTES), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    Ok(Token(hex))
}

/// Writes `secret` to `path` with `mode` (and `group`), replacing it atomically: a fresh file
/// that cannot be a symlink planted in advance, its mode set whatever the umask.
fn write_secret(path: &Path, secret: &str, mode: u32, group: Option<u32>) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid))?;
    }
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    fs::rename(&temporary, path)
}

/// The tokens an instance generates at start, and where it keeps them.
pub struct Keys {
    /// Admits to every endpoint (the stream, the control API), unless that server has a token
    /// of its own.
    pub token: Token,
    /// Admits to reading the counters only (`/metrics`, `/api/v1/control/stats`).
    pub metrics: Token,
    pub token_file: PathBuf,
    pub metrics_token_file: PathBuf,
}

impl Keys {
    /// Generates both tokens and writes them into `dir`: `token` readable by its owner (root)
    /// only, mode 0600; `metrics-token` also by `group`, mode 0640 (0600 without a group).
    ///
    /// # Errors
    /// When the kernel gives no random bytes, or a file cannot be written.
    pub fn generate(dir: &Path, group: Option<u32>) -> Result<Self, AuthError> {
        let token_file = dir.join(TOKEN_FILE);
        let metrics_token_file = dir.join(METRICS_TOKEN_FILE);
        let (token, metrics) = (random_token()?, random_token()?);
        fs::create_dir_all(dir)
            .map_err(|source| AuthError::WriteTokenFile { path: token_file.clone(), source })?;
        write_secret(&token_file, token.expose(), 0o600, None)
            .map_err(|source| AuthError::WriteTokenFile { path: token_file.clone(), source })?;
        let metrics_mode = if group.is_some() { 0o640 } else { 0o600 };
        write_secret(&metrics_token_file, metrics.expose(), metrics_mode, group)
            .map_err(|source| AuthError::WriteTokenFile { path: metrics_token_file.clone(), source })?;
        Ok(Self { token, metrics, token_file, metrics_token_file })
    }
}

/// Reads the token a client presents from a token file.
///
/// # Errors
/// When the file cannot be read (not root?) or holds no token.
pub fn read_token_file(path: &Path) -> Result<Token, AuthError> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_TOKEN_FILE_BYTES).read_to_string(&mut text))
        .map_err(|source| AuthError::ReadTokenFile { path: path.to_owned(), source })?;
    Token::new("instance", "--token", text.trim_end().to_owned())
        .map_err(|_| AuthError::BadTokenFile { path: path.to_owned() })
}

/// The group id of `name` (a number, or a name in `/etc/group`).
///
/// # Errors
/// When it is neither.
pub fn resolve_group(name: &str) -> Result<u32, AuthError> {
    crate::privilege::group_id(name).ok_or_else(|| AuthError::UnknownGroup { name: name.to_owned() })
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

/// Refuses plain HTTP on a non-loopback address unless allowed, for the `server` configured in
/// `[section]`.
///
/// # Errors
/// `RemotePlaintext` when `addr` is not loopback, without TLS and without `plaintext_allowed`.
pub fn require_tls_for_remote(
    server: &'static str,
    section: &'static str,
    addr: SocketAddr,
    tls: bool,
    plaintext_allowed: bool,
) -> Result<(), AuthError> {
    if !addr.ip().is_loopback() && !tls && !plaintext_allowed {
        return Err(AuthError::RemotePlaintext { server, section, addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_unsendable_tokens_are_refused() {
        assert!(matches!(
            Token::new("event stream", "--stream-token", String::new()),
            Err(AuthError::EmptyToken { server: "event stream", flag: "--stream-token" })
        ));
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

    #[test]
    fn generated_tokens_are_fresh_and_their_files_private() {
        let dir = tempfile::tempdir().unwrap();
        // A symlink planted where the temporary file goes is not followed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("token.tmp")).unwrap();
        let keys = Keys::generate(dir.path(), None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(keys.token.expose().len(), 2 * TOKEN_BYTES);
        assert!(!keys.token.matches(keys.metrics.expose()));
        for path in [&keys.token_file, &keys.metrics_token_file] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        assert!(keys.token.matches(read_token_file(&keys.token_file).unwrap().expose()));
        let own_group = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(dir.path()).unwrap());
        let again = Keys::generate(dir.path(), Some(own_group)).unwrap();
        assert!(!again.token.matches(keys.token.expose()), "a new token at every start");
        let mode = std::fs::metadata(&again.metrics_token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        std::fs::write(&again.token_file, "\n").unwrap();
        assert!(matches!(read_token_file(&again.token_file), Err(AuthError::BadTokenFile { .. })));
    }

    #[test]
    fn groups_resolve_by_number_or_name() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(resolve_group("no-such-group-here"), Err(AuthError::UnknownGroup { .. })));
    }
}
