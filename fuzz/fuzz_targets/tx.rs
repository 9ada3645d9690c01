//! The TX path end to end: `tx::tx_batch` takes chains from the PF's TX ring, the switch decides,
//! the software offload fallback runs when the receiver lacks an offload, and the frames are
//! written into VF0's RX ring. Both rings and both guest memories are the input's, as are the
//! features each side negotiated. Checks that every TX chain is completed in ring order with
//! length 0, that RX used entries name chains the driver offered and never claim more than a
//! chain holds, and that nothing panics or touches memory it should not.
//!
//! Input: flags (3), sender image length (2), sender memory image, receiver memory image.
#![no_main]

use std::sync::Arc;

use backend::admin::AdminChange;
use backend::hostmem::MemMap;
use backend::partition::{Partition, PartitionConfig, Role};
use backend::ring::{self, Dir, Table};
use backend::session::Held;
use backend::switch::Switch;
use backend::tx::{tx_batch, Batch, TxScratch};
use libfuzzer_sys::fuzz_target;
use vhost_user_backend::VringT;
use vhost_user_sriov_net_fuzz::{guest_mem, session_on, Input, RingLayout};
use virtio_queue::QueueT;

const F_CSUM: u32 = 0; // VIRTIO_NET_F_CSUM (offered; not looked at by the data path)
const F_GUEST_CSUM: u32 = 1;
const F_GUEST_TSO4: u32 = 7;
const F_GUEST_TSO6: u32 = 8;
const F_MRG_RXBUF: u32 = 15;
const F_INDIRECT: u32 = 28;

fn part(id: usize, mac: [u8; 6]) -> Arc<Partition> {
    let role = if id == 0 {
        Role::Pf
    } else {
        Role::Vf(id as u16 - 1)
    };
    Arc::new(Partition::new(
        id,
        role,
        PartitionConfig {
            mac: backend::mac::MacAddr(mac),
            queue_pairs: 1,
            queue_size: 256,
            mtu: 1500,
        },
    ))
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let f = inp.u8();
    let g = inp.u8();
    let sizes = inp.u8();
    let split = usize::from(inp.u16());
    let rest = inp.rest();
    let (tx_image, rx_image) = rest.split_at(split.min(rest.len()));

    let bit = |b: u8, on: bool| if on { 1u64 << b } else { 0 };
    let tx_features = bit(F_INDIRECT as u8, f & 1 != 0) | bit(F_CSUM as u8, true);
    let rx_features = bit(F_INDIRECT as u8, f & 2 != 0)
        | bit(F_MRG_RXBUF as u8, f & 4 != 0)
        | bit(F_GUEST_CSUM as u8, f & 8 != 0)
        | bit(F_GUEST_TSO4 as u8, f & 0x10 != 0)
        | bit(F_GUEST_TSO6 as u8, f & 0x20 != 0);
    let spoofchk = f & 0x40 == 0;
    let rx_event_idx = f & 0x80 != 0;
    let tx_layout = usize::from(g & 3);
    let rx_layout = usize::from((g >> 2) & 3);
    let tx_event_idx = g & 0x10 != 0;
    let rx_running = g & 0x20 == 0;
    let tx_ring = RingLayout::new(0, RingLayout::size_from(sizes & 0xf));
    let rx_ring = RingLayout::new(0, RingLayout::size_from(sizes >> 4));

    let pf = part(0, [2, 0, 0, 0, 0, 1]);
    let vf0 = part(1, [2, 0, 0, 0, 0, 2]);
    // A partition without a connection: floods skip it, unicast to it is DestinationDown.
    let vf1 = part(2, [2, 0, 0, 0, 0, 3]);
    let sw = Switch::new(vec![pf.clone(), vf0.clone(), vf1]).unwrap();
    sw.set_admin(
        0,
        &AdminChange {
            spoofchk: Some(spoofchk),
            ..AdminChange::default()
        },
    )
    .unwrap();

    let tx_mem = guest_mem(0, tx_layout, tx_image);
    let rx_mem = guest_mem(1, rx_layout, rx_image);
    let tx_s = session_on("pf", tx_mem.clone(), 1, &tx_ring, tx_event_idx, tx_features);
    pf.install_session(tx_s.clone());
    let rx_s = rx_running.then(|| {
        let s = session_on(
            "vf0",
            rx_mem.clone(),
            0,
            &rx_ring,
            rx_event_idx,
            rx_features,
        );
        vf0.install_session(s.clone());
        s
    });

    // The RX chains the driver offers, as they are before the device writes anything.
    let rx_indirect = rx_features & (1 << F_INDIRECT) != 0;
    let rx_chains: Vec<_> = if rx_running {
        let map = MemMap::new(Arc::new(rx_mem.clone()));
        let host = map.host();
        let table = Table {
            addr: rx_ring.desc,
            size: rx_ring.size,
        };
        (0..rx_ring.size)
            .map(|k| {
                let head = rx_ring.avail_entry(&rx_mem, k);
                let mut segs = Vec::new();
                let cap = ring::walk_chain(
                    &host,
                    table,
                    head,
                    Dir::Writable,
                    rx_indirect,
                    u32::MAX,
                    &mut segs,
                );
                (head, cap, segs)
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut scratch = TxScratch::default();
    let held = Held::of(tx_s);
    let mut taken: u16 = 0;
    for _ in 0..4 {
        match tx_batch(&sw, &pf, &held, 0, &mut scratch) {
            Batch::Sent(n) => {
                assert!(n > 0);
                // Completed in ring order, nothing written into TX buffers.
                assert_eq!(tx_ring.used_idx(&tx_mem), taken.wrapping_add(n));
                for k in taken..taken.wrapping_add(n) {
                    let (id, len) = tx_ring.used_elem(&tx_mem, k);
                    assert_eq!(id, u32::from(tx_ring.avail_entry(&tx_mem, k)));
                    assert_eq!(len, 0);
                }
                taken = taken.wrapping_add(n);
            }
            Batch::Empty | Batch::Stopped => break,
            Batch::Throttled(_) => unreachable!("no partition here has a max_tx_rate"),
        }
    }
    scratch.release();

    if let Some(rx_s) = rx_s {
        // Whatever was delivered names offered chains, in order, and fits them. (The image may
        // have put anything in the used ring: only what the device published is looked at.)
        let used = rx_s.vrings().unwrap()[0].get_ref().get_queue().next_used();
        // A driver may point RX buffers at its own rings or tables, which the frames then
        // overwrite: only chains that stay clear of them are held to what they were.
        let clear = rx_chains
            .iter()
            .take(usize::from(used))
            .all(|c| c.2.iter().all(|seg| seg.addr >= rx_ring.end) && !rx_indirect);
        if clear {
            if used != 0 {
                assert_eq!(rx_ring.used_idx(&rx_mem), used);
            }
            for (k, (head, cap, _)) in rx_chains.iter().take(usize::from(used)).enumerate() {
                let (id, len) = rx_ring.used_elem(&rx_mem, k as u16);
                assert_eq!(id, u32::from(*head), "used entry {k}");
                assert!(
                    len <= *cap.as_ref().unwrap_or(&0),
                    "used entry {k}: {len} > {cap:?}"
                );
            }
        }
    }
});
