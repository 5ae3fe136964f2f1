//! The error model of protocol v1: a numeric code, its name, a message and details.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Error codes of protocol v1 (numbers fixed by the original protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// The request is malformed or a parameter is invalid.
    InvalidArgument = 1,
    /// No valid credential: missing, malformed, badly signed, expired or revoked token.
    Unauthenticated = 2,
    /// The credential is valid but does not allow this request.
    PermissionDenied = 3,
    /// The method or the object does not exist.
    NotFound = 4,
    /// A bug or an unexpected failure on the server side.
    Internal = 5,
    /// The service cannot answer now; retrying later may work.
    Unavailable = 6,
    /// A limit was hit (rate limit, handles, connections, response size).
    ResourceExhausted = 7,
    /// The request conflicts with the current state.
    Conflict = 8,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 8] = [
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::NotFound,
        Code::Internal,
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::Conflict,
    ];

    /// The wire number.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The wire name, e.g. `PERMISSION_DENIED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::NotFound => "NOT_FOUND",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::Conflict => "CONFLICT",
        }
    }

    /// The code with this wire number.
    pub fn from_u32(n: u32) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_u32() == n)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.as_u32())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        Code::from_u32(n).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown error code {n}, expected 1..8"))
        })
    }
}

/// An error answered to a request: `{"code":N,"name":"…","message":"…","details":{…}}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    /// The protocol error code.
    pub code: Code,
    /// Human-readable cause, naming what failed.
    pub message: String,
    /// Structured details (always an object on the wire, never null).
    pub details: Map<String, Value>,
}

impl RpcError {
    /// An error without details.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds one detail.
    #[must_use]
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// `INVALID_ARGUMENT` with this message.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `UNAUTHENTICATED` with this message.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }

    /// `PERMISSION_DENIED` with this message.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }

    /// `NOT_FOUND` with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `INTERNAL` with this message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// `UNAVAILABLE` with this message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `RESOURCE_EXHAUSTED` with this message.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// `CONFLICT` with this message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }
}

/// The wire shape of an error object.
#[derive(Serialize, Deserialize)]
pub(crate) struct WireError<'a> {
    pub code: Code,
    #[serde(borrow)]
    pub name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub message: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub details: Option<Map<String, Value>>,
}

impl Serialize for RpcError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RpcError", 4)?;
        st.serialize_field("code", &self.code)?;
        st.serialize_field("name", self.code.name())?;
        st.serialize_field("message", &self.message)?;
        st.serialize_field("details", &self.details)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for RpcError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireError::deserialize(d)?;
        if w.name != w.code.name() {
            return Err(serde::de::Error::custom(format!(
                "error name `{}` does not match code {} ({})",
                w.name,
                w.code.as_u32(),
                w.code.name()
            )));
        }
        Ok(RpcError {
            code: w.code,
            message: w.message.into_owned(),
            details: w.details.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_original_numbers_and_names() {
        let table: Vec<(u32, &str)> = Code::ALL.iter().map(|c| (c.as_u32(), c.name())).collect();
        assert_eq!(
            table,
            vec![
                (1, "INVALID_ARGUMENT"),
                (2, "UNAUTHENTICATED"),
                (3, "PERMISSION_DENIED"),
                (4, "NOT_FOUND"),
                (5, "INTERNAL"),
                (6, "UNAVAILABLE"),
                (7, "RESOURCE_EXHAUSTED"),
                (8, "CONFLICT"),
            ]
        );
        for c in Code::ALL {
            assert_eq!(Code::from_u32(c.as_u32()), Some(c));
        }
        assert_eq!(Code::from_u32(0), None);
        assert_eq!(Code::from_u32(9), None);
    }

    #[test]
    fn error_serializes_with_name_and_object_details() {
        let e = RpcError::permission_denied("token is revoked").with_detail("reason", "revoked");
        let json = serde_json::to_string(&e).expect("serializable");
        assert_eq!(
            json,
            r#"{"code":3,"name":"PERMISSION_DENIED","message":"token is revoked","details":{"reason":"revoked"}}"#
        );
        let plain = serde_json::to_string(&RpcError::internal("x")).expect("serializable");
        assert_eq!(
            plain,
            r#"{"code":5,"name":"INTERNAL","message":"x","details":{}}"#
        );
        let back: RpcError = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back, e);
    }

    #[test]
    fn error_with_mismatched_name_or_unknown_code_is_rejected() {
        let bad_name = r#"{"code":3,"name":"NOT_FOUND","message":"m","details":{}}"#;
        let err = serde_json::from_str::<RpcError>(bad_name).expect_err("mismatch");
        assert!(err.to_string().contains("does not match code 3"), "{err}");
        let bad_code = r#"{"code":42,"name":"X","message":"m"}"#;
        let err = serde_json::from_str::<RpcError>(bad_code).expect_err("unknown code");
        assert!(err.to_string().contains("unknown error code 42"), "{err}");
        let no_details = r#"{"code":4,"name":"NOT_FOUND","message":"m"}"#;
        let e: RpcError = serde_json::from_str(no_details).expect("details optional");
        assert!(e.details.is_empty());
    }
}
