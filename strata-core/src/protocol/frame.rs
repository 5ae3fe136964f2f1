//! Framing of protocol v1: a u32 big-endian payload length followed by the payload.
//!
//! The decoder is sans-IO: the caller pushes whatever bytes it read and pulls complete
//! payloads out. A length above the limit poisons the decoder, because the stream can no
//! longer be resynchronised: the caller answers once and closes the connection.

/// Largest payload accepted or produced, in bytes (1 MiB), in both directions.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Buffered bytes already consumed are moved to the front once they exceed this.
const COMPACT_THRESHOLD: usize = 64 * 1024;

/// Why a frame cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix (or the payload to encode) is larger than the limit.
    #[error("frame length {length} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced or attempted payload length.
        length: u64,
        /// The limit in force.
        limit: usize,
    },
}

/// Appends `payload` as one frame to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_frame_with_limit(payload, MAX_FRAME_LEN, out)
}

/// Appends `payload` as one frame to `out`, refusing payloads above `limit`.
pub fn encode_frame_with_limit(
    payload: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let too_large = || FrameError::TooLarge {
        length: payload.len() as u64,
        limit,
    };
    if payload.len() > limit {
        return Err(too_large());
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Incremental decoder of a stream of frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    pos: usize,
    limit: usize,
    poisoned: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder enforcing [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder enforcing a custom payload limit.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            limit,
            poisoned: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete payload, `Ok(None)` when more bytes are needed.
    ///
    /// After an error every later call returns the same error: the stream is out of sync.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        self.compact();
        let pending = &self.buf[self.pos..];
        let Some(header) = pending.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*header) as usize;
        if length > self.limit {
            let err = FrameError::TooLarge {
                length: length as u64,
                limit: self.limit,
            };
            self.poisoned = Some(err.clone());
            return Err(err);
        }
        if pending.len() - HEADER_LEN < length {
            return Ok(None);
        }
        let start = self.pos + HEADER_LEN;
        self.pos = start + length;
        Ok(Some(&self.buf[start..start + length]))
    }

    /// Bytes buffered that do not yet form a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when part of a frame has been received (the read timeout applies).
    pub fn is_mid_frame(&self) -> bool {
        self.pending() > 0
    }

    /// True after an oversized length was seen.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= COMPACT_THRESHOLD {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(payload, &mut out).expect("payload within limit");
        out
    }

    #[test]
    fn round_trips_frames_split_at_every_byte() {
        let mut stream = framed(b"{\"a\":1}");
        stream.extend(framed(b""));
        stream.extend(framed(b"second"));
        for split in 0..=stream.len() {
            let mut dec = FrameDecoder::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().expect("valid stream") {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(
                got,
                vec![b"{\"a\":1}".to_vec(), Vec::new(), b"second".to_vec()]
            );
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn accepts_exactly_the_limit_and_rejects_one_more() {
        let mut dec = FrameDecoder::with_limit(8);
        dec.push(&framed(&[7u8; 8]));
        assert_eq!(dec.next_frame().expect("at limit"), Some(&[7u8; 8][..]));

        let mut dec = FrameDecoder::with_limit(8);
        dec.push(&9u32.to_be_bytes());
        let err = dec.next_frame().expect_err("over limit");
        assert_eq!(
            err,
            FrameError::TooLarge {
                length: 9,
                limit: 8
            }
        );
        // Poisoned: the same error again, even when more bytes arrive.
        dec.push(b"whatever");
        assert_eq!(dec.next_frame().expect_err("still poisoned"), err);
        assert!(dec.is_poisoned());
    }

    #[test]
    fn rejects_huge_length_without_buffering_it() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_frame().expect_err("4 GiB announced"),
            FrameError::TooLarge {
                length: u64::from(u32::MAX),
                limit: MAX_FRAME_LEN
            }
        );
    }

    #[test]
    fn partial_header_and_payload_wait_for_more() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0]);
        assert_eq!(dec.next_frame().expect("partial header"), None);
        assert!(dec.is_mid_frame());
        dec.push(&[0, 3, b'a']);
        assert_eq!(dec.next_frame().expect("partial payload"), None);
        dec.push(b"bc");
        assert_eq!(dec.next_frame().expect("complete"), Some(&b"abc"[..]));
        assert!(!dec.is_mid_frame());
    }

    #[test]
    fn encoder_refuses_oversized_payload() {
        let mut out = Vec::new();
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert_eq!(
            encode_frame(&big, &mut out),
            Err(FrameError::TooLarge {
                length: (MAX_FRAME_LEN + 1) as u64,
                limit: MAX_FRAME_LEN
            })
        );
        assert!(out.is_empty());
        encode_frame(&big[..MAX_FRAME_LEN], &mut out).expect("exactly the limit");
        assert_eq!(out.len(), MAX_FRAME_LEN + HEADER_LEN);
    }

    #[test]
    fn compaction_keeps_order_across_many_frames() {
        let mut dec = FrameDecoder::new();
        let payload = vec![b'x'; 1000];
        for round in 0..300u32 {
            let mut f = framed(&payload);
            f.extend(framed(&round.to_be_bytes()));
            dec.push(&f);
            assert_eq!(
                dec.next_frame().expect("frame").map(<[u8]>::len),
                Some(1000)
            );
            assert_eq!(
                dec.next_frame().expect("frame"),
                Some(&round.to_be_bytes()[..])
            );
        }
        assert_eq!(dec.pending(), 0);
    }
}
