//! [`PathBytes`]: a file name as the kernel saw it, bytes and all, and its lossless JSON encoding.
//!
//! Encoding: a name that is valid UTF-8 is a JSON string (control characters such as newline are
//! escaped by JSON itself, so nothing is lost). A name that is not valid UTF-8 is an object
//! `{"base64": <standard base64 of the raw bytes>, "lossy": <UTF-8 with U+FFFD replacements>}`.

use std::{borrow::Cow, fmt};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeStruct};

/// Raw bytes of a path or name.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PathBytes(pub Vec<u8>);

impl PathBytes {
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text, with U+FFFD where they are not UTF-8 (for display only).
    #[must_use]
    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<&[u8]> for PathBytes {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<&str> for PathBytes {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for PathBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

impl Serialize for PathBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Ok(text) = std::str::from_utf8(&self.0) {
            serializer.serialize_str(text)
        } else {
            let mut object = serializer.serialize_struct("PathBytes", 2)?;
            object.serialize_field("base64", &base64::engine::general_purpose::STANDARD.encode(&self.0))?;
            object.serialize_field("lossy", &self.lossy())?;
            object.end()
        }
    }
}

impl<'de> Deserialize<'de> for PathBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The two encodings `serialize` writes.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Encoded {
            Text(String),
            Raw { base64: String },
        }
        match Encoded::deserialize(deserializer)? {
            Encoded::Text(text) => Ok(Self(text.into_bytes())),
            Encoded::Raw { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(Self)
                .map_err(|error| serde::de::Error::custom(format!("path: invalid base64: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_with_control_characters_is_a_plain_json_string() {
        let path = PathBytes::from("/w/new\nline\u{1}");
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, r#""/w/new\nline\u0001""#);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_bytes(), path.as_bytes());
    }

    #[test]
    fn non_utf8_is_base64_plus_lossy() {
        let path = PathBytes(b"/w/bad\xff\xfe".to_vec());
        let value = serde_json::to_value(&path).unwrap();
        let raw =
            base64::engine::general_purpose::STANDARD.decode(value["base64"].as_str().unwrap()).unwrap();
        assert_eq!(raw, path.as_bytes());
        assert_eq!(value["lossy"], "/w/bad\u{fffd}\u{fffd}");
        let back: PathBytes = serde_json::from_value(value).unwrap();
        assert_eq!(back, path, "reads back the exact bytes");
    }
}
