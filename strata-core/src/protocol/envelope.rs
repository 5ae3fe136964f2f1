//! Request and response envelopes of protocol v1, and their strict parsing.
//!
//! Request: `{"v":1,"req_id":"…","method":"svc.action","auth":{"token":"…"},"params":{…}}`.
//! Response: `{"v":1,"req_id":"…","ok":true,"result":{…}}` or
//! `{"v":1,"req_id":"…","ok":false,"error":{"code":N,"name":"…","message":"…","details":{…}}}`.
//!
//! Parsing takes a fast typed path and, only when that fails, re-reads the payload as a
//! generic JSON value to say precisely what is wrong, echoing the `req_id` when it can be
//! recovered. Unknown top-level fields are ignored (protocol v1 only grows compatibly).

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{Code, RpcError};
use super::frame::{HEADER_LEN, MAX_FRAME_LEN, encode_frame};

/// The only protocol version spoken.
pub const PROTOCOL_VERSION: u64 = 1;

/// Longest accepted `req_id`, in bytes.
pub const MAX_REQ_ID_LEN: usize = 256;

/// Longest accepted method name, in bytes.
pub const MAX_METHOD_LEN: usize = 128;

/// A parsed, well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Correlates the response; echoed verbatim.
    pub req_id: String,
    /// `service.action`, known to the endpoint that parsed it.
    pub method: String,
    /// The capability token from `auth.token`, if any (an empty string counts as none).
    pub token: Option<String>,
    /// The `params` object (an empty object when absent or null).
    pub params: Value,
}

impl Request {
    /// A request with an empty params object.
    pub fn new(req_id: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            req_id: req_id.into(),
            method: method.into(),
            token: None,
            params: Value::Object(Map::new()),
        }
    }

    /// The service part of the method (`fs` in `fs.read`).
    pub fn service(&self) -> &str {
        split_method(&self.method).0
    }

    /// The action part of the method (`read` in `fs.read`, `svc.list` in `supervisor.svc.list`).
    pub fn action(&self) -> &str {
        split_method(&self.method).1
    }

    /// Deserializes the params into `T`; failures are `INVALID_ARGUMENT` naming the method.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        T::deserialize(&self.params).map_err(|e| {
            RpcError::invalid_argument(format!("invalid params for {}: {e}", self.method))
                .with_detail("method", self.method.as_str())
        })
    }

    /// The JSON payload of this request (without the frame header).
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireRequestOut {
            v: PROTOCOL_VERSION,
            req_id: &self.req_id,
            method: &self.method,
            auth: self.token.as_deref().map(|token| WireAuthOut { token }),
            params: &self.params,
        };
        // Serializing strings and a Value cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// Splits `svc.action` at the first dot.
fn split_method(method: &str) -> (&str, &str) {
    method.split_once('.').unwrap_or((method, ""))
}

/// A request that could not be parsed, with the `req_id` to answer under if it was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct RequestError {
    /// The request's `req_id`, when it could be read.
    pub req_id: Option<String>,
    /// What to answer.
    pub error: RpcError,
}

impl RequestError {
    /// The error response for this failure (`req_id` empty when unknown).
    pub fn into_response(self) -> Response {
        Response::err(self.req_id.unwrap_or_default(), self.error)
    }
}

#[derive(Serialize)]
struct WireAuthOut<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct WireRequestOut<'a> {
    v: u64,
    req_id: &'a str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<WireAuthOut<'a>>,
    params: &'a Value,
}

#[derive(Deserialize)]
struct WireAuthIn<'a> {
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireRequestIn<'a> {
    v: u64,
    #[serde(borrow)]
    req_id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    auth: Option<WireAuthIn<'a>>,
    #[serde(default)]
    params: Option<Map<String, Value>>,
}

/// Parses one request payload; `methods` lists the methods this endpoint serves.
pub fn parse_request(payload: &[u8], methods: &[&str]) -> Result<Request, RequestError> {
    let typed_err = match serde_json::from_slice::<WireRequestIn<'_>>(payload) {
        Err(e) => e,
        Ok(w) => {
            if w.req_id.len() > MAX_REQ_ID_LEN {
                // Too long to echo: answer without it.
                return Err(RequestError {
                    req_id: None,
                    error: req_id_too_long(w.req_id.len()),
                });
            }
            let req_id = w.req_id.into_owned();
            let fail = |error: RpcError| RequestError {
                req_id: Some(req_id.clone()),
                error,
            };
            if w.v != PROTOCOL_VERSION {
                return Err(fail(version_error(&Value::from(w.v))));
            }
            check_method(&w.method, methods).map_err(fail)?;
            let token = w
                .auth
                .and_then(|a| a.token)
                .filter(|t| !t.is_empty())
                .map(Cow::into_owned);
            return Ok(Request {
                method: w.method.into_owned(),
                token,
                params: Value::Object(w.params.unwrap_or_default()),
                req_id,
            });
        }
    };
    Err(diagnose(payload, methods, &typed_err))
}

/// Explains why `payload` is not a valid request. Only called when the typed parse failed.
fn diagnose(payload: &[u8], methods: &[&str], typed_err: &serde_json::Error) -> RequestError {
    let no_id = |error: RpcError| RequestError {
        req_id: None,
        error,
    };
    if payload.iter().all(u8::is_ascii_whitespace) {
        return no_id(RpcError::invalid_argument(
            "empty request: expected a JSON object",
        ));
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            return no_id(
                RpcError::invalid_argument(format!("malformed JSON in request: {e}"))
                    .with_detail("line", e.line())
                    .with_detail("column", e.column()),
            );
        }
    };
    let Value::Object(obj) = value else {
        return no_id(RpcError::invalid_argument(format!(
            "request must be a JSON object, got {}",
            type_name(&value)
        )));
    };
    let req_id = match obj.get("req_id") {
        Some(Value::String(s)) if s.len() <= MAX_REQ_ID_LEN => Some(s.clone()),
        Some(Value::String(s)) => {
            return no_id(req_id_too_long(s.len()));
        }
        Some(other) => {
            return no_id(field_type("req_id", "a string", other));
        }
        None => None,
    };
    let fail = |error: RpcError| RequestError {
        req_id: req_id.clone(),
        error,
    };
    match obj.get("v") {
        None => return fail(missing("v", "the protocol version, 1")),
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v @ Value::Number(_)) => return fail(version_error(v)),
        Some(other) => return fail(field_type("v", "the integer 1", other)),
    }
    if req_id.is_none() {
        return fail(missing("req_id", "a string"));
    }
    match obj.get("method") {
        None => return fail(missing("method", "a string `service.action`")),
        Some(Value::String(m)) => {
            if let Err(e) = check_method(m, methods) {
                return fail(e);
            }
        }
        Some(other) => return fail(field_type("method", "a string", other)),
    }
    match obj.get("auth") {
        None | Some(Value::Null) => {}
        Some(Value::Object(auth)) => match auth.get("token") {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => return fail(field_type("auth.token", "a string", other)),
        },
        Some(other) => return fail(field_type("auth", "an object {\"token\": …}", other)),
    }
    match obj.get("params") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(other) => return fail(field_type("params", "an object", other)),
    }
    // Every field checked out, yet the typed parse failed: name it rather than guess.
    fail(RpcError::invalid_argument(format!(
        "malformed request envelope: {typed_err}"
    )))
}

fn req_id_too_long(len: usize) -> RpcError {
    RpcError::invalid_argument(format!(
        "field `req_id` is {len} bytes long, at most {MAX_REQ_ID_LEN} are allowed"
    ))
    .with_detail("field", "req_id")
}

fn version_error(got: &Value) -> RpcError {
    RpcError::invalid_argument(format!(
        "unsupported protocol version {got}, this endpoint speaks version {PROTOCOL_VERSION}"
    ))
    .with_detail("field", "v")
    .with_detail("supported", Value::from(vec![PROTOCOL_VERSION]))
    .with_detail("got", got.clone())
}

/// A method name is `svc.action[.more]`, lower-case ASCII words.
fn method_is_well_formed(m: &str) -> bool {
    let mut parts = 0;
    for part in m.split('.') {
        let mut chars = part.chars();
        let Some(first) = chars.next() else {
            return false;
        };
        if !first.is_ascii_lowercase()
            || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return false;
        }
        parts += 1;
    }
    parts >= 2 && m.len() <= MAX_METHOD_LEN
}

fn check_method(method: &str, methods: &[&str]) -> Result<(), RpcError> {
    if !method_is_well_formed(method) {
        let shown: String = method.chars().take(MAX_METHOD_LEN).collect();
        return Err(RpcError::invalid_argument(format!(
            "malformed method name `{shown}`: expected `service.action` in lower-case ASCII"
        ))
        .with_detail("field", "method"));
    }
    if !methods.contains(&method) {
        return Err(
            RpcError::not_found(format!("unknown method `{method}` on this endpoint"))
                .with_detail("method", method)
                .with_detail("methods", methods.to_vec()),
        );
    }
    Ok(())
}

fn missing(field: &str, expected: &str) -> RpcError {
    RpcError::invalid_argument(format!("missing field `{field}`: expected {expected}"))
        .with_detail("field", field)
}

fn field_type(field: &str, expected: &str, got: &Value) -> RpcError {
    RpcError::invalid_argument(format!(
        "field `{field}` must be {expected}, got {}",
        type_name(got)
    ))
    .with_detail("field", field)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The `req_id` of the request answered (empty when it could not be read).
    pub req_id: String,
    /// `ok: true` with a result, or `ok: false` with an error.
    pub outcome: Result<Value, RpcError>,
}

#[derive(Serialize)]
struct WireResponseOut<'a> {
    v: u64,
    req_id: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

#[derive(Deserialize)]
struct WireResponseIn {
    v: u64,
    req_id: String,
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

impl Response {
    /// A success.
    pub fn ok(req_id: impl Into<String>, result: Value) -> Self {
        Self {
            req_id: req_id.into(),
            outcome: Ok(result),
        }
    }

    /// A failure.
    pub fn err(req_id: impl Into<String>, error: RpcError) -> Self {
        Self {
            req_id: req_id.into(),
            outcome: Err(error),
        }
    }

    /// The JSON payload (no frame header); may exceed the frame limit.
    pub fn to_json(&self) -> Vec<u8> {
        let (ok, result, error) = match &self.outcome {
            Ok(v) => (true, Some(v), None),
            Err(e) => (false, None, Some(e)),
        };
        let wire = WireResponseOut {
            v: PROTOCOL_VERSION,
            req_id: &self.req_id,
            ok,
            result,
            error,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Appends this response as one frame to `out`. A response that would exceed the frame
    /// limit is replaced by a `RESOURCE_EXHAUSTED` error naming its size, so the peer always
    /// receives a frame it can read.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let payload = self.to_json();
        if encode_frame(&payload, out).is_ok() {
            return;
        }
        let replacement = Response::err(
            self.req_id.clone(),
            RpcError::resource_exhausted(format!(
                "response of {} bytes exceeds the frame limit of {MAX_FRAME_LEN} bytes",
                payload.len()
            ))
            .with_detail("size", payload.len())
            .with_detail("limit", MAX_FRAME_LEN),
        );
        let small = replacement.to_json();
        out.reserve(HEADER_LEN + small.len());
        // The replacement is a few hundred bytes at most (req_id is bounded).
        out.extend_from_slice(&(small.len() as u32).to_be_bytes());
        out.extend_from_slice(&small);
    }

    /// This response as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Why a response payload could not be read (client side).
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// Not JSON, or fields of the wrong type.
    #[error("malformed response: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A version other than 1.
    #[error("unsupported protocol version {0} in response")]
    Version(u64),
    /// `ok: true` without `result`.
    #[error("response has ok=true but no result")]
    MissingResult,
    /// `ok: false` without `error`.
    #[error("response has ok=false but no error")]
    MissingError,
}

/// Parses one response payload.
pub fn parse_response(payload: &[u8]) -> Result<Response, ResponseError> {
    let w: WireResponseIn = serde_json::from_slice(payload)?;
    if w.v != PROTOCOL_VERSION {
        return Err(ResponseError::Version(w.v));
    }
    let outcome = if w.ok {
        Ok(w.result.ok_or(ResponseError::MissingResult)?)
    } else {
        Err(w.error.ok_or(ResponseError::MissingError)?)
    };
    Ok(Response {
        req_id: w.req_id,
        outcome,
    })
}

/// The code of a failed response, if any (convenience for tests and clients).
pub fn error_code(resp: &Response) -> Option<Code> {
    resp.outcome.as_ref().err().map(|e| e.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const METHODS: &[&str] = &["fs.read", "fs.list", "supervisor.svc.list"];

    fn parse(s: &str) -> Result<Request, RequestError> {
        parse_request(s.as_bytes(), METHODS)
    }

    fn expect_err(s: &str) -> RequestError {
        parse(s).expect_err("request must be rejected")
    }

    #[test]
    fn parses_the_original_clients_request() {
        let r = parse(
            r#"{"v":1,"req_id":"r1","method":"fs.read","auth":{"token":"tok"},"params":{"handle":"h1","offset":0}}"#,
        )
        .expect("valid request");
        assert_eq!(r.req_id, "r1");
        assert_eq!(r.method, "fs.read");
        assert_eq!(r.service(), "fs");
        assert_eq!(r.action(), "read");
        assert_eq!(r.token.as_deref(), Some("tok"));
        assert_eq!(r.params, json!({"handle":"h1","offset":0}));
    }

    #[test]
    fn optional_fields_default_and_unknown_fields_are_ignored() {
        let r = parse(r#"{"v":1,"req_id":"a","method":"supervisor.svc.list","extra":[1]}"#)
            .expect("minimal request");
        assert_eq!(r.token, None);
        assert_eq!(r.params, json!({}));
        assert_eq!(r.action(), "svc.list");
        let r = parse(r#"{"v":1,"req_id":"a","method":"fs.list","auth":null,"params":null}"#)
            .expect("nulls");
        assert_eq!((r.token, r.params), (None, json!({})));
        let r = parse(r#"{"v":1,"req_id":"a","method":"fs.list","auth":{"token":""}}"#)
            .expect("empty token");
        assert_eq!(r.token, None);
        let r = parse(r#"{"v":1,"req_id":"a\u0041","method":"fs.list","auth":{"token":"t\"x"}}"#)
            .expect("escaped strings");
        assert_eq!(
            (r.req_id.as_str(), r.token.as_deref()),
            ("aA", Some("t\"x"))
        );
    }

    #[test]
    fn round_trips_through_to_json() {
        let mut r = Request::new("id-7", "fs.read");
        r.token = Some("tok".into());
        r.params = json!({"handle":"h","size":5});
        let back = parse_request(&r.to_json(), METHODS).expect("own output parses");
        assert_eq!(back, r);
        let text = String::from_utf8(r.to_json()).expect("utf-8");
        assert_eq!(
            text,
            r#"{"v":1,"req_id":"id-7","method":"fs.read","auth":{"token":"tok"},"params":{"handle":"h","size":5}}"#
        );
    }

    /// Each malformed request: (input, expected code, echoed req_id, message fragment).
    #[test]
    fn every_malformed_request_gets_a_precise_error() {
        let long_id = "x".repeat(MAX_REQ_ID_LEN + 1);
        let long_id_req = format!(r#"{{"v":1,"req_id":"{long_id}","method":"fs.read"}}"#);
        let cases: Vec<(&str, Code, Option<&str>, &str)> = vec![
            ("", Code::InvalidArgument, None, "empty request"),
            ("  \n", Code::InvalidArgument, None, "empty request"),
            (
                "{",
                Code::InvalidArgument,
                None,
                "malformed JSON in request: EOF",
            ),
            ("{\"v\":1,}", Code::InvalidArgument, None, "malformed JSON"),
            ("\u{0}", Code::InvalidArgument, None, "malformed JSON"),
            (
                "[1,2]",
                Code::InvalidArgument,
                None,
                "must be a JSON object, got an array",
            ),
            (
                "\"str\"",
                Code::InvalidArgument,
                None,
                "must be a JSON object, got a string",
            ),
            (
                r#"{"v":1,"req_id":7,"method":"fs.read"}"#,
                Code::InvalidArgument,
                None,
                "field `req_id` must be a string, got a number",
            ),
            (
                &long_id_req,
                Code::InvalidArgument,
                None,
                "at most 256 are allowed",
            ),
            (
                r#"{"req_id":"q","method":"fs.read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "missing field `v`",
            ),
            (
                r#"{"v":2,"req_id":"q","method":"fs.read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "unsupported protocol version 2",
            ),
            (
                r#"{"v":1.5,"req_id":"q","method":"fs.read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "unsupported protocol version 1.5",
            ),
            (
                r#"{"v":-1,"req_id":"q","method":"fs.read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "unsupported protocol version -1",
            ),
            (
                r#"{"v":"1","req_id":"q","method":"fs.read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "field `v` must be the integer 1, got a string",
            ),
            (
                r#"{"v":1,"method":"fs.read"}"#,
                Code::InvalidArgument,
                None,
                "missing field `req_id`",
            ),
            (
                r#"{"v":1,"req_id":"q"}"#,
                Code::InvalidArgument,
                Some("q"),
                "missing field `method`",
            ),
            (
                r#"{"v":1,"req_id":"q","method":["fs.read"]}"#,
                Code::InvalidArgument,
                Some("q"),
                "field `method` must be a string, got an array",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fsread"}"#,
                Code::InvalidArgument,
                Some("q"),
                "malformed method name `fsread`",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"FS.read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "malformed method name",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs..read"}"#,
                Code::InvalidArgument,
                Some("q"),
                "malformed method name",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs.write"}"#,
                Code::NotFound,
                Some("q"),
                "unknown method `fs.write` on this endpoint",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs.read","auth":"tok"}"#,
                Code::InvalidArgument,
                Some("q"),
                "field `auth` must be an object",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs.read","auth":{"token":5}}"#,
                Code::InvalidArgument,
                Some("q"),
                "field `auth.token` must be a string, got a number",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs.read","params":[1]}"#,
                Code::InvalidArgument,
                Some("q"),
                "field `params` must be an object, got an array",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs.read","auth":{"token":"a","token":"b"}}"#,
                Code::InvalidArgument,
                Some("q"),
                "malformed request envelope: duplicate field `token`",
            ),
            (
                r#"{"v":1,"req_id":"q","method":"fs.read","params":"x"}"#,
                Code::InvalidArgument,
                Some("q"),
                "field `params` must be an object, got a string",
            ),
        ];
        for (input, code, req_id, fragment) in cases {
            let e = expect_err(input);
            assert_eq!(
                e.error.code, code,
                "code for {input:?}: {}",
                e.error.message
            );
            assert_eq!(e.req_id.as_deref(), req_id, "req_id for {input:?}");
            assert!(
                e.error.message.contains(fragment),
                "message for {input:?} was {:?}, expected it to contain {fragment:?}",
                e.error.message
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_request(&bytes, METHODS);
            let _ = parse_response(&bytes);
        }

        #[test]
        fn requests_round_trip(
            req_id in "[ -~]{0,40}",
            method in proptest::sample::select(METHODS.to_vec()),
            token in proptest::option::of("[A-Za-z0-9_-]{1,60}"),
            n in proptest::num::i64::ANY,
            s in "\\PC{0,20}",
        ) {
            let mut r = Request::new(req_id, method);
            r.token = token;
            r.params = json!({"n": n, "s": s});
            let back = parse_request(&r.to_json(), METHODS).expect("own output parses");
            proptest::prop_assert_eq!(back, r);
        }
    }

    #[test]
    fn version_error_carries_details() {
        let e = expect_err(r#"{"v":3,"req_id":"q","method":"fs.read"}"#);
        assert_eq!(e.error.details.get("supported"), Some(&json!([1])));
        assert_eq!(e.error.details.get("got"), Some(&json!(3)));
        let resp = e.into_response();
        assert_eq!(resp.req_id, "q");
    }

    #[test]
    fn typed_params_errors_name_the_method_and_field() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct ReadParams {
            handle: String,
            offset: Option<u64>,
        }
        let r = parse(r#"{"v":1,"req_id":"q","method":"fs.read","params":{"offset":-1}}"#)
            .expect("envelope ok");
        let e = r.params::<ReadParams>().expect_err("bad params");
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(
            e.message.starts_with("invalid params for fs.read: "),
            "{}",
            e.message
        );
        let r = parse(r#"{"v":1,"req_id":"q","method":"fs.read","params":{"handle":"h"}}"#)
            .expect("envelope ok");
        let p = r.params::<ReadParams>().expect("valid params");
        assert_eq!((p.handle.as_str(), p.offset), ("h", None));
    }

    #[test]
    fn responses_have_the_wire_shape_of_the_original_protocol() {
        let ok = Response::ok("r1", json!({"handle":"h1"}));
        assert_eq!(
            String::from_utf8(ok.to_json()).expect("utf-8"),
            r#"{"v":1,"req_id":"r1","ok":true,"result":{"handle":"h1"}}"#
        );
        let err = Response::err("r2", RpcError::not_found("no such file `a`"));
        assert_eq!(
            String::from_utf8(err.to_json()).expect("utf-8"),
            r#"{"v":1,"req_id":"r2","ok":false,"error":{"code":4,"name":"NOT_FOUND","message":"no such file `a`","details":{}}}"#
        );
        for r in [ok, err] {
            let frame = r.encode();
            let len = u32::from_be_bytes(frame[..4].try_into().expect("header")) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(parse_response(&frame[4..]).expect("parses back"), r);
        }
    }

    #[test]
    fn oversized_response_becomes_resource_exhausted() {
        let big = Response::ok("r", json!({"data": "a".repeat(MAX_FRAME_LEN)}));
        let frame = big.encode();
        assert!(frame.len() <= MAX_FRAME_LEN + HEADER_LEN);
        let back = parse_response(&frame[4..]).expect("replacement parses");
        assert_eq!(back.req_id, "r");
        let e = back.outcome.expect_err("replaced by an error");
        assert_eq!(e.code, Code::ResourceExhausted);
        assert!(
            e.message
                .contains("exceeds the frame limit of 1048576 bytes"),
            "{}",
            e.message
        );
    }

    #[test]
    fn malformed_responses_are_reported() {
        assert!(matches!(
            parse_response(b"nope"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(br#"{"v":2,"req_id":"","ok":true,"result":{}}"#),
            Err(ResponseError::Version(2))
        ));
        assert!(matches!(
            parse_response(br#"{"v":1,"req_id":"","ok":true}"#),
            Err(ResponseError::MissingResult)
        ));
        assert!(matches!(
            parse_response(br#"{"v":1,"req_id":"","ok":false}"#),
            Err(ResponseError::MissingError)
        ));
    }
}
