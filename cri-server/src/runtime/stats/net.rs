//! Network counters of a pod: `/proc/thread-self/net/dev` read inside the pod's network
//! namespace (by a thread of its own, see [`crate::network::netns`]).

use std::path::Path;

use crate::error::{Error, Result};
use crate::network::netns::{spawn_in, thread_died};

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped while sending.
    pub tx_dropped: u64,
}

/// The counters of every interface in the network namespace pinned at `netns`. Blocking: spawns a thread
/// and joins it.
pub fn read_netns(netns: &Path) -> Result<Vec<InterfaceCounters>> {
    let rx = spawn_in(netns, "netns-stats", || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })?;
    let text = rx
        .blocking_recv()
        .map_err(|_| thread_died(netns))?
        .map_err(|e| {
            Error::io(
                format!(
                    "network namespace {}: reading /proc/thread-self/net/dev",
                    netns.display()
                ),
                e,
            )
        })?;
    Ok(parse_net_dev(&text))
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs ... tx_bytes
/// tx_packets tx_errs ...` (8 receive and 8 transmit columns).
pub fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let cols: Vec<u64> = rest
                .split_whitespace()
                .map(|c| c.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            if cols.len() < 16 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: cols[0],
                rx_packets: cols[1],
                rx_errors: cols[2],
                rx_dropped: cols[3],
                tx_bytes: cols[8],
                tx_packets: cols[9],
                tx_errors: cols[10],
                tx_dropped: cols[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    5000      40    3    4    0     0          0         0     7000      50    1    6    0     0       0          0
";

    #[test]
    fn parses_proc_net_dev() {
        let ifs = parse_net_dev(SAMPLE);
        assert_eq!(ifs.len(), 2);
        assert_eq!(
            ifs[1],
            InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 3,
                rx_dropped: 4,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 1,
                tx_dropped: 6,
            }
        );
    }

    #[test]
    fn reads_the_host_namespace_through_a_pin() {
        // Our own namespace, reached the same way as a pod's pin: lo is always there.
        let ifs = read_netns(Path::new("/proc/self/ns/net")).unwrap();
        assert!(ifs.iter().any(|i| i.name == "lo"), "{ifs:?}");
    }
}
