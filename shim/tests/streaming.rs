//! Streaming support of berth-shim as root: container tty and stdin through the attach socket,
//! ResizePty, CloseIO, exec with a tty and with a stdin FIFO.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{ctx, status_code, Fixture};
use containerd_shim_protos::api::{
    CloseIORequest, DeleteRequest, ExecProcessRequest, ResizePtyRequest, StartRequest,
    StateRequest, Status, WaitRequest,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc::Code;
use serde_json::json;

const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// An attach client decoding the shim's frames.
struct AttachClient {
    stream: UnixStream,
    /// Stdout bytes received so far.
    out: Vec<u8>,
    eof: bool,
}

impl AttachClient {
    fn connect(f: &Fixture) -> Result<Self> {
        let stream = UnixStream::connect(f.bundle().join("attach.sock"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(AttachClient {
            stream,
            out: Vec::new(),
            eof: false,
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one frame; false at EOF.
    fn read_frame(&mut self) -> Result<bool> {
        let mut head = [0u8; 5];
        match self.stream.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.eof = true;
                return Ok(false);
            }
            Err(e) => return Err(e).context("read attach frame"),
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data)?;
        if head[0] != 1 {
            bail!("frame on stream {} (no tty, no stderr expected)", head[0]);
        }
        self.out.extend_from_slice(&data);
        Ok(true)
    }

    /// Reads until the stdout text contains `needle`.
    fn expect(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + READ_TIMEOUT;
        while !String::from_utf8_lossy(&self.out).contains(needle) {
            if Instant::now() > deadline || !self.read_frame()? {
                bail!(
                    "{needle:?} not in attach output {:?}",
                    String::from_utf8_lossy(&self.out)
                );
            }
        }
        Ok(())
    }

    /// Reads until the shim closes the connection.
    fn expect_eof(&mut self) -> Result<()> {
        while !self.eof {
            self.read_frame()?;
        }
        Ok(())
    }
}

fn create_start(f: &Fixture, terminal: bool, stdin: bool) -> Result<()> {
    let c = f.client()?;
    let mut req = f.create_request();
    req.terminal = terminal;
    if stdin {
        req.stdin = f.bundle().join("attach.sock").display().to_string();
    }
    c.create(ctx(), &req)?;
    assert!(f.bundle().join("attach.sock").exists());
    let mut start = StartRequest::new();
    start.id = f.id.clone();
    c.start(ctx(), &start)?;
    Ok(())
}

fn resize(f: &Fixture, exec_id: &str, width: u32, height: u32) -> Result<()> {
    let mut req = ResizePtyRequest::new();
    req.id = f.id.clone();
    req.exec_id = exec_id.into();
    req.width = width;
    req.height = height;
    f.client()?.resize_pty(ctx(), &req)?;
    Ok(())
}

fn close_stdin(f: &Fixture, exec_id: &str) -> Result<()> {
    let mut req = CloseIORequest::new();
    req.id = f.id.clone();
    req.exec_id = exec_id.into();
    req.stdin = true;
    f.client()?.close_io(ctx(), &req)?;
    Ok(())
}

fn status(f: &Fixture) -> Result<Option<Status>> {
    let mut req = StateRequest::new();
    req.id = f.id.clone();
    Ok(f.client()?.state(ctx(), &req)?.status.enum_value().ok())
}

fn finish(f: &Fixture) -> Result<()> {
    f.delete()?;
    assert!(
        !f.bundle().join("attach.sock").exists(),
        "attach socket left after delete"
    );
    f.shutdown()?;
    assert!(f.wait_shim_gone());
    Ok(())
}

#[test]
fn tty_container_attach_resize_and_log() -> Result<()> {
    let mut f = Fixture::new("tty", &["sh"], true, None)?;
    f.start_shim()?;
    create_start(&f, true, true)?;
    let mut a = AttachClient::connect(&f)?;
    // The echo of the typed line holds `6*7`, only the shell's output holds `42`.
    a.send(b"echo $((6*7))\n")?;
    a.expect("42")?;
    resize(&f, "", 100, 30)?;
    a.send(b"stty size\n")?;
    a.expect("30 100")?;
    a.send(b"exit 3\n")?;
    assert_eq!(f.wait()?, 3);
    a.expect_eof()?;
    let log = f.log()?;
    assert!(
        log.lines().any(|l| l.contains(" stdout F 42")),
        "no tty output in the log: {log}"
    );
    // CloseIO on a tty container is a no-op.
    close_stdin(&f, "")?;
    finish(&f)
}

#[test]
fn stdin_container_two_clients_and_close_io() -> Result<()> {
    let mut f = Fixture::new("stdin", &["cat"], true, None)?;
    f.start_shim()?;
    create_start(&f, false, true)?;
    let mut a = AttachClient::connect(&f)?;
    let mut b = AttachClient::connect(&f)?;
    // Both clients are registered once an echo comes back through one of them.
    a.send(b"line1\n")?;
    a.expect("line1\n")?;
    b.send(b"line2\n")?;
    a.expect("line2\n")?;
    b.expect("line2\n")?;
    // A client's EOF does not close the container's stdin.
    a.stream.shutdown(Shutdown::Write)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&f)?, Some(Status::RUNNING));
    b.send(b"line3\n")?;
    a.expect("line3\n")?;
    // No tty: ResizePty is refused.
    let mut req = ResizePtyRequest::new();
    req.id = f.id.clone();
    req.width = 80;
    req.height = 24;
    let e = f
        .client()?
        .resize_pty(ctx(), &req)
        .err()
        .context("resize without a tty succeeded")?;
    assert_eq!(status_code(&e), Some(Code::FAILED_PRECONDITION), "{e}");
    close_stdin(&f, "")?;
    assert_eq!(f.wait()?, 0);
    a.expect_eof()?;
    b.expect_eof()?;
    let log = f.log()?;
    for line in ["line1", "line2", "line3"] {
        assert!(
            log.lines()
                .any(|l| l.ends_with(&format!(" stdout F {line}"))),
            "{line} not in the log: {log}"
        );
    }
    // A client connecting after the output ended gets EOF at once.
    let mut late = AttachClient::connect(&f)?;
    late.expect_eof()?;
    finish(&f)
}

#[test]
fn attach_input_is_discarded_without_stdin() -> Result<()> {
    let mut f = Fixture::new("nostdin", &["sh", "-c", "sleep 1; echo done"], true, None)?;
    f.start_shim()?;
    create_start(&f, false, false)?;
    let mut a = AttachClient::connect(&f)?;
    a.send(b"ignored\n")?;
    a.expect("done\n")?;
    assert_eq!(f.wait()?, 0);
    a.expect_eof()?;
    finish(&f)
}

/// FIFOs as berthd sets them up for an exec.
struct ExecFifos {
    dir: tempfile::TempDir,
}

impl ExecFifos {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-shim-fifo-")
            .tempdir_in("/tmp")?;
        for name in ["stdin", "stdout"] {
            nix::unistd::mkfifo(
                &dir.path().join(name),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )?;
        }
        Ok(ExecFifos { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The stdin FIFO opened for writing (O_RDWR, as berthd holds it).
    fn writer(&self) -> Result<File> {
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path("stdin"))?)
    }

    /// Opens an output FIFO for reading (before the shim opens it) and collects everything
    /// until EOF in a thread.
    fn collect(&self, name: &str) -> Result<mpsc::Receiver<Vec<u8>>> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.path(name))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + READ_TIMEOUT;
            // Nonblocking: EOF before the writer came is 0 too, so read until the deadline
            // once the writer was seen (some bytes) and closed.
            while Instant::now() < deadline {
                match file.read(&mut buf) {
                    Ok(0) if !out.is_empty() => break,
                    Ok(0) => std::thread::sleep(Duration::from_millis(20)),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(out);
        });
        Ok(rx)
    }
}

fn exec(f: &Fixture, exec_id: &str, args: &[&str], tty: bool, io: &ExecFifos) -> Result<u32> {
    let process = json!({
        "args": args,
        "cwd": "/",
        "env": ["PATH=/bin", "TERM=xterm"],
        "user": {"uid": 0, "gid": 0},
        "terminal": tty,
    });
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&process)?;
    let mut req = ExecProcessRequest::new();
    req.id = f.id.clone();
    req.exec_id = exec_id.into();
    req.terminal = tty;
    req.stdin = io.path("stdin").display().to_string();
    req.stdout = io.path("stdout").display().to_string();
    req.spec = Some(any).into();
    let c = f.client()?;
    c.exec(ctx(), &req)?;
    let mut start = StartRequest::new();
    start.id = f.id.clone();
    start.exec_id = exec_id.into();
    Ok(c.start(ctx(), &start)?.pid)
}

fn wait_exec(f: &Fixture, exec_id: &str) -> Result<u32> {
    let mut req = WaitRequest::new();
    req.id = f.id.clone();
    req.exec_id = exec_id.into();
    let status = f.client()?.wait(ctx(), &req)?.exit_status;
    let mut del = DeleteRequest::new();
    del.id = f.id.clone();
    del.exec_id = exec_id.into();
    f.client()?.delete(ctx(), &del)?;
    Ok(status)
}

fn text(rx: &mpsc::Receiver<Vec<u8>>) -> Result<String> {
    let out = rx.recv_timeout(READ_TIMEOUT + Duration::from_secs(5))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn exec_with_tty_and_with_stdin() -> Result<()> {
    let mut f = Fixture::new("exec", &["sleep", "1000"], true, None)?;
    f.start_shim()?;
    create_start(&f, false, false)?;

    // tty: sh on a pty, resized, stdin from the FIFO, output on the stdout FIFO.
    let io = ExecFifos::new()?;
    let mut stdin = io.writer()?;
    let out = io.collect("stdout")?;
    exec(&f, "tty", &["sh"], true, &io)?;
    resize(&f, "tty", 50, 20)?;
    stdin.write_all(b"stty size; exit 5\n")?;
    assert_eq!(wait_exec(&f, "tty")?, 5);
    let got = text(&out)?;
    assert!(got.contains("20 50"), "tty exec output {got:?}");
    drop(stdin);

    // No tty: `cat` echoes stdin; closing the FIFO's write end ends it.
    let io = ExecFifos::new()?;
    let mut stdin = io.writer()?;
    let out = io.collect("stdout")?;
    exec(&f, "cat", &["cat"], false, &io)?;
    stdin.write_all(b"abc\n")?;
    drop(stdin);
    assert_eq!(wait_exec(&f, "cat")?, 0);
    assert_eq!(text(&out)?, "abc\n");

    // No tty: CloseIO ends stdin while berthd still holds the FIFO.
    let io = ExecFifos::new()?;
    let mut stdin = io.writer()?;
    let out = io.collect("stdout")?;
    exec(&f, "closeio", &["cat"], false, &io)?;
    stdin.write_all(b"xyz\n")?;
    // Let the pump pass the line on before stdin is closed.
    std::thread::sleep(Duration::from_millis(300));
    close_stdin(&f, "closeio")?;
    assert_eq!(wait_exec(&f, "closeio")?, 0);
    assert_eq!(text(&out)?, "xyz\n");
    drop(stdin);

    for dir in [
        f.bundle().join("runtime"),
        f.bundle().join("runtime").join(&f.id),
    ] {
        assert!(
            !leftover_tenant_files(&dir)?,
            "tenant or console sockets left in {}",
            dir.display()
        );
    }
    finish(&f)
}

fn leftover_tenant_files(state_dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(state_dir)?.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.starts_with("tenant-") || n.starts_with("console-")
    }))
}
