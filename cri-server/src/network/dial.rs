//! Port-forward dialing: a TCP connection to `localhost:PORT` as the pod sees it.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole life.
//! So the socket is created and connected on a thread inside the pod's namespace (see
//! [`crate::network::netns`]) and handed back; the async side wraps it in a tokio `TcpStream`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::network::netns::{spawn_in, thread_died};

/// How long connecting to the pod's port may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The addresses tried in order: the pod's IPv4 localhost, then IPv6 (like containerd, which
/// dials "localhost").
fn localhost(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

/// Connects to `localhost:port` inside the network namespace pinned at `netns`; `None` (a
/// host-network pod) dials on the host.
pub async fn dial_localhost(netns: Option<&Path>, port: u16) -> Result<TcpStream> {
    match netns {
        None => dial_host(port).await,
        Some(netns) => dial_in_netns(netns, port).await,
    }
}

async fn dial_host(port: u16) -> Result<TcpStream> {
    let mut last = None;
    for addr in localhost(port) {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Err(dial_error(&format!("localhost:{port} on the host"), last))
}

async fn dial_in_netns(netns: &Path, port: u16) -> Result<TcpStream> {
    let what = format!("localhost:{port} in network namespace {}", netns.display());
    let stream = spawn_in(netns, "netns-dial", move || connect_blocking(port))?
        .await
        .map_err(|_| thread_died(netns))?
        .map_err(|e| dial_error(&what, Some(e)))?;
    stream
        .set_nonblocking(true)
        .map_err(|e| Error::io(format!("dialing {what}: making the socket non-blocking"), e))?;
    TcpStream::from_std(stream)
        .map_err(|e| Error::io(format!("dialing {what}: registering the socket"), e))
}

/// On the dialing thread: the first localhost address that accepts.
fn connect_blocking(port: u16) -> std::io::Result<std::net::TcpStream> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
    for addr in localhost(port) {
        match std::net::TcpStream::connect_timeout(&addr, DIAL_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A refused or unreachable port is the pod's business (Unavailable), not berthd's failure.
fn dial_error(what: &str, err: Option<std::io::Error>) -> Error {
    match err {
        Some(e) => Error::Unavailable(format!("dialing {what}: {e}")),
        None => Error::Unavailable(format!("dialing {what}: no address to try")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn dials_the_host_without_a_namespace() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await?;
            conn.write_all(b"hello").await?;
            anyhow::Ok(())
        });
        let mut stream = dial_localhost(None, port).await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        assert_eq!(got, b"hello");
        server.await??;
        Ok(())
    }

    #[tokio::test]
    async fn the_own_namespace_works_like_the_host() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let accept = tokio::spawn(async move { listener.accept().await });
        let ns = Path::new("/proc/self/ns/net");
        let stream = dial_localhost(Some(ns), port).await?;
        assert_eq!(stream.peer_addr()?.port(), port);
        accept.await??;
        Ok(())
    }

    /// A thread in a new network namespace (loopback up) listening on 127.0.0.1; answers one
    /// connection with "inside". Returns the namespace's path and the port.
    fn listener_in_new_netns(
    ) -> anyhow::Result<(std::path::PathBuf, u16, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let setup = || -> anyhow::Result<(std::path::PathBuf, std::net::TcpListener)> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                // A child forked by this thread starts in its network namespace.
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()?;
                anyhow::ensure!(up.success(), "ip link set lo up: {up}");
                let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                let path = std::path::PathBuf::from(format!(
                    "/proc/{}/task/{}/ns/net",
                    std::process::id(),
                    nix::unistd::gettid()
                ));
                Ok((path, listener))
            };
            match setup() {
                Ok((path, listener)) => {
                    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                    let _ = tx.send(Ok((path, port)));
                    if let Ok((mut conn, _)) = listener.accept() {
                        let _ = std::io::Write::write_all(&mut conn, b"inside");
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let (path, port) = rx.recv()??;
        Ok((path, port, handle))
    }

    #[tokio::test]
    async fn dials_inside_another_namespace() -> anyhow::Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(());
        }
        let (ns, port, thread) = listener_in_new_netns()?;
        // Nothing listens on the host's side of that port (almost certainly).
        let mut stream = dial_localhost(Some(&ns), port).await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        assert_eq!(got, b"inside");
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("listener thread panicked"))?;
        Ok(())
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable() -> anyhow::Result<()> {
        // Bind then drop: the port is (almost certainly) closed afterwards.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let err = dial_localhost(Some(Path::new("/proc/self/ns/net")), port)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("dialing a closed port succeeded"))?;
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        Ok(())
    }
}
