//! A stoppable byte pump: one small thread copying from one descriptor to another until the
//! source ends (EOF, or EIO from a pty master whose slave is gone), a write fails, or someone
//! calls [`Stop::stop`]. The thread waits in `poll(2)` on the source and on a stop pipe, so a
//! pump blocked on a silent FIFO can be ended. Both descriptors are closed when it ends.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;

/// Stack size of a pump thread (its buffer is on the heap).
const PUMP_STACK: usize = 64 * 1024;
/// Read size of a pump.
const BUF: usize = 16 * 1024;

/// Ends a pump; dropping the last handle does not stop it.
#[derive(Debug, Default)]
pub struct Stop {
    write_end: Mutex<Option<OwnedFd>>,
}

impl Stop {
    /// Makes the pump stop at its next wait (closes the stop pipe). Idempotent.
    pub fn stop(&self) {
        self.write_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// Starts a pump from `src` to `dst`; `on_end` runs in the pump thread once it has ended and
/// closed both descriptors.
pub fn spawn(
    name: &str,
    src: File,
    dst: File,
    on_end: impl FnOnce() + Send + 'static,
) -> std::io::Result<Arc<Stop>> {
    let (stop_r, stop_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let stop = Arc::new(Stop {
        write_end: Mutex::new(Some(stop_w)),
    });
    // The thread keeps a handle: dropping the caller's does not close the stop pipe.
    let keep = stop.clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(PUMP_STACK)
        .spawn(move || {
            run(src, dst, &stop_r);
            drop(keep);
            on_end();
        })?;
    Ok(stop)
}

fn run(mut src: File, mut dst: File, stop: &OwnedFd) {
    let mut buf = vec![0u8; BUF];
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: src.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `pfds` is an array of two valid pollfds for the duration of the call.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfds[1].revents != 0 {
            return;
        }
        if pfds[0].revents == 0 {
            continue;
        }
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::Interrupted
                    || e.kind() == std::io::ErrorKind::WouldBlock => {}
            // EIO: a pty master whose slave side is closed; anything else ends it too.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pipe() -> anyhow::Result<(File, File)> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        Ok((File::from(r), File::from(w)))
    }

    #[test]
    fn copies_until_eof_and_stops_on_request() -> anyhow::Result<()> {
        let (src_r, mut src_w) = pipe()?;
        let (mut dst_r, dst_w) = pipe()?;
        let (tx, rx) = mpsc::channel();
        spawn("t", src_r, dst_w, move || {
            let _ = tx.send(());
        })?;
        src_w.write_all(b"hello")?;
        drop(src_w);
        let mut out = String::new();
        dst_r.read_to_string(&mut out)?;
        assert_eq!(out, "hello");
        rx.recv_timeout(Duration::from_secs(5))?;

        // A silent source: only stop ends it, and the destination then sees EOF.
        let (src_r, _src_w) = pipe()?;
        let (mut dst_r, dst_w) = pipe()?;
        let (tx, rx) = mpsc::channel();
        let stop = spawn("t", src_r, dst_w, move || {
            let _ = tx.send(());
        })?;
        stop.stop();
        rx.recv_timeout(Duration::from_secs(5))?;
        let mut out = Vec::new();
        dst_r.read_to_end(&mut out)?;
        assert!(out.is_empty());
        Ok(())
    }
}
