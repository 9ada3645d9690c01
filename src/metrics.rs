//! `--metrics ADDR`: the counters as Prometheus/OpenMetrics text on `http://ADDR/metrics`, named
//! after node_exporter's `node_network_*` with a `partition` label (so dashboards built for
//! NICs apply), plus each drop reason and the link and vhost-user state per partition.

use std::sync::Arc;
use std::thread;

use backend::counters::{CounterSnapshot, DropReason};
use backend::partition::{Partition, State};
use backend::switch::Switch;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Every metric's name starts with this.
pub const PREFIX: &str = "vhost_sriov";

struct Partitions(Arc<Switch>);

impl std::fmt::Debug for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partitions({})", self.0.partitions().len())
    }
}

type Labels = Vec<(&'static str, String)>;

/// Drops on the way to the partition's driver, as a NIC counts receive drops.
fn rx_drop(r: DropReason) -> bool {
    matches!(r, DropReason::NoRxBuffer | DropReason::LinkDown)
}

impl Collector for Partitions {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let parts: Vec<(&Arc<Partition>, CounterSnapshot)> = self
            .0
            .partitions()
            .iter()
            .map(|p| (p, p.totals()))
            .collect();
        let label = |p: &Partition| -> Labels { vec![("partition", p.name())] };
        type Get = fn(&CounterSnapshot) -> u64;
        let counters: [(&str, &str, Get); 10] = [
            (
                "network_receive_bytes",
                "Bytes delivered to the partition's driver.",
                |c| c.rx_bytes,
            ),
            (
                "network_receive_packets",
                "Frames delivered to the partition's driver.",
                |c| c.rx_packets,
            ),
            (
                "network_receive_multicast",
                "Multicast frames delivered.",
                |c| c.rx_multicast,
            ),
            (
                "network_receive_broadcast",
                "Broadcast frames delivered.",
                |c| c.rx_broadcast,
            ),
            (
                "network_transmit_bytes",
                "Bytes sent by the partition's driver.",
                |c| c.tx_bytes,
            ),
            (
                "network_transmit_packets",
                "Frames sent by the partition's driver.",
                |c| c.tx_packets,
            ),
            (
                "network_transmit_multicast",
                "Multicast frames sent.",
                |c| c.tx_multicast,
            ),
            (
                "network_transmit_broadcast",
                "Broadcast frames sent.",
                |c| c.tx_broadcast,
            ),
            (
                "network_receive_drop",
                "Frames for the partition dropped (no RX buffer, link down).",
                |c| {
                    DropReason::ALL
                        .iter()
                        .filter(|r| rx_drop(**r))
                        .map(|r| c.dropped(*r))
                        .sum()
                },
            ),
            (
                "network_transmit_drop",
                "Frames from the partition dropped (every other reason).",
                |c| {
                    DropReason::ALL
                        .iter()
                        .filter(|r| !rx_drop(**r))
                        .map(|r| c.dropped(*r))
                        .sum()
                },
            ),
        ];
        for (name, help, get) in counters {
            let name = format!("{PREFIX}_{name}");
            let mut m =
                enc.encode_descriptor(&name, help, None, ConstCounter::new(0u64).metric_type())?;
            for (p, c) in &parts {
                let l = label(p);
                ConstCounter::new(get(c)).encode(m.encode_family(&l)?)?;
            }
        }
        let name = format!("{PREFIX}_drops");
        let mut m = enc.encode_descriptor(
            &name,
            "Dropped frames by reason (ctl show -j's drop_* counters).",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (p, c) in &parts {
            for r in DropReason::ALL {
                let l: Labels = vec![
                    ("partition", p.name()),
                    ("reason", r.key().trim_start_matches("drop_").to_string()),
                ];
                ConstCounter::new(c.dropped(r)).encode(m.encode_family(&l)?)?;
            }
        }
        type GaugeOf = fn(&Switch, &Partition) -> i64;
        let gauges: [(&str, &str, GaugeOf); 2] = [
            (
                "network_up",
                "1 when the partition's link is up (admin state, uplinks).",
                |s, p| i64::from(s.link_up(p.id)),
            ),
            (
                "started",
                "1 while the partition's rings run (its driver is up).",
                |_, p| i64::from(p.state() == State::Started),
            ),
        ];
        for (name, help, get) in gauges {
            let name = format!("{PREFIX}_{name}");
            let mut m =
                enc.encode_descriptor(&name, help, None, ConstGauge::new(0i64).metric_type())?;
            for (p, _) in &parts {
                let l = label(p);
                ConstGauge::new(get(&self.0, p)).encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

/// The exposition text of `switch`'s partitions.
pub fn render(switch: &Arc<Switch>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Partitions(switch.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        log::warn!("metrics: cannot encode: {e}");
    }
    out
}

/// Serves `/metrics` on `addr` (host:port) from one thread.
pub fn spawn(addr: &str, switch: Arc<Switch>) -> Result<thread::JoinHandle<()>, String> {
    let server = tiny_http::Server::http(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
    log::info!("metrics: http://{addr}/metrics");
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let ctype = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
            );
            for req in server.incoming_requests() {
                let resp = if req.url() == "/metrics" {
                    let mut r = tiny_http::Response::from_string(render(&switch));
                    if let Ok(h) = ctype.clone() {
                        r.add_header(h);
                    }
                    r
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::counters::{Cast, Tally};
    use backend::partition::{PartitionConfig, Role};

    #[test]
    fn counters_render_as_node_exporter_names_with_a_partition_label() {
        let mk = |id: usize, role| {
            Arc::new(Partition::new(
                id,
                role,
                PartitionConfig {
                    mac: backend::mac::MacAddr([2, 0, 0, 0, 0, id as u8]),
                    queue_pairs: 1,
                    queue_size: 256,
                    mtu: 1500,
                },
            ))
        };
        let sw = Arc::new(Switch::new(vec![mk(0, Role::Pf), mk(1, Role::Vf(0))]).unwrap());
        let mut t = Tally::default();
        t.count(100, Cast::Unicast);
        t.count(60, Cast::Broadcast);
        t.drop(DropReason::SpoofedSource);
        sw.partitions()[1].queue_counters(0).add_tx(&t);
        let text = render(&sw);
        for line in [
            "vhost_sriov_network_transmit_bytes_total{partition=\"vf0\"} 160",
            "vhost_sriov_network_transmit_packets_total{partition=\"vf0\"} 2",
            "vhost_sriov_network_transmit_broadcast_total{partition=\"vf0\"} 1",
            "vhost_sriov_network_transmit_drop_total{partition=\"vf0\"} 1",
            "vhost_sriov_drops_total{partition=\"vf0\",reason=\"spoofed_source\"} 1",
            "vhost_sriov_network_receive_bytes_total{partition=\"pf\"} 0",
            "vhost_sriov_network_up{partition=\"pf\"} 1",
            "vhost_sriov_started{partition=\"vf0\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
