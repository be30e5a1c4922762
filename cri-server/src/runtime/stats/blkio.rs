//! Block I/O of a cgroup per device: bytes and operations by kind (`Read`, `Write`, ...), from v1
//! `blkio.*io_service_bytes_recursive` / `blkio.*io_serviced_recursive` (BFQ, then CFQ, then throttle
//! counters, the first that lists a device, as runc does) or v2 `io.stat` (`rbytes`/`rios` → `Read`,
//! `wbytes`/`wios` → `Write`, `dbytes`/`dios` → `Discard`). Devices are named `/dev/<DEVNAME>` from
//! sysfs, else `<major>:<minor>`. A cgroup without I/O accounting has no devices.

use std::collections::BTreeMap;
use std::path::Path;

use crate::runtime::cgroup::CgroupLayout;

/// v1 counter file pairs (bytes, operations), in the order they are tried.
const V1_FILES: [(&str, &str); 3] = [
    (
        "blkio.bfq.io_service_bytes_recursive",
        "blkio.bfq.io_serviced_recursive",
    ),
    (
        "blkio.io_service_bytes_recursive",
        "blkio.io_serviced_recursive",
    ),
    (
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_serviced_recursive",
    ),
];

/// One device's I/O counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// `/dev/<name>`, or `<major>:<minor>` when sysfs does not name it.
    pub device: String,
    /// Bytes by operation.
    pub bytes: BTreeMap<String, u64>,
    /// Completed operations by operation.
    pub ios: BTreeMap<String, u64>,
}

/// Reads the I/O counters of cgroup `rel` (relative to the cgroup root). Blocking.
pub fn read(layout: &CgroupLayout, rel: &str) -> Vec<DeviceIo> {
    if rel.trim_start_matches('/').is_empty() {
        return Vec::new();
    }
    let mut devices = if layout.is_v2() {
        layout
            .controller_dir("io", rel)
            .and_then(|d| std::fs::read_to_string(d.join("io.stat")).ok())
            .map(|text| parse_io_stat(&text))
            .unwrap_or_default()
    } else {
        layout
            .controller_dir("blkio", rel)
            .map(|d| read_v1(&d))
            .unwrap_or_default()
    };
    for d in &mut devices {
        d.device = device_name(d.major, d.minor);
    }
    devices
}

fn read_v1(dir: &Path) -> Vec<DeviceIo> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    V1_FILES
        .iter()
        .map(|(bytes, ios)| parse_v1(&read(bytes), &read(ios)))
        .find(|devices| !devices.is_empty())
        .unwrap_or_default()
}

/// Parses v1 `<major>:<minor> <Operation> <value>` lines of a bytes and an operations file (the
/// closing `Total <n>` line has no device and is skipped).
fn parse_v1(bytes: &str, ios: &str) -> Vec<DeviceIo> {
    let mut devices: BTreeMap<(u32, u32), DeviceIo> = BTreeMap::new();
    for (text, is_bytes) in [(bytes, true), (ios, false)] {
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(dev), Some(op), Some(value), None) = (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let (Some((major, minor)), Ok(value)) = (parse_dev(dev), value.parse::<u64>()) else {
                continue;
            };
            let d = devices.entry((major, minor)).or_insert_with(|| DeviceIo {
                major,
                minor,
                ..Default::default()
            });
            let map = if is_bytes { &mut d.bytes } else { &mut d.ios };
            map.insert(op.to_string(), value);
        }
    }
    devices.into_values().collect()
}

/// Parses v2 `io.stat`: `<major>:<minor> rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…` per line.
fn parse_io_stat(text: &str) -> Vec<DeviceIo> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (major, minor) = parse_dev(f.next()?)?;
            let mut d = DeviceIo {
                major,
                minor,
                ..Default::default()
            };
            for kv in f {
                let Some((key, value)) = kv.split_once('=') else {
                    continue;
                };
                let Ok(value) = value.parse::<u64>() else {
                    continue;
                };
                let (map, op) = match key {
                    "rbytes" => (&mut d.bytes, "Read"),
                    "wbytes" => (&mut d.bytes, "Write"),
                    "dbytes" => (&mut d.bytes, "Discard"),
                    "rios" => (&mut d.ios, "Read"),
                    "wios" => (&mut d.ios, "Write"),
                    "dios" => (&mut d.ios, "Discard"),
                    _ => continue,
                };
                map.insert(op.to_string(), value);
            }
            Some(d)
        })
        .collect()
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `/dev/<DEVNAME>` from `/sys/dev/block/<major>:<minor>/uevent`, else `<major>:<minor>`.
fn device_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|text| devname(&text))
        .map(|name| format!("/dev/{name}"))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

fn devname(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_BYTES: &str = "\
8:0 Read 4096
8:0 Write 12288
8:0 Sync 16384
8:0 Async 0
8:0 Discard 0
8:0 Total 16384
253:1 Read 512
Total 16896
";
    const V1_IOS: &str = "8:0 Read 1\n8:0 Write 3\n8:0 Total 4\nTotal 4\n";

    #[test]
    fn parses_v1_counters() {
        let d = parse_v1(V1_BYTES, V1_IOS);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].major, d[0].minor), (8, 0));
        assert_eq!(d[0].bytes.get("Read"), Some(&4096));
        assert_eq!(d[0].bytes.get("Write"), Some(&12288));
        assert_eq!(d[0].bytes.len(), 6);
        assert_eq!(d[0].ios.get("Write"), Some(&3));
        assert_eq!((d[1].major, d[1].minor), (253, 1));
        assert!(d[1].ios.is_empty());
        // No device lines: nothing (the root of a host without accounting prints only "Total 0").
        assert!(parse_v1("Total 0\n", "Total 0\n").is_empty());
    }

    #[test]
    fn v1_takes_the_first_file_pair_with_devices() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(V1_FILES[0].0), "Total 0\n").unwrap();
        std::fs::write(tmp.path().join(V1_FILES[2].0), V1_BYTES).unwrap();
        std::fs::write(tmp.path().join(V1_FILES[2].1), V1_IOS).unwrap();
        let d = read_v1(tmp.path());
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].ios.get("Read"), Some(&1));
    }

    #[test]
    fn parses_v2_io_stat() {
        let d = parse_io_stat(
            "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
             253:0 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0 cost.vrate=100\n",
        );
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].major, d[0].minor), (8, 16));
        assert_eq!(d[0].bytes.get("Read"), Some(&1_459_200));
        assert_eq!(d[0].bytes.get("Write"), Some(&314_773_504));
        assert_eq!(d[0].ios.get("Read"), Some(&192));
        assert_eq!(d[0].ios.get("Write"), Some(&353));
        assert_eq!(d[0].bytes.get("Discard"), Some(&0));
        assert_eq!(d[1].bytes.len(), 3);
    }

    #[test]
    fn device_names() {
        assert_eq!(
            devname("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n"),
            Some("sda".into())
        );
        assert_eq!(devname("MAJOR=8\n"), None);
        // No such device: the numbers.
        assert_eq!(device_name(4095, 4095), "4095:4095");
    }
}
