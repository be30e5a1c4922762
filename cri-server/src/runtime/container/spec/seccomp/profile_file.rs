//! Localhost seccomp profile files: the OCI `linux.seccomp` JSON, or docker's format with
//! `archMap` and per-rule `includes`/`excludes` resolved here for this host and container.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
};
use serde::Deserialize;

use super::{applies, parse_kernel, syscall, Host};
use crate::error::{Error, Result};

/// A seccomp profile file: the OCI `linux.seccomp` object, or docker's format (`archMap`, per-rule
/// `includes`/`excludes`, the old single `name`). Unknown fields (e.g. `comment`) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMapEntry>>,
    #[serde(default)]
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default)]
    listener_path: Option<PathBuf>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<FileSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileSyscall {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Option<FileFilter>,
    #[serde(default)]
    excludes: Option<FileFilter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileFilter {
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// A capability named in a profile ("CAP_SYS_ADMIN"); names berth does not know never match.
fn parse_cap(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    Capability::from_str(upper.strip_prefix("CAP_").unwrap_or(&upper)).ok()
}

/// Reads a Localhost profile file. Missing, unreadable or malformed files are InvalidArgument.
pub(super) fn load_localhost(
    path: &Path,
    host: &Host,
    capabilities: &HashSet<Capability>,
) -> Result<LinuxSeccomp> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "seccomp localhost profile {shown}: cannot read: {e}"
        ))
    })?;
    parse_profile(&text, host, capabilities).map_err(|problem| {
        Error::InvalidArgument(format!("seccomp localhost profile {shown}: {problem}"))
    })
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Turns profile JSON into the OCI section for this host and container; errors are the problem.
fn parse_profile(
    text: &str,
    host: &Host,
    capabilities: &HashSet<Capability>,
) -> std::result::Result<LinuxSeccomp, String> {
    let file: ProfileFile =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON profile: {e}"))?;
    let architectures = match (&file.arch_map, file.architectures) {
        (Some(map), _) if !map.is_empty() => {
            let native = host.seccomp_arches().first().copied();
            let mut out = Vec::new();
            for entry in map.iter().filter(|e| Some(e.architecture) == native) {
                out.push(entry.architecture);
                out.extend(entry.sub_architectures.iter().flatten().copied());
            }
            (!out.is_empty()).then_some(out)
        }
        (_, given) => given,
    };
    let mut syscalls = Vec::new();
    for (i, entry) in file.syscalls.into_iter().flatten().enumerate() {
        let mut names = entry.names.unwrap_or_default();
        names.extend(entry.name);
        if names.is_empty() {
            return Err(format!("syscalls[{i}] names no syscall"));
        }
        let empty = FileFilter::default();
        let inc = entry.includes.as_ref().unwrap_or(&empty);
        let exc = entry.excludes.as_ref().unwrap_or(&empty);
        let min_kernel = match &inc.min_kernel {
            Some(v) => Some(
                parse_kernel(v).ok_or_else(|| format!("syscalls[{i}]: invalid minKernel {v:?}"))?,
            ),
            None => None,
        };
        let strs = |v: &Option<Vec<String>>| -> Vec<String> { v.clone().unwrap_or_default() };
        let (inc_arches, exc_arches) = (strs(&inc.arches), strs(&exc.arches));
        // A required capability berth does not know is never held.
        let inc_caps: Vec<String> = strs(&inc.caps);
        if inc_caps.iter().any(|c| parse_cap(c).is_none()) {
            continue;
        }
        let inc_caps: Vec<Capability> = inc_caps.iter().filter_map(|c| parse_cap(c)).collect();
        let exc_caps: Vec<Capability> = strs(&exc.caps)
            .iter()
            .filter_map(|c| parse_cap(c))
            .collect();
        if !applies(
            host,
            capabilities,
            &str_refs(&inc_arches),
            &str_refs(&exc_arches),
            &inc_caps,
            &exc_caps,
            min_kernel,
        ) {
            continue;
        }
        syscalls.push(syscall(names, entry.action, entry.errno_ret, entry.args));
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(file.default_action);
    seccomp.set_default_errno_ret(file.default_errno_ret);
    seccomp.set_architectures(architectures);
    seccomp.set_flags(file.flags);
    seccomp.set_listener_path(file.listener_path);
    seccomp.set_listener_metadata(file.listener_metadata);
    seccomp.set_syscalls(if syscalls.is_empty() {
        None
    } else {
        Some(syscalls)
    });
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD64: Host = Host {
        arch: "amd64",
        kernel: (6, 1),
    };

    fn caps(names: &[Capability]) -> HashSet<Capability> {
        names.iter().copied().collect()
    }

    #[test]
    fn oci_profile_file() {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}
            ]
        }"#;
        let p = parse_profile(text, &AMD64, &HashSet::new()).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..])
        );
        let calls = p.syscalls().as_ref().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].names(), &["mkdir", "mkdirat"]);
        assert_eq!(calls[0].errno_ret(), Some(1));
        assert_eq!(calls[1].args().as_ref().unwrap()[0].value(), 40);
    }

    #[test]
    fn docker_profile_file() {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
            ],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "", "args": null},
                {"name": "write", "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["amd64"]}},
                {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["arm64"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"minKernel": "4.8"}},
                {"names": ["future"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_FROM_THE_FUTURE"]}}
            ]
        }"#;
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .iter()
                .flatten()
                .flat_map(|s| s.names().clone())
                .collect()
        };
        let p = parse_profile(text, &AMD64, &HashSet::new()).unwrap();
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            names(&p),
            ["read", "write", "arch_prctl", "clone", "ptrace"]
        );
        let admin = parse_profile(text, &AMD64, &caps(&[Capability::SysAdmin])).unwrap();
        assert_eq!(
            names(&admin),
            ["read", "write", "mount", "arch_prctl", "ptrace"]
        );
    }

    #[test]
    fn bad_localhost_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = |path: &Path| match load_localhost(path, &AMD64, &HashSet::new()) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("want InvalidArgument, got {other:?}"),
        };
        let missing = dir.path().join("missing.json");
        let m = err(&missing);
        assert!(
            m.contains(&missing.display().to_string()) && m.contains("cannot read"),
            "{m}"
        );
        let cases = [
            ("garbage.json", "not json", "invalid JSON"),
            ("noaction.json", r#"{"syscalls": []}"#, "defaultAction"),
            (
                "badaction.json",
                r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#,
                "invalid JSON",
            ),
            (
                "noname.json",
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
                "names no syscall",
            ),
        ];
        for (file, text, want) in cases {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            let m = err(&path);
            assert!(
                m.contains(want) && m.contains(&path.display().to_string()),
                "{file}: {m}"
            );
        }
    }
}
