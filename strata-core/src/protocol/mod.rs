//! Protocol v1, the data plane between services: framing, envelopes and the error model.
//!
//! Wire-compatible with the clients of the original Strata: a u32 big-endian length, then a
//! JSON payload of at most [`MAX_FRAME_LEN`] bytes, in both directions. Everything here is
//! sans-IO; the tokio runtime in `strata-services` drives it over Unix sockets.

pub mod envelope;
pub mod error;
pub mod frame;

pub use envelope::{
    PROTOCOL_VERSION, Request, RequestError, Response, ResponseError, parse_request, parse_response,
};
pub use error::{Code, RpcError};
pub use frame::{FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN, encode_frame};
