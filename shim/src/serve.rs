//! `berth-shim serve`: the daemon. Becomes a child subreaper, serves the task API on
//! `<bundle>/shim.sock` with the sync ttrpc server, exits after an effective `shutdown`.

use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use containerd_shim_protos::{create_task, ttrpc};

use crate::container::ContainerTask;
use crate::reaper::Reaper;
use crate::service::TaskService;
use crate::start::SOCKET_NAME;

/// Lets the `shutdown` reply reach the client before the process exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// Runs the daemon until shutdown.
pub fn run(id: &str, bundle: &Path) -> Result<(), String> {
    crate::info!(
        "berth-shim {} serving container {id}, bundle {}",
        std::process::id(),
        bundle.display()
    );
    // One malloc arena for all threads: per-thread arenas would each keep dirty pages around,
    // resident memory paid per container for no benefit at this request rate.
    // SAFETY: mallopt only tunes glibc's allocator; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "become child subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    let reaper = Reaper::start().map_err(|e| format!("start reaper thread: {e}"))?;
    let task = Arc::new(ContainerTask::new(
        id.to_string(),
        bundle.to_path_buf(),
        reaper,
    ));

    let socket = bundle.join(SOCKET_NAME);
    let listener = bind(&socket)?;
    let (tx, rx) = mpsc::channel();
    let service = create_task(Arc::new(TaskService::new(task, tx)));
    let mut server = ttrpc::Server::new()
        .set_thread_count_default(2)
        .set_thread_count_min(1)
        .add_listener(listener.into_raw_fd())
        .map_err(|e| format!("ttrpc listener: {e}"))?
        .register_service(service);
    server
        .start()
        .map_err(|e| format!("start ttrpc server: {e}"))?;
    crate::info!("listening on {}", socket.display());

    // Every sender lives in the service; an error here means the service is gone too.
    let _ = rx.recv();
    crate::info!("shutdown requested, exiting");
    let _ = std::fs::remove_file(&socket);
    std::thread::sleep(SHUTDOWN_GRACE);
    // Do not run `server.shutdown()`: it joins connection threads, which may be blocked in a
    // `wait` that will never return. Exiting closes every connection.
    std::process::exit(0);
}

/// Binds the socket, replacing a stale socket file but never a live shim's.
fn bind(socket: &Path) -> Result<UnixListener, String> {
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(format!("another shim already serves {}", socket.display()));
        }
        std::fs::remove_file(socket)
            .map_err(|e| format!("remove stale {}: {e}", socket.display()))?;
    }
    // Bind by the name relative to the bundle (our cwd), so a long bundle path cannot exceed
    // the 108-byte sun_path limit.
    let rel = Path::new(SOCKET_NAME);
    let target = if std::env::current_dir().ok().as_deref() == socket.parent() {
        rel
    } else {
        socket
    };
    UnixListener::bind(target).map_err(|e| format!("bind {}: {e}", socket.display()))
}
