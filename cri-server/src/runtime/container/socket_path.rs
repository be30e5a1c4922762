//! Unix socket paths that fit `sun_path`: a container's shim and attach sockets live in its
//! bundle, `<state>/containers/<64-hex id>/`, which with a long `state` directory passes the
//! kernel's 108-byte limit. Such a path is reached through `/proc/self/fd/<dir fd>/<name>`
//! instead, with the bundle directory held open (`O_PATH`) until the connection is made.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest path used as is (`sun_path` is 108 bytes with its terminating NUL).
const MAX_DIRECT: usize = 100;

/// A path to connect to; keep it alive until the connection is made.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    /// The socket's directory when the path goes through `/proc/self/fd`.
    _dir: Option<File>,
}

impl SocketPath {
    /// A connectable path for the socket at `socket`.
    pub fn new(socket: &Path) -> std::io::Result<Self> {
        if socket.as_os_str().len() <= MAX_DIRECT {
            return Ok(SocketPath {
                path: socket.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a socket path", socket.display()),
            ));
        };
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(SocketPath {
            path,
            _dir: Some(dir),
        })
    }

    /// The path to hand to `connect`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_socket_paths_are_reached_through_the_directory_fd() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("shim.sock");
        assert!(socket.as_os_str().len() > 108);
        let bind_path = SocketPath::new(&socket)?;
        let listener = tokio::net::UnixListener::bind(bind_path.path())?;
        assert!(socket.exists(), "bound where the long path points");
        let connect_path = SocketPath::new(&socket)?;
        assert!(connect_path.path().starts_with("/proc/self/fd"));
        let (client, server) = tokio::join!(
            tokio::net::UnixStream::connect(connect_path.path()),
            listener.accept()
        );
        client?;
        server?;

        let short = SocketPath::new(Path::new("/run/berth/x/shim.sock"))?;
        assert_eq!(short.path(), Path::new("/run/berth/x/shim.sock"));
        Ok(())
    }
}
