//! Uplink wiring: the switch's uplink ports from the config (no I/O), then their wires (stream
//! sockets bound like the partitions', taps opened, VXLAN sockets bound) and the one I/O thread
//! that serves them all.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use backend::offload::{RxOffloads, TxOffloads};
use backend::switch::Switch;
use backend::uplink::event_loop::{self, Port};
use backend::uplink::stream::StreamPort;
use backend::uplink::tap::TapPort;
use backend::uplink::vxlan::{VxlanConfig, VxlanPort};
use backend::uplink::{Uplink, UplinkConfig};

use crate::config::{UplinkKind, UplinkPlan};

/// What a tap's reader (the switch) takes and what it hands the tap: checksum and TCP
/// segmentation, which the switch completes in software for any receiver without them.
pub const TAP_OFFLOADS: RxOffloads = RxOffloads {
    csum: true,
    tso4: true,
    tso6: true,
};

/// Queues of a tap uplink: as many as the partition with the most queue pairs has, so each of
/// its pairs has a tap queue of its own (multi-queue when more than one).
pub fn tap_queues(switch: &Switch) -> usize {
    switch
        .partitions()
        .iter()
        .map(|p| usize::from(p.config.queue_pairs))
        .max()
        .unwrap_or(1)
}

/// The switch's uplink ports, carrier down and no wire yet.
pub fn ports(plans: &[UplinkPlan]) -> Vec<Arc<Uplink>> {
    plans
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let (offloads, accepts) = match p.kind {
                UplinkKind::Tap { .. } => (
                    TAP_OFFLOADS,
                    TxOffloads {
                        csum: true,
                        tso4: true,
                        tso6: true,
                    },
                ),
                _ => (RxOffloads::default(), TxOffloads::default()),
            };
            Arc::new(Uplink::new(
                id,
                UplinkConfig {
                    name: format!("uplink{id}"),
                    kind: p.kind_name(),
                    spec: p.spec(),
                    mtu: p.mtu,
                    offloads,
                    accepts,
                },
            ))
        })
        .collect()
}

/// The stream uplinks' socket paths, in order (bound with the partitions' sockets).
pub fn socket_paths(plans: &[UplinkPlan]) -> Vec<PathBuf> {
    plans
        .iter()
        .filter_map(|p| match &p.kind {
            UplinkKind::Stream { path } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

/// Opens every uplink's wire and starts the uplink I/O thread. `listeners` are the bound
/// stream sockets, in [`socket_paths`] order.
pub fn start(
    switch: &Arc<Switch>,
    plans: &[UplinkPlan],
    listeners: Vec<UnixListener>,
) -> Result<(), String> {
    let mut listeners = listeners.into_iter();
    let mut io: Vec<Box<dyn Port>> = Vec::with_capacity(plans.len());
    let tap_queues = tap_queues(switch);
    for (plan, up) in plans.iter().zip(switch.uplinks()) {
        let name = up.name().to_string();
        let port: Box<dyn Port> = match &plan.kind {
            UplinkKind::Stream { path } => {
                let l = listeners
                    .next()
                    .ok_or_else(|| format!("{name}: no socket bound for {}", path.display()))?;
                Box::new(
                    StreamPort::new(up.clone(), l)
                        .map_err(|e| format!("{name} ({}): {e}", plan.spec()))?,
                )
            }
            UplinkKind::Tap { name: tap } => Box::new(
                TapPort::open(up.clone(), tap, tap_queues)
                    .map_err(|e| format!("{name} (tap {tap}): {e}"))?,
            ),
            UplinkKind::Vxlan {
                vni,
                local,
                remotes,
                ..
            } => {
                let c = VxlanConfig {
                    vni: *vni,
                    local: *local,
                    remotes: remotes.clone(),
                };
                Box::new(
                    VxlanPort::bind(up.clone(), c)
                        .map_err(|e| format!("{name} ({}): {e}", plan.spec()))?,
                )
            }
        };
        io.push(port);
    }
    event_loop::spawn(switch.clone(), io)
        .map(|_| ())
        .map_err(|e| format!("cannot start the uplink I/O thread: {e}"))
}
