//! Builders of the seed inputs in `fuzz/corpus/<target>/`: valid chains, valid GSO and
//! partial-checksum frames, a QEMU-like vhost-user conversation, valid control requests. The
//! committed seeds are what `write_seeds` (an ignored test) writes:
//! `cargo test --manifest-path fuzz/Cargo.toml --lib -- --ignored write_seeds`.

use crate::{vu_msg, RingLayout};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// A guest memory image being laid out by a driver.
#[derive(Default)]
pub struct Image(pub Vec<u8>);

impl Image {
    pub fn put(&mut self, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if self.0.len() < at + bytes.len() {
            self.0.resize(at + bytes.len(), 0);
        }
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    pub fn desc(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.put(table + 16 * u64::from(i), &d);
    }

    /// Offers `heads` on `ring`'s avail ring (avail.idx = their count) and makes sure the used
    /// ring is inside the image.
    pub fn offer(&mut self, ring: &RingLayout, heads: &[u16]) {
        self.put(ring.avail + 2, &(heads.len() as u16).to_le_bytes());
        for (k, h) in heads.iter().enumerate() {
            self.put(ring.avail + 4 + 2 * k as u64, &h.to_le_bytes());
        }
        if (self.0.len() as u64) < ring.end {
            self.0.resize(ring.end as usize, 0);
        }
    }
}

pub const PF_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const VF0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The 12-byte virtio-net header.
#[allow(clippy::too_many_arguments)]
pub fn net_hdr(
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    for v in [hdr_len, gso_size, csum_start, csum_offset, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

fn sum16(b: &[u8], mut acc: u32) -> u32 {
    for w in b.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A frame to build: Ethernet (with VLAN tags), IPv4 or IPv6, TCP (with options), payload.
pub struct Tcp<'a> {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub vlans: &'a [u16],
    pub v6: bool,
    pub tcp_flags: u8,
    pub opts: &'a [u8],
    pub payload: usize,
}

/// What [`Tcp::build`] made: the frame, where the TCP header starts and the length of all
/// headers.
pub struct Built {
    pub frame: Vec<u8>,
    pub l4: usize,
    pub hlen: usize,
}

impl Tcp<'_> {
    /// The frame with a correct IPv4 header checksum; the TCP checksum field holds the folded
    /// pseudo-header sum, as a driver leaves it for CHECKSUM_PARTIAL / TSO.
    pub fn build(&self) -> Built {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        for (i, _) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i + 1 < self.vlans.len() {
                0x88a8
            } else {
                0x8100
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&self.vlans[i].to_be_bytes());
        }
        f.extend_from_slice(&(if self.v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
        let l3 = f.len();
        let tcp_len = 20 + self.opts.len() + self.payload;
        let (saddr, daddr): (Vec<u8>, Vec<u8>) = if self.v6 {
            let mut s = vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let d = s.clone();
            s[15] = 2;
            (s, d)
        } else {
            (vec![10, 0, 0, 1], vec![10, 0, 0, 2])
        };
        if self.v6 {
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
        } else {
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
        }
        f.extend_from_slice(&saddr);
        f.extend_from_slice(&daddr);
        if !self.v6 {
            let c = !fold(sum16(&f[l3..l3 + 20], 0));
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        f.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        f.push((((20 + self.opts.len()) / 4) as u8) << 4);
        f.push(self.tcp_flags);
        f.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
        f.extend_from_slice(self.opts);
        let hlen = f.len();
        f.extend((0..self.payload).map(|i| (i * 7 + 3) as u8));
        let mut pseudo = sum16(&saddr, 0);
        pseudo = sum16(&daddr, pseudo) + 6 + tcp_len as u32;
        f[l4 + 16..l4 + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
        Built { frame: f, l4, hlen }
    }
}

/// TCP timestamp option (NOP, NOP, TS), as Linux sends it.
pub const TS_OPTS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

fn plain_frame(dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PF_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.resize(len, 0x5a);
    f
}

/// Seeds for the `ring` target.
pub fn ring() -> Vec<(&'static str, Vec<u8>)> {
    #[allow(clippy::too_many_arguments)]
    fn head(
        flags: u8,
        size_log2: u8,
        t_addr: u64,
        t_size: u16,
        t_head: u16,
        max_len: u32,
        skip: u16,
        glen: u16,
    ) -> Vec<u8> {
        let mut h = vec![flags, size_log2];
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&t_addr.to_le_bytes());
        h.extend_from_slice(&t_size.to_le_bytes());
        h.extend_from_slice(&t_head.to_le_bytes());
        h.extend_from_slice(&max_len.to_le_bytes());
        h.extend_from_slice(&skip.to_le_bytes());
        h.extend_from_slice(&glen.to_le_bytes());
        h
    }
    let mut out = Vec::new();
    let r4 = RingLayout::new(0, 4);
    let hdr = net_hdr(0, 0, 0, 0, 0, 0);

    // TX: header and frame in two descriptors.
    let mut m = Image::default();
    m.desc(0, 0, 0x200, 12, F_NEXT, 1);
    m.desc(0, 1, 0x280, 60, 0, 0);
    m.put(0x200, &hdr);
    m.put(0x280, &plain_frame(VF0_MAC, 60));
    m.offer(&r4, &[0]);
    out.push((
        "tx-two-descriptors",
        [head(0, 2, 0, 4, 0, 65562, 0, 72), m.0].concat(),
    ));

    // TX: several one-buffer chains (the flat path), EVENT_IDX.
    let mut m = Image::default();
    for i in 0..4u16 {
        let at = 0x200 + 0x80 * u64::from(i);
        m.desc(0, i, at, 72, 0, 0);
        m.put(at, &hdr);
        m.put(at + 12, &plain_frame(VF0_MAC, 60));
    }
    m.offer(&r4, &[0, 1, 2, 3]);
    out.push((
        "tx-flat-batch",
        [head(0x10, 2, 0, 4, 2, 65562, 12, 64), m.0].concat(),
    ));

    // TX: an indirect table of three buffers.
    let mut m = Image::default();
    m.desc(0, 0, 0x300, 48, F_INDIRECT, 0);
    m.desc(0x300, 0, 0x400, 12, F_NEXT, 1);
    m.desc(0x300, 1, 0x410, 14, F_NEXT, 2);
    m.desc(0x300, 2, 0x420, 46, 0, 0);
    m.put(0x400, &hdr);
    m.put(0x410, &plain_frame(BROADCAST, 60));
    m.offer(&r4, &[0]);
    out.push((
        "tx-indirect",
        [head(2, 2, 0x300, 3, 0, 65562, 10, 40), m.0].concat(),
    ));

    // RX: writable chains, one with an empty descriptor in the middle.
    let mut m = Image::default();
    m.desc(0, 0, 0x200, 12, F_WRITE | F_NEXT, 1);
    m.desc(0, 1, 0x300, 0, F_WRITE | F_NEXT, 2);
    m.desc(0, 2, 0x400, 1514, F_WRITE, 0);
    m.desc(0, 3, 0x1000, 2048, F_WRITE, 0);
    m.offer(&r4, &[0, 3]);
    out.push((
        "rx-writable",
        [head(1, 2, 0, 4, 0, u32::MAX, 0, 100), m.0].concat(),
    ));

    // Two adjacent regions (layout 1): one buffer runs from the first into the second.
    let mut m = Image::default();
    m.desc(0, 0, 0x1ff0, 0x40, 0, 0);
    m.put(0x1ff0, &hdr);
    m.put(0x1ffc, &plain_frame(VF0_MAC, 52));
    m.offer(&r4, &[0]);
    out.push((
        "tx-across-regions",
        [head(1 << 2, 2, 0, 4, 0, 65562, 0, 0x40), m.0].concat(),
    ));

    // Ten regions (layout 3, past the inline table): a chain through several of them.
    let mut m = Image::default();
    m.desc(0, 0, 0x1800, 12, F_NEXT, 1);
    m.desc(0, 1, 0x2800, 100, F_NEXT, 2);
    m.desc(0, 2, 0x3800, 100, 0, 0);
    m.put(0x1800, &hdr);
    m.offer(&r4, &[0]);
    out.push((
        "tx-many-regions",
        [head(3 << 2, 2, 0, 4, 0, 65562, 5, 200), m.0].concat(),
    ));
    out
}

/// Seeds for the `tx` target: (flags, sender image, receiver image).
pub fn tx() -> Vec<(&'static str, Vec<u8>)> {
    fn input(f: u8, g: u8, tx_log2: u8, rx_log2: u8, txi: &[u8], rxi: &[u8]) -> Vec<u8> {
        let mut v = vec![f, g, tx_log2 | (rx_log2 << 4)];
        v.extend_from_slice(&(txi.len() as u16).to_le_bytes());
        v.extend_from_slice(txi);
        v.extend_from_slice(rxi);
        v
    }
    const INDIRECT: u8 = 1;
    const RX_INDIRECT: u8 = 2;
    const MRG: u8 = 4;
    const GCSUM: u8 = 8;
    const GTSO6: u8 = 0x20;
    const EVENT_IDX: u8 = 0x80;

    let r8 = RingLayout::new(0, 8);
    let rx_buffers = |n: u16, len: u32| {
        let mut m = Image::default();
        let heads: Vec<u16> = (0..n).collect();
        for i in 0..n {
            m.desc(0, i, 0x400 + u64::from(i) * u64::from(len), len, F_WRITE, 0);
        }
        m.offer(&r8, &heads);
        m.0
    };
    let mut out = Vec::new();

    // One 60-byte frame PF -> VF0, one buffer each side.
    let mut t = Image::default();
    t.desc(0, 0, 0x200, 72, 0, 0);
    t.put(0x200, &net_hdr(0, 0, 0, 0, 0, 0));
    t.put(0x20c, &plain_frame(VF0_MAC, 60));
    t.offer(&r8, &[0]);
    out.push(("unicast", input(0, 0, 3, 3, &t.0, &rx_buffers(1, 2048))));

    // Broadcast, header and frame in separate descriptors; mergeable RX with small buffers;
    // EVENT_IDX both sides.
    let mut t = Image::default();
    t.desc(0, 0, 0x200, 12, F_NEXT, 1);
    t.desc(0, 1, 0x300, 300, 0, 0);
    t.put(0x200, &net_hdr(0, 0, 0, 0, 0, 0));
    t.put(0x300, &plain_frame(BROADCAST, 300));
    t.offer(&r8, &[0]);
    out.push((
        "broadcast-mergeable",
        input(MRG | EVENT_IDX, 0x10, 3, 3, &t.0, &rx_buffers(8, 128)),
    ));

    // A TSO4 super-frame to a receiver without TSO: segmented in software into mergeable RX.
    let b = Tcp {
        dst: VF0_MAC,
        src: PF_MAC,
        vlans: &[],
        v6: false,
        tcp_flags: PSH_ACK,
        opts: &TS_OPTS,
        payload: 3000,
    }
    .build();
    let mut t = Image::default();
    t.desc(0, 0, 0x200, 12, F_NEXT, 1);
    t.desc(0, 1, 0x400, b.frame.len() as u32, 0, 0);
    t.put(0x200, &net_hdr(1, 1, b.hlen as u16, 1448, b.l4 as u16, 16));
    t.put(0x400, &b.frame);
    t.offer(&r8, &[0]);
    out.push((
        "tso4-segmented",
        input(MRG | GCSUM, 0, 3, 3, &t.0, &rx_buffers(8, 1600)),
    ));

    // The same as TSO6 with a VLAN tag, through an indirect table, to a receiver with TSO6.
    let b = Tcp {
        dst: VF0_MAC,
        src: PF_MAC,
        vlans: &[100],
        v6: true,
        tcp_flags: ACK,
        opts: &[],
        payload: 2000,
    }
    .build();
    let mut t = Image::default();
    t.desc(0, 0, 0x200, 32, F_INDIRECT, 0);
    t.desc(0x200, 0, 0x300, 12, F_NEXT, 1);
    t.desc(0x200, 1, 0x400, b.frame.len() as u32, 0, 0);
    t.put(0x300, &net_hdr(1, 4, b.hlen as u16, 1400, b.l4 as u16, 16));
    t.put(0x400, &b.frame);
    t.offer(&r8, &[0]);
    out.push((
        "tso6-indirect-passthrough",
        input(
            INDIRECT | RX_INDIRECT | MRG | GCSUM | GTSO6,
            0,
            3,
            3,
            &t.0,
            &rx_buffers(4, 1600),
        ),
    ));

    // A partial checksum to a receiver without GUEST_CSUM: completed in software.
    let b = Tcp {
        dst: VF0_MAC,
        src: PF_MAC,
        vlans: &[],
        v6: false,
        tcp_flags: PSH_ACK,
        opts: &[],
        payload: 200,
    }
    .build();
    let mut t = Image::default();
    t.desc(0, 0, 0x200, (12 + b.frame.len()) as u32, 0, 0);
    t.put(0x200, &net_hdr(1, 0, 0, 0, b.l4 as u16, 16));
    t.put(0x20c, &b.frame);
    t.offer(&r8, &[0]);
    out.push((
        "partial-csum",
        input(0, 0, 3, 3, &t.0, &rx_buffers(2, 2048)),
    ));

    // A batch to a receiver that is not running, and one spoofed source.
    let mut t = Image::default();
    let mut spoofed = plain_frame(VF0_MAC, 60);
    spoofed[11] = 9;
    t.desc(0, 0, 0x200, 72, 0, 0);
    t.desc(0, 1, 0x300, 72, 0, 0);
    t.put(0x20c, &plain_frame(VF0_MAC, 60));
    t.put(0x30c, &spoofed);
    t.offer(&r8, &[0, 1]);
    out.push(("receiver-down", input(0, 0x20, 3, 3, &t.0, &[])));
    out
}

/// Seeds for the `offload` target: (receiver offloads, header, frame).
pub fn offload() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |name, rx: u8, hdr: Vec<u8>, frame: &[u8]| {
        out.push((name, [vec![rx], hdr, frame.to_vec()].concat()));
    };
    let t = |vlans, v6, opts, payload| {
        Tcp {
            dst: VF0_MAC,
            src: PF_MAC,
            vlans,
            v6,
            tcp_flags: PSH_ACK | 0x80,
            opts,
            payload,
        }
        .build()
    };
    let b = t(&[], false, &TS_OPTS[..], 4000);
    push(
        "tso4",
        0,
        net_hdr(1, 1, b.hlen as u16, 1448, b.l4 as u16, 16),
        &b.frame,
    );
    push(
        "tso4-ecn-csum-only",
        1,
        net_hdr(1, 0x81, b.hlen as u16, 1448, b.l4 as u16, 16),
        &b.frame,
    );
    push(
        "tso4-passthrough",
        3,
        net_hdr(1, 1, b.hlen as u16, 1448, b.l4 as u16, 16),
        &b.frame,
    );
    let b = t(&[7], true, &[], 2900);
    push(
        "tso6-vlan",
        1,
        net_hdr(1, 4, b.hlen as u16, 1440, b.l4 as u16, 16),
        &b.frame,
    );
    let b = t(&[5, 6], false, &[], 500);
    push(
        "tso4-qinq-one-segment",
        0,
        net_hdr(1, 1, b.hlen as u16, 1448, b.l4 as u16, 16),
        &b.frame,
    );
    let b = t(&[], false, &[], 201);
    push(
        "partial-csum-odd",
        0,
        net_hdr(1, 0, 0, 0, b.l4 as u16, 16),
        &b.frame,
    );
    push(
        "plain",
        7,
        net_hdr(0, 0, 0, 0, 0, 0),
        &plain_frame(VF0_MAC, 60),
    );
    out
}

const V1: u32 = 1;
const NEED_REPLY: u32 = 8;

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

/// The conversation QEMU has with a vhost-user-net backend offering PROTOCOL_FEATURES, MQ,
/// REPLY_ACK and CONFIGURE_MEM_SLOTS, for two queue pairs: set-up (with its early
/// SET_VRING_ENABLE), start with one memory region and the first pair's rings, stop.
pub fn qemu_conversation() -> Vec<u8> {
    let features: u64 = (1 << 32) | (1 << 30) | (1 << 29) | (1 << 28) | (1 << 15) | 1 | 2;
    let protocol: u64 = 1 | (1 << 3) | (1 << 15);
    let mut m = Vec::new();
    m.extend(vu_msg(1, V1, &[])); // GET_FEATURES
    m.extend(vu_msg(15, V1, &[])); // GET_PROTOCOL_FEATURES
    m.extend(vu_msg(16, V1, &protocol.to_le_bytes())); // SET_PROTOCOL_FEATURES
    m.extend(vu_msg(17, V1, &[])); // GET_QUEUE_NUM
    m.extend(vu_msg(36, V1, &[])); // GET_MAX_MEM_SLOTS
    m.extend(vu_msg(3, V1, &[])); // SET_OWNER
    m.extend(vu_msg(1, V1, &[])); // GET_FEATURES
    for q in 0..4 {
        // SET_VRING_ENABLE before SET_FEATURES (virtio-net queue-pair attach).
        m.extend(vu_msg(
            18,
            V1 | NEED_REPLY,
            &vring_state(q, u32::from(q < 2)),
        ));
    }
    m.extend(vu_msg(2, V1, &features.to_le_bytes())); // SET_FEATURES
                                                      // SET_MEM_TABLE: one 1 MiB region at guest 0, host virtual 0x7f00_0000_0000.
    let uaddr: u64 = 0x7f00_0000_0000;
    let mut mt = Vec::new();
    mt.extend_from_slice(&1u32.to_le_bytes());
    mt.extend_from_slice(&0u32.to_le_bytes());
    for v in [0u64, 0x10_0000, uaddr, 0] {
        mt.extend_from_slice(&v.to_le_bytes());
    }
    m.extend(vu_msg(5, V1 | NEED_REPLY, &mt));
    for q in 0..2u32 {
        let base = 0x1_0000 * u64::from(q + 1);
        m.extend(vu_msg(8, V1, &vring_state(q, 256))); // SET_VRING_NUM
        m.extend(vu_msg(10, V1, &vring_state(q, 0))); // SET_VRING_BASE
        let mut a = Vec::new();
        a.extend_from_slice(&q.to_le_bytes());
        a.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            uaddr + base,
            uaddr + base + 0x2000,
            uaddr + base + 0x1000,
            0,
        ] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        m.extend(vu_msg(9, V1, &a)); // SET_VRING_ADDR
        m.extend(vu_msg(12, V1, &u64::from(q).to_le_bytes())); // SET_VRING_KICK
        m.extend(vu_msg(13, V1, &u64::from(q).to_le_bytes())); // SET_VRING_CALL
        m.extend(vu_msg(18, V1, &vring_state(q, 1))); // SET_VRING_ENABLE
    }
    let mut cfg = Vec::new();
    for v in [0u32, 12, 0] {
        cfg.extend_from_slice(&v.to_le_bytes());
    }
    cfg.extend_from_slice(&[0; 12]);
    m.extend(vu_msg(24, V1, &cfg)); // GET_CONFIG
    for q in 0..2 {
        m.extend(vu_msg(11, V1, &vring_state(q, 0))); // GET_VRING_BASE (stop)
    }
    m
}

/// QEMU with `iommu_platform=on` behind a vIOMMU: ACCESS_PLATFORM acked, the back-end channel,
/// ring addresses as IOVAs (one pair), the used rings' entries pushed, the rest answered after
/// the pump's MISS, a lazy-mode invalidation of almost everything, a stop and a start at the
/// same IOVAs (the pump forgot every entry at the stop, so it asks again).
pub fn iommu_conversation() -> Vec<u8> {
    let features: u64 = (1 << 33) | (1 << 32) | (1 << 30) | (1 << 15) | 1;
    let protocol: u64 = 1 | (1 << 3) | (1 << 5) | (1 << 15);
    let uaddr: u64 = 0x7f00_0000_0000;
    let iova: u64 = 0xffff_0000;
    let iotlb = |io: u64, size: u64, va: u64, perm: u8, kind: u8| {
        let mut p = [io.to_le_bytes(), size.to_le_bytes(), va.to_le_bytes()].concat();
        p.extend_from_slice(&[perm, kind, 0, 0, 0, 0, 0, 0]);
        vu_msg(22, V1 | NEED_REPLY, &p)
    };
    let mut m = Vec::new();
    m.extend(vu_msg(1, V1, &[])); // GET_FEATURES
    m.extend(vu_msg(16, V1, &protocol.to_le_bytes())); // SET_PROTOCOL_FEATURES
    m.extend(vu_msg(3, V1, &[])); // SET_OWNER
    m.extend(vu_msg(21, V1, &[])); // SET_BACKEND_REQ_FD (its descriptor, where one can go)
    m.extend(vu_msg(2, V1, &features.to_le_bytes())); // SET_FEATURES
    let mut mt = Vec::new();
    mt.extend_from_slice(&1u32.to_le_bytes());
    mt.extend_from_slice(&0u32.to_le_bytes());
    for v in [0u64, 0x10_0000, uaddr, 0] {
        mt.extend_from_slice(&v.to_le_bytes());
    }
    m.extend(vu_msg(5, V1 | NEED_REPLY, &mt)); // SET_MEM_TABLE
    for round in 0..2 {
        for q in 0..2u32 {
            let base = iova + 0x4000 * u64::from(q);
            m.extend(vu_msg(8, V1, &vring_state(q, 256))); // SET_VRING_NUM
            m.extend(vu_msg(10, V1, &vring_state(q, 0))); // SET_VRING_BASE
            let mut a = Vec::new();
            a.extend_from_slice(&q.to_le_bytes());
            a.extend_from_slice(&0u32.to_le_bytes());
            for v in [base, base + 0x2000, base + 0x1000, 0] {
                a.extend_from_slice(&v.to_le_bytes());
            }
            m.extend(vu_msg(9, V1 | NEED_REPLY, &a)); // SET_VRING_ADDR (acked at once)
            m.extend(vu_msg(12, V1, &u64::from(q).to_le_bytes())); // SET_VRING_KICK
            m.extend(vu_msg(13, V1, &u64::from(q).to_le_bytes())); // SET_VRING_CALL
        }
        for q in 0..2u64 {
            // The used ring (QEMU's own push), then what the MISS requests asked for.
            let base = iova + 0x4000 * q;
            m.extend(iotlb(
                base + 0x2000,
                0x1000,
                uaddr + 0x1_0000 * (q + 1) + 0x2000,
                3,
                2,
            ));
            m.extend(iotlb(base, 0x1000, uaddr + 0x1_0000 * (q + 1), 1, 2));
            m.extend(iotlb(
                base + 0x1000,
                0x1000,
                uaddr + 0x1_0000 * (q + 1) + 0x1000,
                1,
                2,
            ));
        }
        m.extend(vu_msg(18, V1 | NEED_REPLY, &vring_state(0, 1))); // SET_VRING_ENABLE
        m.extend(iotlb(0xfef0_0000, 0xffff_ffff_0110_0000, 0, 0, 3)); // INVALIDATE
        m.extend(iotlb(0, 0xfee0_0000, 0, 0, 3));
        if round == 0 {
            for q in 0..2 {
                m.extend(vu_msg(11, V1, &vring_state(q, 0))); // GET_VRING_BASE (stop)
            }
        }
    }
    m
}

/// Seeds for the `shim` and `vhost_user` targets.
pub fn vhost_user() -> Vec<(&'static str, Vec<u8>)> {
    let conv = qemu_conversation();
    let mut oversized = vu_msg(1, V1, &[]);
    oversized[8..12].copy_from_slice(&0x10_0000u32.to_le_bytes());
    let mut slots = Vec::new();
    slots.extend(vu_msg(16, V1, &(1u64 | (1 << 15)).to_le_bytes()));
    let mut reg = 0u64.to_le_bytes().to_vec();
    for v in [0u64, 0x1_0000, 0x7f00_0000_0000, 0] {
        reg.extend_from_slice(&v.to_le_bytes());
    }
    slots.extend(vu_msg(37, V1 | NEED_REPLY, &reg)); // ADD_MEM_REG
    slots.extend(vu_msg(38, V1 | NEED_REPLY, &reg)); // REM_MEM_REG
    vec![
        ("qemu-conversation", conv.clone()),
        ("cut-short", conv[..conv.len() / 2 + 5].to_vec()),
        (
            "oversized-payload",
            [vu_msg(1, V1, &[]), oversized].concat(),
        ),
        ("mem-slots", slots),
        ("iommu-conversation", iommu_conversation()),
    ]
}

/// Seeds for the `control` target.
pub fn control() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("show", r#"{"version":1,"cmd":"show"}"#),
        (
            "show-one",
            r#"{"version":1,"cmd":"show","partition":"vf1"}"#,
        ),
        ("version", r#"{"version":1,"cmd":"version"}"#),
        (
            "unknown",
            r#"{"version":1,"cmd":"frobnicate","partition":null}"#,
        ),
        ("old-version", "  {\"version\":0,\"cmd\":\"show\"}\n"),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.as_bytes().to_vec()))
    .collect()
}

#[cfg(test)]
mod tests {
    /// Writes every seed into `fuzz/corpus/<target>/<name>`.
    #[test]
    #[ignore]
    fn write_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let sets = [
            ("ring", super::ring()),
            ("tx", super::tx()),
            ("offload", super::offload()),
            ("shim", super::vhost_user()),
            ("vhost_user", super::vhost_user()),
            ("control", super::control()),
        ];
        for (target, seeds) in sets {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
