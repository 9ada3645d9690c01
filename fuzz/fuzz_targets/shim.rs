//! The vhost-user message pump (`shim::run_with`) with an arbitrary byte stream as the frontend:
//! the input is sent on one end of a socket pair, then that end's sending side is shut down;
//! once the pump returns, what reached the framework's end, the frontend's end and the back-end
//! request channel is read back (the socket buffers hold it all, see `socket_pair`). The
//! session's vIOMMU has a back-end channel from the start (the input cannot pass one), so an
//! input that acks ACCESS_PLATFORM reaches the IOTLB paths: updates, invalidations, MISS
//! requests, SET_VRING_ADDR waiting for its entries. Checks that the pump terminates (a hang is
//! a libFuzzer timeout), and that what reaches the framework is whole messages taken from the
//! input, in order, except SET_VRING_ENABLE (held back and replayed), IOTLB_MSG (the pump's
//! own, never forwarded) and SET_VRING_ADDR (which may be forwarded later, translated, without
//! its reply flag, once per one sent for its ring); that no SET_VRING_ENABLE goes ahead of the
//! first SET_FEATURES; that what comes back to the frontend is whole replies; and that the
//! channel carries only whole MISS requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_sriov_net::shim;
use vhost_user_sriov_net_fuzz::{drain, init, send_all, socket_pair, vu_split, Chunk, MAX_STREAM};

const SET_FEATURES: u32 = 2;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_ENABLE: u32 = 18;
const IOTLB_MSG: u32 = 22;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

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
    let (channel, qemu_channel) = socket_pair();
    let iommu = std::sync::Arc::new(backend::iommu::Iommu::default());
    iommu.set_channel(channel);
    // The glue to adapt when `run_with` changes shape.
    let _ = shim::run_with(front_end, back_end, 4, iommu.clone(), &|| {});
    drop(iommu);
    let to_fw = drain(&framework);
    let to_front = drain(&frontend);
    let asked = drain(&qemu_channel);
    assert_eq!(
        asked.len() % 44,
        0,
        "a partial MISS on the back-end channel"
    );
    for m in asked.chunks(44) {
        assert_eq!(
            &m[..12],
            &[1, 0, 0, 0, 1, 0, 0, 0, 32, 0, 0, 0],
            "not a MISS request"
        );
        assert_eq!(m[12 + 25], 1, "IOTLB message type MISS");
    }

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
    // Nothing invented or reordered: apart from SET_VRING_ENABLE, IOTLB_MSG and SET_VRING_ADDR,
    // the forwarded messages are the input's, from its start.
    let (sent, _) = vu_split(data);
    let keep = |m: &&(u32, u32, &[u8])| {
        m.0 != SET_VRING_ENABLE && m.0 != IOTLB_MSG && m.0 != SET_VRING_ADDR
    };
    let in_order: Vec<_> = fwd.iter().filter(keep).collect();
    let sent_in_order: Vec<_> = sent.iter().filter(keep).collect();
    assert!(
        in_order.len() <= sent_in_order.len(),
        "more messages forwarded than sent"
    );
    for (f, s) in in_order.iter().zip(&sent_in_order) {
        assert_eq!(
            (f.0, f.1, f.2),
            (s.0, s.1, s.2),
            "forwarded messages differ from the input's"
        );
    }
    // SET_VRING_ADDR: with ACCESS_PLATFORM acked its IOVAs become the frontend's addresses and
    // it may wait for them (acked early, so forwarded without NEED_REPLY); never more per ring
    // than were sent.
    let ring = |m: &(u32, u32, &[u8])| m.2.get(..4).map(|b| b.to_vec());
    let addrs = |v: &[(u32, u32, &[u8])]| -> Vec<Option<Vec<u8>>> {
        v.iter()
            .filter(|m| m.0 == SET_VRING_ADDR)
            .map(ring)
            .collect()
    };
    let (fwd_addr, sent_addr) = (addrs(&fwd), addrs(&sent));
    for r in &fwd_addr {
        let n = |v: &Vec<Option<Vec<u8>>>| v.iter().filter(|x| *x == r).count();
        assert!(
            n(&fwd_addr) <= n(&sent_addr),
            "more SET_VRING_ADDR forwarded for ring {r:?} than sent"
        );
    }
    for m in fwd.iter().filter(|m| m.0 == SET_VRING_ADDR) {
        assert!(
            sent.iter().any(|s| s.0 == SET_VRING_ADDR
                && ring(s) == ring(m)
                && s.2.len() == m.2.len()
                && (s.1 == m.1 || s.1 & !FLAG_NEED_REPLY == m.1)),
            "a SET_VRING_ADDR (flags {:#x}, {} bytes) not sent like that",
            m.1,
            m.2.len()
        );
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
