//! Reading pod addresses out of a CNI result (spec 0.1/0.2 `ip4`/`ip6`, 0.3+ `ips`).

use std::net::IpAddr;

use serde_json::Value;

/// The pod's addresses, without prefix length, IPv4 first, each once.
pub fn pod_ips(result: &Value) -> Vec<IpAddr> {
    let mut cidrs: Vec<&str> = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            // Addresses on the host side of a veth (interface index pointing at a host interface) are
            // not the pod's; CNI marks the pod's interfaces with a `sandbox` path.
            if let Some(idx) = ip.get("interface").and_then(Value::as_u64) {
                let iface = usize::try_from(idx)
                    .ok()
                    .and_then(|i| result.get("interfaces")?.get(i));
                if let Some(iface) = iface {
                    if iface
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        continue;
                    }
                }
            }
            if let Some(addr) = ip.get("address").and_then(Value::as_str) {
                cidrs.push(addr);
            }
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(addr) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            cidrs.push(addr);
        }
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for cidr in cidrs {
        let addr = cidr.split('/').next().unwrap_or(cidr);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    // Stable: keeps the plugin's order within each family.
    out.sort_by_key(|ip| ip.is_ipv6());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v1_result_ipv4_first_and_host_side_skipped() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "br0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.0.0.1/24", "interface": 0},
                {"address": "10.0.0.5/24", "interface": 2, "gateway": "10.0.0.1"}
            ]
        });
        let ips: Vec<String> = pod_ips(&result).iter().map(ToString::to_string).collect();
        assert_eq!(ips, vec!["10.0.0.5", "fd00::5"]);
    }

    #[test]
    fn ips_without_interfaces_and_old_format() {
        assert_eq!(
            pod_ips(&json!({"ips": [{"address": "10.1.2.3/16"}]}))[0].to_string(),
            "10.1.2.3"
        );
        let old =
            json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.4.0.2/24"}, "ip6": {"ip": "fd::2/64"}});
        let ips: Vec<String> = pod_ips(&old).iter().map(ToString::to_string).collect();
        assert_eq!(ips, vec!["10.4.0.2", "fd::2"]);
        assert!(pod_ips(&json!({})).is_empty());
        assert!(pod_ips(&json!({"ips": [{"address": "garbage"}]})).is_empty());
    }
}
