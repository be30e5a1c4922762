//! The process part of the spec: args, env, user, capabilities, oom_score_adj.

use std::collections::HashSet;
use std::str::FromStr;

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext};
use oci_spec::runtime::{Capability, LinuxCapabilities, User};

use crate::error::{Error, Result};
use crate::image::record::ImageRuntimeConfig;

/// Annotation carrying a user given by name; berth-shim resolves it against the rootfs' /etc/passwd.
pub const USER_ANNOTATION: &str = "io.berth.user";

/// PATH for images that set none (containerd's default).
pub(super) const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's and containerd's default capability set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability oci-spec knows, in kernel bit order (index = bit number in a capability mask).
pub(super) const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Kubernetes' command rules: `command` replaces the image Entrypoint and drops its Cmd; `args` replace Cmd.
/// `None` when nothing is left to run.
pub fn process_args(config: &ContainerConfig, image: &ImageRuntimeConfig) -> Option<Vec<String>> {
    let mut out = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        out.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        out.extend(image.cmd.iter().cloned());
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// HOSTNAME, then the image's Env (PATH added when missing), overridden key by key by the CRI envs.
pub fn merge_env(hostname: &str, image_env: &[String], config: &ContainerConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        if let Some(slot) = out
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            *slot = entry;
        } else {
            out.push(entry);
        }
    };
    if !hostname.is_empty() {
        set(format!("HOSTNAME={hostname}"));
    }
    if !image_env.iter().any(|e| e.starts_with("PATH=")) {
        set(DEFAULT_PATH_ENV.to_string());
    }
    for entry in image_env {
        set(entry.clone());
    }
    for kv in &config.envs {
        set(format!("{}={}", kv.key, kv.value));
    }
    out
}

/// The process user. Numeric `uid:gid` goes straight into the spec. Anything that needs the image's
/// /etc/passwd — a name, or a uid without a gid (its gid comes from its passwd entry, else 0, as in
/// containerd) — is handed to the shim as the annotation value (second element); uid/gid stay 0 meanwhile.
pub fn container_user(
    sec: &LinuxContainerSecurityContext,
    image_user: &str,
) -> Result<(User, Option<String>)> {
    let to_u32 = |what: &str, v: i64| -> Result<u32> {
        u32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} is out of range")))
    };
    let group = sec
        .run_as_group
        .as_ref()
        .map(|g| to_u32("run_as_group", g.value))
        .transpose()?;
    if let (Some(gid), None, true) = (group, &sec.run_as_user, sec.run_as_username.is_empty()) {
        // As containerd: a group alone would silently run the image's user with a foreign group.
        return Err(Error::InvalidArgument(format!(
            "run_as_group {gid} is specified without run_as_user or run_as_username"
        )));
    }
    let mut user = User::default();
    let mut by_name = None;
    if let Some(uid) = &sec.run_as_user {
        let uid = to_u32("run_as_user", uid.value)?;
        match group {
            Some(gid) => {
                user.set_uid(uid);
                user.set_gid(gid);
            }
            None => by_name = Some(uid.to_string()),
        }
    } else if !sec.run_as_username.is_empty() {
        by_name = Some(match group {
            Some(g) => format!("{}:{g}", sec.run_as_username),
            None => sec.run_as_username.clone(),
        });
    } else if !image_user.is_empty() {
        let (u, g) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        match (u.parse::<u32>(), g.map(str::parse::<u32>)) {
            (Ok(uid), Some(Ok(gid))) => {
                user.set_uid(uid);
                user.set_gid(gid);
            }
            _ => by_name = Some(image_user.to_string()),
        }
    }
    if !sec.supplemental_groups.is_empty() {
        let gids = sec
            .supplemental_groups
            .iter()
            .map(|g| to_u32("supplemental group", *g))
            .collect::<Result<Vec<_>>>()?;
        user.set_additional_gids(Some(gids));
    }
    Ok((user, by_name))
}

fn parse_capability(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare)
        .map_err(|_| Error::InvalidArgument(format!("unknown capability {name:?}")))
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

/// The capabilities of a capability mask (e.g. `CapBnd` of /proc/self/status).
pub fn capabilities_from_mask(mask: u64) -> HashSet<Capability> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .filter_map(|(_, c)| Capability::from_str(c).ok())
        .collect()
}

/// The capability set, in containerd's order: the defaults (privileged: everything berthd itself may
/// hold, `current`), add "ALL" → `current`, drop "ALL" → none, then individual adds, then individual
/// drops. Capabilities outside `current` are left out with a warning: no container can get them.
pub fn capability_set(
    sec: &LinuxContainerSecurityContext,
    current: &HashSet<Capability>,
) -> Result<HashSet<Capability>> {
    if sec.privileged {
        return Ok(current.clone());
    }
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| parse_capability(c))
        .collect::<Result<_>>()?;
    let (add, drop) = match &sec.capabilities {
        Some(c) => (c.add_capabilities.clone(), c.drop_capabilities.clone()),
        None => (Vec::new(), Vec::new()),
    };
    if add.iter().any(|c| is_all(c)) {
        caps = current.clone();
    }
    if drop.iter().any(|c| is_all(c)) {
        caps.clear();
    }
    for c in add.iter().filter(|c| !is_all(c)) {
        caps.insert(parse_capability(c)?);
    }
    for c in drop.iter().filter(|c| !is_all(c)) {
        caps.remove(&parse_capability(c)?);
    }
    let unavailable: Vec<String> = caps
        .iter()
        .filter(|c| !current.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !unavailable.is_empty() {
        tracing::warn!(
            ?unavailable,
            "capabilities outside berthd's bounding set left out"
        );
        caps.retain(|c| current.contains(c));
    }
    Ok(caps)
}

pub(super) fn capabilities(
    sec: &LinuxContainerSecurityContext,
    current: &HashSet<Capability>,
) -> Result<LinuxCapabilities> {
    let set = capability_set(sec, current)?;
    let mut caps = LinuxCapabilities::default();
    // Ambient capabilities must also be permitted and inheritable.
    let ambient: HashSet<Capability> = match &sec.capabilities {
        Some(c) => c
            .add_ambient_capabilities
            .iter()
            .map(|c| parse_capability(c))
            .collect::<Result<HashSet<_>>>()?
            .into_iter()
            .filter(|c| set.contains(c))
            .collect(),
        None => HashSet::new(),
    };
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    if ambient.is_empty() {
        caps.set_inheritable(None);
        caps.set_ambient(None);
    } else {
        caps.set_inheritable(Some(ambient.clone()));
        caps.set_ambient(Some(ambient));
    }
    Ok(caps)
}

/// oom_score_adj for the process: this host's root cannot lower it below 0, so negatives become 0.
pub fn oom_score_adj(requested: i64) -> Option<i32> {
    if requested == 0 {
        return None;
    }
    let clamped = requested.clamp(0, 1000);
    if requested < 0 {
        tracing::info!(
            requested,
            "negative oom_score_adj clamped to 0: root cannot lower it on this host"
        );
    }
    i32::try_from(clamped).ok()
}
