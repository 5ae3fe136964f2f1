//! Binary-safe read results of strata-fs: `data_b64` always, `data` when the bytes are UTF-8,
//! and a byte count chosen so that the whole response fits in one protocol frame.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use strata_core::protocol::MAX_FRAME_LEN;
use strata_core::protocol::envelope::MAX_REQ_ID_LEN;

/// Bytes returned when `size` is not given.
pub const DEFAULT_READ_SIZE: usize = 64 * 1024;
/// Most bytes one read returns (a larger `size` gives a short read, as read(2) does).
pub const MAX_READ_SIZE: usize = 256 * 1024;

/// Room kept for the envelope around `result`: `v`, a `req_id` of up to 256 characters each
/// escaped to at most 6 bytes, `ok`, the field names, `bytes_read`, `offset`, `eof`.
const ENVELOPE_ROOM: usize = 512 + 6 * MAX_REQ_ID_LEN;

/// Largest result payload of a read.
const BUDGET: usize = MAX_FRAME_LEN - ENVELOPE_ROOM;

/// Length of `n` bytes in standard base64 with padding.
fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Length of one byte inside a JSON string as serde_json writes it.
fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// What to answer for `bytes` read at some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChunk {
    /// Bytes answered (a prefix of what was read).
    pub len: usize,
    /// True when the answer carries `data` (the bytes are UTF-8).
    pub utf8: bool,
}

/// Chooses how many of `bytes` to answer: all of them when they fit in a frame, else the
/// longest prefix that does. A UTF-8 text cut in the middle of a character (by the read size
/// or the file's end is not: that is invalid UTF-8) is answered up to the last whole
/// character, so that every chunk of a text carries `data`.
pub fn choose(bytes: &[u8]) -> ReadChunk {
    let (valid, utf8) = match std::str::from_utf8(bytes) {
        Ok(_) => (bytes.len(), true),
        // Only an incomplete last character (no invalid sequence): keep the text whole.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => (e.valid_up_to(), true),
        Err(_) => (bytes.len(), false),
    };
    let bytes = &bytes[..valid];
    if !utf8 {
        let max = BUDGET / 4 * 3;
        return ReadChunk {
            len: bytes.len().min(max),
            utf8: false,
        };
    }
    // Text: base64 plus the escaped string; stop at the last character that fits.
    let mut cost = 2; // the quotes of `data`
    let mut last_fit = 0;
    for (i, &b) in bytes.iter().enumerate() {
        cost += escaped_len(b);
        let n = i + 1;
        if cost + b64_len(n) > BUDGET {
            break;
        }
        // A character boundary follows byte i when the next byte is not a continuation.
        if bytes.get(n).is_none_or(|next| (next & 0xc0) != 0x80) {
            last_fit = n;
        }
    }
    ReadChunk {
        len: last_fit,
        utf8: true,
    }
}

/// The `result` object of fs.read for `bytes` (already chosen with [`choose`]).
pub fn result(bytes: &[u8], utf8: bool, offset: u64, eof: bool) -> Value {
    let mut m = Map::with_capacity(5);
    if utf8 && let Ok(text) = std::str::from_utf8(bytes) {
        m.insert("data".to_owned(), Value::String(text.to_owned()));
    }
    m.insert("data_b64".to_owned(), Value::String(STANDARD.encode(bytes)));
    m.insert("bytes_read".to_owned(), Value::from(bytes.len()));
    m.insert("offset".to_owned(), Value::from(offset));
    m.insert("eof".to_owned(), Value::Bool(eof));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::protocol::Response;

    fn frame_len(bytes: &[u8]) -> usize {
        let c = choose(bytes);
        let v = result(&bytes[..c.len], c.utf8, u64::MAX, false);
        let req_id = "\u{1}".repeat(MAX_REQ_ID_LEN);
        Response::ok(req_id, v).to_json().len()
    }

    #[test]
    fn small_reads_are_answered_whole() {
        assert_eq!(choose(b"hello"), ReadChunk { len: 5, utf8: true });
        assert_eq!(
            choose(&[0xff, 0, 1]),
            ReadChunk {
                len: 3,
                utf8: false
            }
        );
        assert_eq!(choose(b""), ReadChunk { len: 0, utf8: true });
        let v = result(b"hi\n", true, 0, true);
        assert_eq!(v["data"], "hi\n");
        assert_eq!(v["data_b64"], "aGkK");
        assert_eq!(v["bytes_read"], 3);
        let v = result(&[0xff], false, 7, false);
        assert!(v.get("data").is_none());
        assert_eq!(v["data_b64"], "/w==");
    }

    #[test]
    fn a_character_cut_by_the_read_size_is_left_for_the_next_read() {
        let text = "aé".as_bytes(); // 61 c3 a9
        assert_eq!(choose(&text[..2]), ReadChunk { len: 1, utf8: true });
        // A lone continuation byte is invalid UTF-8, not a cut character.
        assert_eq!(
            choose(&[0xa9, b'a']),
            ReadChunk {
                len: 2,
                utf8: false
            }
        );
    }

    #[test]
    fn every_worst_case_fits_in_a_frame() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0u8; MAX_READ_SIZE],  // control characters: 6 bytes each
            vec![b'"'; MAX_READ_SIZE], // 2 bytes each
            vec![b'a'; MAX_READ_SIZE], // plain text
            (0..MAX_READ_SIZE).map(|i| i as u8).collect(), // binary
            "é".repeat(MAX_READ_SIZE / 2).into_bytes(),
            "\u{1}é".repeat(MAX_READ_SIZE / 3).into_bytes(),
        ];
        for bytes in cases {
            let c = choose(&bytes);
            assert!(c.len > 0);
            assert!(
                frame_len(&bytes) <= MAX_FRAME_LEN,
                "{} > frame",
                frame_len(&bytes)
            );
            if c.utf8 {
                assert!(std::str::from_utf8(&bytes[..c.len]).is_ok());
            }
        }
        // Plain text and binary of the largest read size fit whole.
        assert_eq!(choose(&vec![b'a'; MAX_READ_SIZE]).len, MAX_READ_SIZE);
        assert_eq!(choose(&vec![0xffu8; MAX_READ_SIZE]).len, MAX_READ_SIZE);
    }
}
