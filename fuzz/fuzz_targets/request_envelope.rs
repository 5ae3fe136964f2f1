//! Fuzzes request parsing: any payload is either a request that re-encodes to an equal
//! request, or an error whose response fits in one frame. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::protocol::{MAX_FRAME_LEN, parse_request, parse_response};

const METHODS: &[&str] = &[
    "fs.read",
    "fs.list",
    "identity.issue",
    "supervisor.svc.list",
];

fuzz_target!(|data: &[u8]| {
    match parse_request(data, METHODS) {
        Ok(req) => {
            let again = parse_request(&req.to_json(), METHODS).expect("own encoding parses");
            assert_eq!(again, req);
        }
        Err(e) => {
            let frame = e.into_response().encode();
            assert!(frame.len() <= MAX_FRAME_LEN + 4);
            parse_response(&frame[4..]).expect("error response parses");
        }
    }
    let _ = parse_response(data);
});
