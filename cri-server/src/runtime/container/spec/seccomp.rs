//! Seccomp for containers: which profile the CRI asks for, berth's built-in RuntimeDefault
//! profile, and Localhost profile files, all turned into the OCI `linux.seccomp` the shim applies.
//!
//! Selection follows containerd's CRI plugin: the `seccomp` SecurityProfile wins over the
//! deprecated `seccomp_profile_path`; when neither is set the container is unconfined (the kubelet
//! always sends a profile, Unconfined unless `SeccompDefault` is on); privileged containers are
//! always unconfined.
//!
//! The RuntimeDefault profile has the same effect as moby's/containerd's default: everything not
//! listed fails with EPERM, a fixed allowlist is open to everyone, and some syscalls open only when
//! the container holds the capability that makes them useful (mount needs CAP_SYS_ADMIN, reboot
//! CAP_SYS_BOOT, ...). The filter covers the host architecture and its compat ABIs.

mod default_profile;
mod profile_file;

use std::collections::HashSet;
use std::path::PathBuf;

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{LinuxContainerSecurityContext, SecurityProfile};
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall,
};

use crate::error::{Error, Result};

/// Prefix of a Localhost profile in the deprecated `seccomp_profile_path` field.
const LOCALHOST_PREFIX: &str = "localhost/";

/// The seccomp profile a container runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompProfile {
    /// No filter at all.
    Unconfined,
    /// berth's built-in default profile.
    RuntimeDefault,
    /// A JSON profile file on the node (absolute path).
    Localhost(PathBuf),
}

/// Picks the profile for a container from its CRI security context, as containerd does.
#[allow(deprecated)] // seccomp_profile_path is deprecated in the CRI but kubelets still send it
pub fn select_profile(sec: &LinuxContainerSecurityContext) -> Result<SeccompProfile> {
    let requested = match &sec.seccomp {
        Some(profile) => Some(profile.clone()),
        None if sec.seccomp_profile_path.is_empty() => None,
        None => Some(profile_from_path(&sec.seccomp_profile_path)?),
    };
    if sec.privileged {
        return Ok(SeccompProfile::Unconfined);
    }
    match requested {
        None => Ok(SeccompProfile::Unconfined),
        Some(profile) => from_security_profile(&profile),
    }
}

/// The deprecated path syntax: "runtime/default", "docker/default", "unconfined", "localhost/<path>".
fn profile_from_path(path: &str) -> Result<SecurityProfile> {
    let (profile_type, localhost_ref) = match path {
        "runtime/default" | "docker/default" => (ProfileType::RuntimeDefault, String::new()),
        "unconfined" => (ProfileType::Unconfined, String::new()),
        other => match other.strip_prefix(LOCALHOST_PREFIX) {
            Some(file) => (ProfileType::Localhost, file.to_string()),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "invalid seccomp profile {other:?}: want runtime/default, unconfined or \
                     localhost/<path>"
                )))
            }
        },
    };
    Ok(SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    })
}

fn from_security_profile(profile: &SecurityProfile) -> Result<SeccompProfile> {
    let profile_type = ProfileType::try_from(profile.profile_type).map_err(|_| {
        Error::InvalidArgument(format!(
            "unknown seccomp profile type {}",
            profile.profile_type
        ))
    })?;
    if profile_type != ProfileType::Localhost && !profile.localhost_ref.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "seccomp localhost_ref {:?} is only allowed with profile type Localhost",
            profile.localhost_ref
        )));
    }
    match profile_type {
        ProfileType::Unconfined => Ok(SeccompProfile::Unconfined),
        ProfileType::RuntimeDefault => Ok(SeccompProfile::RuntimeDefault),
        ProfileType::Localhost => {
            let file = profile
                .localhost_ref
                .strip_prefix(LOCALHOST_PREFIX)
                .unwrap_or(&profile.localhost_ref);
            if file.is_empty() {
                return Err(Error::InvalidArgument(
                    "seccomp profile type Localhost needs a localhost_ref".into(),
                ));
            }
            let path = PathBuf::from(file);
            if !path.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "seccomp localhost profile {file:?} is not an absolute path"
                )));
            }
            Ok(SeccompProfile::Localhost(path))
        }
    }
}

/// The OCI seccomp section for a container; `None` when it runs unconfined. `capabilities` is the
/// container's bounding set: the default profile opens capability-gated syscalls from it, and so do
/// the `includes`/`excludes` of a docker-format Localhost profile.
pub fn container_seccomp(
    sec: &LinuxContainerSecurityContext,
    capabilities: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>> {
    match select_profile(sec)? {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => Ok(Some(default_profile::runtime_default(
            &Host::current(),
            capabilities,
        )?)),
        SeccompProfile::Localhost(path) => Ok(Some(profile_file::load_localhost(
            &path,
            &Host::current(),
            capabilities,
        )?)),
    }
}

/// Host facts the profiles depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Host {
    /// Architecture in Go/docker naming ("amd64", "arm64", ...), as profile `arches` use it.
    arch: &'static str,
    /// Kernel (major, minor); (0, 0) when unknown, which fails every `minKernel`.
    kernel: (u32, u32),
}

impl Host {
    fn current() -> Host {
        let kernel = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| u.release().to_str().and_then(parse_kernel))
            .unwrap_or((0, 0));
        Host {
            arch: go_arch(),
            kernel,
        }
    }

    /// The seccomp architectures a filter for this host covers: native first, then compat ABIs.
    fn seccomp_arches(&self) -> Vec<Arch> {
        match self.arch {
            "amd64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
            "arm64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
            "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
            "ppc64le" => vec![Arch::ScmpArchPpc64le],
            "riscv64" => vec![Arch::ScmpArchRiscv64],
            "loong64" => vec![Arch::ScmpArchLoongarch64],
            "386" => vec![Arch::ScmpArchX86],
            "arm" => vec![Arch::ScmpArchArm],
            _ => vec![Arch::ScmpArchNative],
        }
    }
}

/// This build's architecture in Go naming (what docker profiles write in `includes.arches`).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// "6.1.0-18-amd64" → (6, 1).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a rule's conditions hold for this host and container.
fn applies(
    host: &Host,
    held: &HashSet<Capability>,
    arches: &[&str],
    not_arches: &[&str],
    caps: &[Capability],
    not_caps: &[Capability],
    min_kernel: Option<(u32, u32)>,
) -> bool {
    (arches.is_empty() || arches.contains(&host.arch))
        && !not_arches.contains(&host.arch)
        && caps.iter().all(|c| held.contains(c))
        && !not_caps.iter().any(|c| held.contains(c))
        && min_kernel.is_none_or(|min| host.kernel >= min)
}

/// One OCI syscall rule.
fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names);
    s.set_action(action);
    s.set_errno_ret(errno);
    s.set_args(args);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec_with(
        seccomp: Option<SecurityProfile>,
        path: &str,
        privileged: bool,
    ) -> LinuxContainerSecurityContext {
        #[allow(deprecated)]
        LinuxContainerSecurityContext {
            seccomp,
            seccomp_profile_path: path.into(),
            privileged,
            ..Default::default()
        }
    }

    fn profile(t: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
        Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: localhost_ref.into(),
        })
    }

    fn pick(seccomp: Option<SecurityProfile>, path: &str) -> Result<SeccompProfile> {
        select_profile(&sec_with(seccomp, path, false))
    }

    #[test]
    fn selection_follows_containerd() {
        use SeccompProfile::*;
        assert_eq!(pick(None, "").unwrap(), Unconfined, "nothing set");
        assert_eq!(pick(None, "runtime/default").unwrap(), RuntimeDefault);
        assert_eq!(pick(None, "docker/default").unwrap(), RuntimeDefault);
        assert_eq!(pick(None, "unconfined").unwrap(), Unconfined);
        assert_eq!(
            pick(None, "localhost//etc/p.json").unwrap(),
            Localhost("/etc/p.json".into())
        );
        let default = profile(ProfileType::RuntimeDefault, "");
        assert_eq!(pick(default.clone(), "").unwrap(), RuntimeDefault);
        // The SecurityProfile wins over the deprecated path.
        assert_eq!(pick(default, "unconfined").unwrap(), RuntimeDefault);
        assert_eq!(
            pick(profile(ProfileType::Unconfined, ""), "runtime/default").unwrap(),
            Unconfined
        );
        assert_eq!(
            pick(profile(ProfileType::Localhost, "/p.json"), "").unwrap(),
            Localhost("/p.json".into())
        );
        assert_eq!(
            pick(profile(ProfileType::Localhost, "localhost//p.json"), "").unwrap(),
            Localhost("/p.json".into())
        );
        // Privileged containers are unconfined whatever they ask for.
        let sec = sec_with(profile(ProfileType::RuntimeDefault, ""), "", true);
        assert_eq!(select_profile(&sec).unwrap(), Unconfined);
        assert!(container_seccomp(&sec, &HashSet::new()).unwrap().is_none());
    }

    #[test]
    fn bad_requests_are_invalid_argument() {
        let bad = |r: Result<SeccompProfile>, want: &str| match r {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("want InvalidArgument({want}), got {other:?}"),
        };
        let unknown = Some(SecurityProfile {
            profile_type: 7,
            localhost_ref: String::new(),
        });
        bad(pick(unknown, ""), "unknown seccomp profile type 7");
        bad(pick(None, "bogus"), "invalid seccomp profile");
        bad(
            pick(profile(ProfileType::Localhost, ""), ""),
            "needs a localhost_ref",
        );
        bad(
            pick(profile(ProfileType::Localhost, "rel/p.json"), ""),
            "not an absolute path",
        );
        bad(pick(None, "localhost/rel.json"), "not an absolute path");
        bad(
            pick(profile(ProfileType::RuntimeDefault, "/p.json"), ""),
            "only allowed with profile type Localhost",
        );
    }

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_kernel("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("x"), None);
    }
}
