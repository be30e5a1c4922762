//! Stop signal parsing: image `StopSignal` values such as `SIGQUIT`, `QUIT`, `3` or `SIGRTMIN+3`.

use crate::error::{Error, Result};

const NAMES: [(&str, i32); 31] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
];

/// Parses a signal name or number; empty means SIGTERM.
pub fn parse_signal(value: &str) -> Result<u32> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(libc::SIGTERM as u32);
    }
    let invalid = || Error::InvalidArgument(format!("invalid stop signal {value:?}"));
    let rt_max = libc::SIGRTMAX();
    let rt_min = libc::SIGRTMIN();
    if let Ok(n) = value.parse::<i32>() {
        return if (1..=rt_max).contains(&n) {
            Ok(n as u32)
        } else {
            Err(invalid())
        };
    }
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Ok(n as u32);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Result<u32> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| invalid())?
        };
        let n = base + sign * off;
        if (rt_min..=rt_max).contains(&n) {
            Ok(n as u32)
        } else {
            Err(invalid())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(r) => rt(rt_min, r, 1),
            None if rest.is_empty() => rt(rt_min, "", 1),
            None => Err(invalid()),
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(r) => rt(rt_max, r, -1),
            None if rest.is_empty() => rt(rt_max, "", 1),
            None => Err(invalid()),
        };
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_defaults() {
        assert_eq!(parse_signal("").unwrap(), 15);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), 3);
        assert_eq!(parse_signal("quit").unwrap(), 3);
        assert_eq!(parse_signal("3").unwrap(), 3);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGWINCH").unwrap(), 28);
        assert_eq!(
            parse_signal("SIGRTMIN+3").unwrap(),
            (libc::SIGRTMIN() + 3) as u32
        );
        assert_eq!(
            parse_signal("RTMAX-1").unwrap(),
            (libc::SIGRTMAX() - 1) as u32
        );
        for bad in ["SIGFOO", "0", "99", "-1", "RTMIN+100", "RTMINX"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
