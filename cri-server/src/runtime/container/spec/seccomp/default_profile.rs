//! berth's RuntimeDefault seccomp profile as data: allowlists grouped by what the calls do, and
//! rules that depend on the host architecture, the kernel or the container's capabilities. Same
//! effect as moby's default profile (profiles/seccomp/default.json), kept in berth's own shape.

use std::collections::HashSet;

use oci_spec::runtime::{
    Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
};

use super::{applies, syscall, Host};
use crate::error::{Error, Result};

/// When a rule applies. Empty lists and `None` mean "no condition".
#[derive(Debug, Clone, Copy)]
struct When {
    /// The host arch must be one of these.
    arches: &'static [&'static str],
    /// The host arch must not be one of these.
    not_arches: &'static [&'static str],
    /// The container must hold this capability.
    cap: Option<Capability>,
    /// The container must not hold this capability.
    not_cap: Option<Capability>,
    /// The kernel must be at least this (major, minor).
    min_kernel: Option<(u32, u32)>,
}

const ALWAYS: When = When {
    arches: &[],
    not_arches: &[],
    cap: None,
    not_cap: None,
    min_kernel: None,
};

const fn with_cap(cap: Capability) -> When {
    When {
        cap: Some(cap),
        ..ALWAYS
    }
}

const fn on(arches: &'static [&'static str]) -> When {
    When { arches, ..ALWAYS }
}

/// One entry of the built-in profile.
#[derive(Debug, Clone, Copy)]
struct Rule {
    names: &'static [&'static str],
    /// `None` allows; `Some(errno)` fails the call with that errno.
    errno: Option<u32>,
    /// One argument comparison: (index, value, operator).
    arg: Option<(usize, u64, LinuxSeccompOperator)>,
    when: When,
}

const fn allow(names: &'static [&'static str], when: When) -> Rule {
    Rule {
        names,
        errno: None,
        arg: None,
        when,
    }
}

const fn allow_arg(
    names: &'static [&'static str],
    arg: (usize, u64, LinuxSeccompOperator),
    when: When,
) -> Rule {
    Rule {
        names,
        errno: None,
        arg: Some(arg),
        when,
    }
}

/// Namespace-creating clone flags; without CAP_SYS_ADMIN clone may not pass any of them.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// personality(2) values a container may set: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26,
/// and 0xffffffff (query only).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

// The allowlist open to every container, grouped by what the calls do.
#[rustfmt::skip]
const FILES: &[&str] = &[
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "getxattrat",
    "ioctl", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "listxattrat",
    "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir",
    "mkdirat", "mknod", "mknodat", "name_to_handle_at", "newfstatat", "open", "openat", "openat2",
    "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "removexattr", "removexattrat", "rename", "renameat",
    "renameat2", "rmdir", "sendfile", "sendfile64", "setxattr", "setxattrat", "splice", "cachestat",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
];

#[rustfmt::skip]
const EVENTS_AND_AIO: &[&str] = &[
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "_newselect", "pipe", "pipe2", "poll",
    "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "io_setup", "io_submit", "ioprio_get", "ioprio_set",
];

#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap",
    "map_shadow_stack", "mseal", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
];

#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "vfork", "futex",
    "futex_time64", "futex_waitv", "futex_requeue", "futex_wait", "futex_wake", "getcpu", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "get_thread_area", "gettid", "getuid", "getuid32", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "pidfd_open", "pidfd_send_signal", "prctl",
    "prlimit64", "process_mrelease", "restart_syscall", "rseq", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "set_thread_area", "set_tid_address", "setuid", "setuid32",
    "sysinfo", "tgkill", "times", "tkill", "ugetrlimit", "uname", "uretprobe", "riscv_hwprobe",
    "listmount", "statmount", "wait4", "waitid", "waitpid",
];

#[rustfmt::skip]
const SIGNALS_AND_TIME: &[&str] = &[
    "alarm", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask", "sigreturn", "adjtimex", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep",
    "setitimer", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64",
];

#[rustfmt::skip]
const IPC_AND_NETWORK: &[&str] = &[
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
    "shmget", "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
];

/// Syscalls that administer the host or other namespaces: open only with CAP_SYS_ADMIN.
#[rustfmt::skip]
const SYS_ADMIN: &[&str] = &[
    "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
    "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
    "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
    "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
];

/// The built-in profile's rules beyond the plain allowlists.
const RULES: &[Rule] = &[
    // Since 4.8 ptrace can no longer be used to bypass seccomp, so it is open to everyone.
    allow(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        When {
            min_kernel: Some((4, 8)),
            ..ALWAYS
        },
    ),
    // Any socket family but AF_ALG (38) and AF_VSOCK (40).
    allow_arg(
        &["socket"],
        (0, 38, LinuxSeccompOperator::ScmpCmpLt),
        ALWAYS,
    ),
    allow_arg(&["socket"], (0, 39, EQ), ALWAYS),
    allow_arg(
        &["socket"],
        (0, 40, LinuxSeccompOperator::ScmpCmpGt),
        ALWAYS,
    ),
    allow_arg(&["personality"], (0, PERSONALITIES[0], EQ), ALWAYS),
    allow_arg(&["personality"], (0, PERSONALITIES[1], EQ), ALWAYS),
    allow_arg(&["personality"], (0, PERSONALITIES[2], EQ), ALWAYS),
    allow_arg(&["personality"], (0, PERSONALITIES[3], EQ), ALWAYS),
    allow_arg(&["personality"], (0, PERSONALITIES[4], EQ), ALWAYS),
    allow(&["sync_file_range2", "swapcontext"], on(&["ppc64le"])),
    allow(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        on(&["arm", "arm64"]),
    ),
    allow(&["arch_prctl"], on(&["amd64", "x32"])),
    allow(&["modify_ldt"], on(&["amd64", "x32", "x86"])),
    allow(
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        on(&["s390", "s390x"]),
    ),
    allow(&["riscv_flush_icache"], on(&["riscv64"])),
    allow(&["open_by_handle_at"], with_cap(Capability::DacReadSearch)),
    allow(SYS_ADMIN, with_cap(Capability::SysAdmin)),
    // Without CAP_SYS_ADMIN: clone without namespace flags (s390 swaps the first two arguments)...
    allow_arg(
        &["clone"],
        (0, CLONE_NAMESPACE_FLAGS, MASKED_EQ),
        When {
            not_cap: Some(Capability::SysAdmin),
            not_arches: &["s390", "s390x"],
            ..ALWAYS
        },
    ),
    allow_arg(
        &["clone"],
        (1, CLONE_NAMESPACE_FLAGS, MASKED_EQ),
        When {
            not_cap: Some(Capability::SysAdmin),
            arches: &["s390", "s390x"],
            ..ALWAYS
        },
    ),
    // ... and clone3, whose flags sit behind a pointer, says ENOSYS so libc falls back to clone.
    Rule {
        names: &["clone3"],
        errno: Some(libc::ENOSYS as u32),
        arg: None,
        when: When {
            not_cap: Some(Capability::SysAdmin),
            ..ALWAYS
        },
    },
    allow(&["reboot"], with_cap(Capability::SysBoot)),
    allow(&["chroot"], with_cap(Capability::SysChroot)),
    allow(
        &["delete_module", "init_module", "finit_module"],
        with_cap(Capability::SysModule),
    ),
    allow(&["acct"], with_cap(Capability::SysPacct)),
    allow(
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        with_cap(Capability::SysPtrace),
    ),
    allow(&["iopl", "ioperm"], with_cap(Capability::SysRawio)),
    allow(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        with_cap(Capability::SysTime),
    ),
    allow(&["vhangup"], with_cap(Capability::SysTtyConfig)),
    allow(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        with_cap(Capability::SysNice),
    ),
    allow(&["syslog"], with_cap(Capability::Syslog)),
    allow(&["bpf"], with_cap(Capability::Bpf)),
    allow(&["perf_event_open"], with_cap(Capability::Perfmon)),
];

const EQ: LinuxSeccompOperator = LinuxSeccompOperator::ScmpCmpEq;
const MASKED_EQ: LinuxSeccompOperator = LinuxSeccompOperator::ScmpCmpMaskedEq;

/// berth's RuntimeDefault profile for a container holding `capabilities` on `host`.
pub(super) fn runtime_default(
    host: &Host,
    capabilities: &HashSet<Capability>,
) -> Result<LinuxSeccomp> {
    let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let plain: Vec<String> = [
        FILES,
        EVENTS_AND_AIO,
        MEMORY,
        PROCESSES,
        SIGNALS_AND_TIME,
        IPC_AND_NETWORK,
    ]
    .concat()
    .iter()
    .map(|n| n.to_string())
    .collect();
    let mut syscalls = vec![syscall(plain, LinuxSeccompAction::ScmpActAllow, None, None)];
    for rule in RULES {
        let w = &rule.when;
        let caps: Vec<Capability> = w.cap.into_iter().collect();
        let not_caps: Vec<Capability> = w.not_cap.into_iter().collect();
        if !applies(
            host,
            capabilities,
            w.arches,
            w.not_arches,
            &caps,
            &not_caps,
            w.min_kernel,
        ) {
            continue;
        }
        let args = match rule.arg {
            Some((index, value, op)) => Some(vec![LinuxSeccompArgBuilder::default()
                .index(index)
                .value(value)
                .op(op)
                .build()
                .map_err(|e| Error::Internal(format!("default seccomp profile: {e}")))?]),
            None => None,
        };
        let (action, errno) = match rule.errno {
            None => (LinuxSeccompAction::ScmpActAllow, None),
            Some(e) => (LinuxSeccompAction::ScmpActErrno, Some(e)),
        };
        syscalls.push(syscall(owned(rule.names), action, errno, args));
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActErrno);
    seccomp.set_default_errno_ret(Some(libc::EPERM as u32));
    seccomp.set_architectures(Some(host.seccomp_arches()));
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Arch;

    fn dflt(host: &Host, capabilities: &HashSet<Capability>) -> LinuxSeccomp {
        runtime_default(host, capabilities).unwrap()
    }

    const AMD64: Host = Host {
        arch: "amd64",
        kernel: (6, 1),
    };

    /// Whether `name` is allowed unconditionally (no argument filter) by `seccomp`.
    fn allows(seccomp: &LinuxSeccomp, name: &str) -> bool {
        seccomp.syscalls().iter().flatten().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().as_ref().is_none_or(|a| a.is_empty())
                && s.names().iter().any(|n| n == name)
        })
    }

    fn caps(names: &[Capability]) -> HashSet<Capability> {
        names.iter().copied().collect()
    }

    #[test]
    fn default_profile_shape() {
        let p = dflt(&AMD64, &HashSet::new());
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(libc::EPERM as u32));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        let arm = Host {
            arch: "arm64",
            kernel: (6, 1),
        };
        let pa = dflt(&arm, &HashSet::new());
        assert_eq!(
            pa.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        for name in [
            "read",
            "write",
            "execve",
            "openat",
            "clock_gettime",
            "mkdir",
            "capset",
        ] {
            assert!(allows(&p, name), "{name}");
        }
        assert!(allows(&p, "arch_prctl") && !allows(&pa, "arch_prctl"));
        assert!(allows(&pa, "set_tls") && !allows(&p, "set_tls"));
        // ptrace is open to everyone only on kernels that stop it from bypassing seccomp.
        assert!(allows(&p, "ptrace"));
        let old = Host {
            arch: "amd64",
            kernel: (4, 4),
        };
        assert!(!allows(&dflt(&old, &HashSet::new()), "ptrace"));
        // No name in the allowlists appears twice.
        let all: Vec<&str> = [
            FILES,
            EVENTS_AND_AIO,
            MEMORY,
            PROCESSES,
            SIGNALS_AND_TIME,
            IPC_AND_NETWORK,
        ]
        .concat();
        let unique: HashSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
        // Serializes to the OCI JSON libcontainer reads.
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
    }

    #[test]
    fn capabilities_open_gated_syscalls() {
        let none = dflt(&AMD64, &HashSet::new());
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "reboot",
            "kcmp",
            "init_module",
        ] {
            assert!(!allows(&none, name), "{name} without capabilities");
        }
        // Without CAP_SYS_ADMIN clone is allowed only without namespace flags, clone3 says ENOSYS.
        let clone = none
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone"])
            .unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.op()),
            (0, 0x7E02_0000, MASKED_EQ)
        );
        let clone3 = none
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone3"])
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
        assert!(!allows(&none, "clone"));
        // personality is filtered by argument.
        let personalities = none
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names() == &["personality"])
            .count();
        assert_eq!(personalities, PERSONALITIES.len());

        let admin = dflt(&AMD64, &caps(&[Capability::SysAdmin]));
        for name in ["mount", "umount2", "unshare", "setns", "clone", "clone3"] {
            assert!(allows(&admin, name), "{name} with CAP_SYS_ADMIN");
        }
        assert!(!admin
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActErrno));
        assert!(!allows(&admin, "reboot"));
        let boot = dflt(&AMD64, &caps(&[Capability::SysBoot]));
        assert!(allows(&boot, "reboot") && !allows(&boot, "mount"));
        let ptrace = dflt(&AMD64, &caps(&[Capability::SysPtrace]));
        assert!(allows(&ptrace, "kcmp") && allows(&ptrace, "pidfd_getfd"));
        let chroot = dflt(&AMD64, &caps(&[Capability::SysChroot]));
        assert!(allows(&chroot, "chroot") && !allows(&none, "chroot"));
        let time = dflt(&AMD64, &caps(&[Capability::SysTime]));
        assert!(allows(&time, "settimeofday") && !allows(&none, "settimeofday"));
    }
}
