//! A CRI client (RuntimeService + ImageService) on a unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_tests::daemon;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// Both CRI services over one channel (cheap to clone: one per concurrent task).
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub img: ImageServiceClient<Channel>,
}

/// Connects to the CRI socket at `socket` (a path; a leading `unix://` is accepted).
pub async fn connect(socket: &Path) -> Result<Cri> {
    let path = strip_scheme(socket);
    let endpoint = daemon::unix_endpoint().connect_timeout(Duration::from_secs(5));
    let channel = daemon::connect_with(endpoint, &path)
        .await
        .map_err(|source| Error::Connect {
            endpoint: path,
            source,
        })?;
    Ok(Cri {
        rt: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
        img: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
    })
}

/// `unix:///run/x.sock` → `/run/x.sock`; plain paths unchanged.
pub fn strip_scheme(socket: &Path) -> PathBuf {
    let s = socket.to_string_lossy();
    match s.strip_prefix("unix://") {
        Some(rest) => PathBuf::from(rest),
        None => socket.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_is_stripped() {
        assert_eq!(
            strip_scheme(Path::new("unix:///run/c.sock")),
            PathBuf::from("/run/c.sock")
        );
        assert_eq!(
            strip_scheme(Path::new("/a/b.sock")),
            PathBuf::from("/a/b.sock")
        );
    }
}
