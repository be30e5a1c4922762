//! The files a pod's containers share: /etc/hostname, /etc/hosts, /etc/resolv.conf and the /dev/shm tmpfs.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{Error, Result};

/// DNS settings from the CRI `DnsConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

/// resolv.conf for `dns`; `None` when it sets nothing (the host's file is used then).
pub fn render_resolv_conf(dns: &Dns) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(out)
}

/// /etc/hosts of a pod with its own network: localhost entries and the pod's address for its hostname.
pub fn render_hosts(pod_ip: Option<&str>, hostname: &str) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// Writes a file, naming it in the error.
pub fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Copies a host file (e.g. /etc/hosts) for the pod; a missing host file gives an empty one.
pub fn copy_host_file(host: &Path, path: &Path) -> Result<()> {
    let contents = match std::fs::read_to_string(host) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", host.display()), e)),
    };
    write(path, &contents)
}

/// Mounts the pod's /dev/shm: a 64 MiB tmpfs, nosuid, nodev, noexec. Blocking (mount).
pub fn mount_shm(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        flags,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| {
        Error::io(
            format!("mounting the pod's shm at {}", path.display()),
            e.into(),
        )
    })
}

/// Unmounts the pod's /dev/shm (also every mount stacked on it) and deletes the directory; idempotent.
pub fn unmount_shm(path: &Path) -> Result<()> {
    snapshotter::unmount(path)?;
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        assert_eq!(render_resolv_conf(&Dns::default()), None);
        let dns = Dns {
            servers: vec!["10.96.0.10".into(), "8.8.8.8".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            render_resolv_conf(&dns).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
        let only_server = Dns {
            servers: vec!["1.1.1.1".into()],
            ..Dns::default()
        };
        assert_eq!(
            render_resolv_conf(&only_server).unwrap(),
            "nameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn hosts_has_localhost_and_pod_entry() {
        let hosts = render_hosts(Some("10.88.0.5"), "web-0");
        assert!(
            hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        );
        assert!(hosts.ends_with("10.88.0.5\tweb-0\n"));
        assert!(!render_hosts(None, "web-0").contains("web-0"));
    }

    #[test]
    fn shm_mount_round_trip() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let shm = dir.path().join("shm");
        mount_shm(&shm).unwrap();
        let stat = nix::sys::statfs::statfs(&shm).unwrap();
        assert_eq!(stat.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        unmount_shm(&shm).unwrap();
        assert!(!shm.exists());
        unmount_shm(&shm).unwrap();
        copy_host_file(Path::new("/nonexistent/hosts"), &dir.path().join("h")).unwrap();
    }
}
