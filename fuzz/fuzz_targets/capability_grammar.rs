//! Fuzzes the capability grammar: any string either parses to a capability whose canonical
//! text is the input itself (the grammar is strict: one spelling per capability) and parses
//! back to the same value, or is refused with a non-empty message. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::capability::{Capability, check_absolute_path, check_service_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Capability::parse(text) {
        Ok(cap) => {
            let canonical = cap.to_string();
            assert_eq!(canonical, text, "accepted text is not canonical");
            assert_eq!(Capability::parse(&canonical).as_ref(), Ok(&cap));
            match &cap {
                Capability::FsRead(p) | Capability::FsWrite(p) => {
                    assert!(check_absolute_path(p).is_ok(), "accepted path {p:?}");
                }
                Capability::NetBind(port) | Capability::NetConnect(port) => {
                    assert_ne!(*port, 0, "port 0 accepted");
                }
                Capability::Call(service) => {
                    assert!(
                        check_service_name(service).is_ok(),
                        "accepted service {service:?}"
                    );
                }
                Capability::SysCap(name) => {
                    assert!(
                        strata_core::capability::LINUX_CAPABILITIES.contains(&name.as_str()),
                        "accepted capability name {name:?}"
                    );
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
