//! The control protocol (`control::handle`): any request line against a switch of a PF and two
//! VFs. Checks that every line gets a protocol-version-1 reply that is either
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "<text>"}`, and that the reply
//! serializes to one line (the socket writes it newline-terminated).
#![no_main]

use std::sync::{Arc, OnceLock};

use backend::partition::{Partition, PartitionConfig, Role};
use backend::switch::Switch;
use libfuzzer_sys::fuzz_target;
use vhost_user_sriov_net::control::{handle, DaemonInfo, PROTOCOL_VERSION};

fn switch() -> &'static Switch {
    static SW: OnceLock<Switch> = OnceLock::new();
    SW.get_or_init(|| {
        let mk = |id: usize, role| {
            Arc::new(Partition::new(
                id,
                role,
                PartitionConfig {
                    mac: backend::mac::MacAddr([2, 0, 0, 0, 0, id as u8 + 1]),
                    queue_pairs: 2,
                    queue_size: 256,
                    mtu: 1500,
                },
            ))
        };
        Switch::new(vec![
            mk(0, Role::Pf),
            mk(1, Role::Vf(0)),
            mk(2, Role::Vf(1)),
        ])
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // The server reads lines as UTF-8 and trims them; anything else never reaches `handle`.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let v = handle(line.trim(), switch(), &DaemonInfo::default());
    // Answered in the request's version (1 or 2), or the newest when it named none usable.
    let ver = v["version"].as_u64().unwrap_or(0);
    assert!(ver >= 1 && ver <= u64::from(PROTOCOL_VERSION), "{v}");
    match v["ok"].as_bool() {
        Some(true) => assert!(v.get("result").is_some(), "{v}"),
        Some(false) => assert!(v["error"].is_string(), "{v}"),
        None => panic!("reply without ok: {v}"),
    }
    let text = v.to_string();
    assert!(!text.contains('\n'), "reply spans lines");
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v);
});
