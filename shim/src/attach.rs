//! The attach socket `<bundle>/attach.sock`: live container output to any number of clients,
//! and their bytes to the container's stdin (see docs/shim.md, "Attach").
//!
//! shim -> client: frames `[stream u8: 1 stdout, 2 stderr][len u32 BE][bytes]`, only output
//! produced after the client connected; when the container's output ends the connection is
//! shut. client -> shim: raw stdin bytes (discarded when the container has no stdin); a
//! client's EOF ends only its own input.
//!
//! The log copiers call [`Attach::output`], which never blocks: it appends the frame to each
//! client's queue, and a client whose queue would exceed [`MAX_BACKLOG`] is disconnected. Each
//! client has a writer thread (drains its queue) and a reader thread (its input).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The attach socket's name in the bundle.
pub const SOCKET_NAME: &str = "attach.sock";
/// Unsent output after which a client is disconnected.
pub const MAX_BACKLOG: usize = 1024 * 1024;
/// Stream byte of stdout frames.
pub const STDOUT: u8 = 1;
/// Stream byte of stderr frames.
pub const STDERR: u8 = 2;
/// Stack size of the accept and per-client threads (buffers are on the heap).
const THREAD_STACK: usize = 64 * 1024;
/// Largest chunk a writer takes from its queue at once.
const WRITE_CHUNK: usize = 32 * 1024;
/// Read size of a client's input.
const READ_BUF: usize = 8 * 1024;

#[derive(Default)]
struct Queue {
    buf: VecDeque<u8>,
    /// Output ended: flush, then shut the connection.
    ended: bool,
    /// Disconnected: stop now.
    dead: bool,
}

struct Client {
    id: u64,
    stream: UnixStream,
    queue: Mutex<Queue>,
    cv: Condvar,
}

impl Client {
    fn kill(&self) {
        lock(&self.queue).dead = true;
        self.cv.notify_all();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    clients: Vec<Arc<Client>>,
    next_id: u64,
    ended: bool,
    stopped: bool,
    listener: Option<Arc<UnixListener>>,
    path: Option<PathBuf>,
}

/// The attach hub of one container.
#[derive(Default)]
pub struct Attach {
    id: String,
    state: Mutex<State>,
    /// The container's stdin for attach input: a pipe's write end or the pty master.
    stdin: Mutex<Option<Arc<File>>>,
}

impl Attach {
    /// A hub for container `id`, not listening yet.
    pub fn new(id: &str) -> Arc<Self> {
        Arc::new(Attach {
            id: id.to_string(),
            ..Default::default()
        })
    }

    /// Sets where client input goes (`None`: discarded).
    pub fn set_stdin(&self, stdin: Option<File>) {
        *lock(&self.stdin) = stdin.map(Arc::new);
    }

    /// Closes the container's stdin for good (CloseIO); later input is discarded.
    pub fn close_stdin(&self) {
        lock(&self.stdin).take();
    }

    /// Listens on `<bundle>/attach.sock` with an accept thread, until [`Attach::stop`].
    pub fn listen(self: &Arc<Self>, bundle: &Path) -> std::io::Result<()> {
        let path = bundle.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = Arc::new(crate::console::bind_in_bundle(bundle, SOCKET_NAME)?);
        {
            let mut st = lock(&self.state);
            st.listener = Some(listener.clone());
            st.path = Some(path.clone());
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("attach-accept".into())
            .stack_size(THREAD_STACK)
            .spawn(move || me.accept_loop(&listener));
        if let Err(e) = spawned {
            let _ = std::fs::remove_file(&path);
            lock(&self.state).listener = None;
            return Err(e);
        }
        Ok(())
    }

    fn accept_loop(self: &Arc<Self>, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !lock(&self.state).stopped {
                        crate::error!("container {}: attach accept: {e}", self.id);
                    }
                    return;
                }
            };
            if let Err(e) = self.add_client(stream) {
                crate::error!("container {}: attach client: {e}", self.id);
            }
        }
    }

    fn add_client(self: &Arc<Self>, stream: UnixStream) -> std::io::Result<()> {
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let client = {
            let mut st = lock(&self.state);
            if st.ended || st.stopped {
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            st.next_id += 1;
            let client = Arc::new(Client {
                id: st.next_id,
                stream,
                queue: Mutex::new(Queue::default()),
                cv: Condvar::new(),
            });
            st.clients.push(client.clone());
            client
        };
        let me = self.clone();
        let c = client.clone();
        let w = std::thread::Builder::new()
            .name("attach-out".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                write_loop(&c, writer);
                me.remove(c.id);
            });
        if let Err(e) = w {
            self.remove(client.id);
            client.kill();
            return Err(e);
        }
        let me = self.clone();
        let r = std::thread::Builder::new()
            .name("attach-in".into())
            .stack_size(THREAD_STACK)
            .spawn(move || me.read_loop(reader));
        if let Err(e) = r {
            // Output still flows; only this client's input is lost.
            crate::error!("container {}: attach input thread: {e}", self.id);
        }
        Ok(())
    }

    fn remove(&self, client_id: u64) {
        lock(&self.state).clients.retain(|c| c.id != client_id);
    }

    fn read_loop(&self, mut stream: UnixStream) {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            // Cloned out of the lock: a write blocked on a full pipe must not block CloseIO.
            let stdin = lock(&self.stdin).clone();
            if let Some(stdin) = stdin {
                if let Err(e) = (&*stdin).write_all(&buf[..n]) {
                    crate::error!("container {}: write attach input to stdin: {e}", self.id);
                }
            }
        }
    }

    /// Sends a chunk of container output on `stream` ([`STDOUT`] / [`STDERR`]) to every
    /// client. Never blocks; a client too far behind is disconnected.
    pub fn output(&self, stream: u8, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let Ok(len) = u32::try_from(data.len()) else {
            return;
        };
        let mut st = lock(&self.state);
        if st.clients.is_empty() {
            return;
        }
        let mut slow = Vec::new();
        for c in &st.clients {
            let mut q = lock(&c.queue);
            if q.dead || q.ended {
                continue;
            }
            if q.buf.len() + 5 + data.len() > MAX_BACKLOG {
                slow.push(c.id);
                continue;
            }
            q.buf.push_back(stream);
            q.buf.extend(len.to_be_bytes());
            q.buf.extend(data);
            drop(q);
            c.cv.notify_all();
        }
        if !slow.is_empty() {
            st.clients.retain(|c| {
                if slow.contains(&c.id) {
                    crate::info!(
                        "container {}: attach client fell {MAX_BACKLOG} bytes behind, dropped",
                        self.id
                    );
                    c.kill();
                    false
                } else {
                    true
                }
            });
        }
    }

    /// The container's output ended: every client gets what is queued, then EOF; later
    /// clients are closed at once.
    pub fn output_ended(&self) {
        let mut st = lock(&self.state);
        st.ended = true;
        for c in &st.clients {
            lock(&c.queue).ended = true;
            c.cv.notify_all();
        }
    }

    /// Stops listening, removes the socket file, disconnects every client, drops stdin.
    pub fn stop(&self) {
        let (listener, path, clients) = {
            let mut st = lock(&self.state);
            st.stopped = true;
            (
                st.listener.take(),
                st.path.take(),
                std::mem::take(&mut st.clients),
            )
        };
        if let Some(path) = path {
            let _ = std::fs::remove_file(path);
        }
        if let Some(l) = listener {
            // SAFETY: shutdown(2) on a descriptor this Arc keeps open; it wakes the blocked
            // accept(2), which then fails and ends the accept thread.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for c in clients {
            c.kill();
        }
        self.close_stdin();
    }
}

fn write_loop(client: &Client, mut stream: UnixStream) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    loop {
        {
            let mut q = lock(&client.queue);
            while q.buf.is_empty() && !q.ended && !q.dead {
                q = client.cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.dead {
                return;
            }
            if q.buf.is_empty() {
                // Ended and flushed.
                drop(q);
                let _ = client.stream.shutdown(Shutdown::Both);
                return;
            }
            let n = q.buf.len().min(WRITE_CHUNK);
            chunk.clear();
            chunk.extend(q.buf.drain(..n));
        }
        if stream.write_all(&chunk).is_err() {
            client.kill();
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn read_frame(s: &mut UnixStream) -> anyhow::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data)?;
        Ok((head[0], data))
    }

    fn wait_clients(a: &Attach, n: usize) {
        for _ in 0..200 {
            if lock(&a.state).clients.len() == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn frames_output_forwards_input_and_ends() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = Attach::new("t");
        let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        a.set_stdin(Some(File::from(stdin_w)));
        a.listen(dir.path())?;
        let sock = dir.path().join(SOCKET_NAME);
        let mut c1 = UnixStream::connect(&sock)?;
        let mut c2 = UnixStream::connect(&sock)?;
        c1.set_read_timeout(Some(Duration::from_secs(5)))?;
        c2.set_read_timeout(Some(Duration::from_secs(5)))?;
        wait_clients(&a, 2);
        a.output(STDOUT, b"out");
        a.output(STDERR, b"err");
        for c in [&mut c1, &mut c2] {
            assert_eq!(read_frame(c)?, (STDOUT, b"out".to_vec()));
            assert_eq!(read_frame(c)?, (STDERR, b"err".to_vec()));
        }
        c1.write_all(b"typed")?;
        c1.shutdown(Shutdown::Write)?;
        let mut got = [0u8; 5];
        File::from(stdin_r).read_exact(&mut got)?;
        assert_eq!(&got, b"typed");
        a.output_ended();
        let mut rest = Vec::new();
        c1.read_to_end(&mut rest)?;
        assert!(rest.is_empty());
        a.stop();
        assert!(!sock.exists());
        Ok(())
    }

    #[test]
    fn slow_client_is_dropped_without_blocking() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = Attach::new("t");
        a.listen(dir.path())?;
        let _c = UnixStream::connect(dir.path().join(SOCKET_NAME))?;
        wait_clients(&a, 1);
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..200 {
            a.output(STDOUT, &chunk);
        }
        wait_clients(&a, 0);
        assert!(lock(&a.state).clients.is_empty());
        a.stop();
        Ok(())
    }
}
