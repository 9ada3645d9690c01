//! The vhost-user message pump (`shim::run`) with an arbitrary byte stream as the frontend:
//! the input is sent on one end of a socket pair, then that end's sending side is shut down;
//! once the pump returns, what reached the framework's end and the frontend's end is read back
//! (the socket buffers hold it all, see `socket_pair`). Checks that the pump
//! terminates (a hang is a libFuzzer timeout), and that what reaches the framework is whole
//! messages taken from the input, in order (SET_VRING_ENABLE aside, which the pump holds back
//! and replays, and IOTLB_MSG, which it handles itself; SET_VRING_ADDR may come with its
//! addresses translated), with no SET_VRING_ENABLE ahead of the first SET_FEATURES; and that
//! what comes back to the frontend is whole replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_sriov_net::shim;
use vhost_user_sriov_net_fuzz::{drain, init, send_all, socket_pair, vu_split, Chunk, MAX_STREAM};

const SET_FEATURES: u32 = 2;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_ENABLE: u32 = 18;
const IOTLB_MSG: u32 = 22;
const FLAG_REPLY: u32 = 0x4;

fuzz_target!(|data: &[u8]| {
    init();
    let data = &data[..data.len().min(MAX_STREAM)];
    let (frontend, front_end) = socket_pair();
    let (back_end, framework) = socket_pair();
    send_all(
        &frontend,
        &[Chunk {
            bytes: data.to_vec(),
            fds: Vec::new(),
        }],
    );
    // The glue to adapt when `run` changes shape.
    let _ = shim::run(front_end, back_end, 4);
    let to_fw = drain(&framework);
    let to_front = drain(&frontend);

    let (fwd, partial) = vu_split(&to_fw);
    assert!(!partial, "a partial message reached the framework");
    let first_features = fwd.iter().position(|m| m.0 == SET_FEATURES);
    for (i, m) in fwd.iter().enumerate() {
        if m.0 == SET_VRING_ENABLE {
            assert!(
                first_features.is_some_and(|f| f < i),
                "SET_VRING_ENABLE forwarded before SET_FEATURES"
            );
        }
    }
    // IOTLB_MSG is the pump's own business (vIOMMU): never forwarded.
    assert!(
        fwd.iter().all(|m| m.0 != IOTLB_MSG),
        "IOTLB_MSG forwarded to the framework"
    );
    // Nothing invented or reordered: apart from SET_VRING_ENABLE and IOTLB_MSG, the forwarded
    // messages are the input's, from its start. SET_VRING_ADDR's payload may differ: with
    // ACCESS_PLATFORM acked the pump rewrites its IOVAs into the frontend's addresses.
    let (sent, _) = vu_split(data);
    let keep = |m: &&(u32, u32, &[u8])| m.0 != SET_VRING_ENABLE && m.0 != IOTLB_MSG;
    let fwd: Vec<_> = fwd.iter().filter(keep).collect();
    let sent: Vec<_> = sent.iter().filter(keep).collect();
    assert!(fwd.len() <= sent.len(), "more messages forwarded than sent");
    for (f, s) in fwd.iter().zip(&sent) {
        assert_eq!(
            (f.0, f.1),
            (s.0, s.1),
            "forwarded messages differ from the input's"
        );
        if f.0 != SET_VRING_ADDR {
            assert_eq!(f.2, s.2, "forwarded payload differs from the input's");
        }
    }

    let (replies, partial) = vu_split(&to_front);
    assert!(!partial, "a partial reply reached the frontend");
    for m in replies {
        assert_ne!(
            m.1 & FLAG_REPLY,
            0,
            "a message to the frontend that is not a reply"
        );
    }
});
