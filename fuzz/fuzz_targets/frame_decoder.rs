//! Fuzzes the protocol v1 frame decoder: arbitrary bytes pushed in arbitrary chunks must
//! yield the same frames as one push, never panic, and never return a frame over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::protocol::{FrameDecoder, FrameError};

/// A small limit so oversized lengths are reachable by the fuzzer.
const LIMIT: usize = 64;

fn drain(dec: &mut FrameDecoder, out: &mut Vec<Vec<u8>>) -> Option<FrameError> {
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => {
                assert!(
                    f.len() <= LIMIT,
                    "frame of {} bytes over the limit",
                    f.len()
                );
                out.push(f.to_vec());
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split_seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = FrameDecoder::with_limit(LIMIT);
    whole.push(stream);
    let mut expected = Vec::new();
    let whole_err = drain(&mut whole, &mut expected);

    let mut chunked = FrameDecoder::with_limit(LIMIT);
    let mut got = Vec::new();
    let mut chunked_err = None;
    let step = usize::from(split_seed % 7) + 1;
    for chunk in stream.chunks(step) {
        chunked.push(chunk);
        if let Some(e) = drain(&mut chunked, &mut got) {
            chunked_err = Some(e);
            break;
        }
    }
    assert_eq!(got, expected);
    assert_eq!(chunked_err, whole_err);
    if whole_err.is_some() {
        assert!(whole.is_poisoned());
    }
});
