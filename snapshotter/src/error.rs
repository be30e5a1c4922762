//! The crate's error type.

/// Errors of the content store and snapshotter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such blob or snapshot.
    #[error("{0} not found")]
    NotFound(String),
    /// Input that is malformed or hostile (bad digest, tar entry escaping the snapshot, digest mismatch).
    #[error("{0}")]
    InvalidInput(String),
    /// A snapshot with this key already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Filesystem or syscall failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the object.
        context: String,
        /// The underlying OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// True when the error means "no such object".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
    /// True when the error is the caller's input.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput(_))
    }
    /// True when the object (snapshot key) already exists.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists(_))
    }
    /// Builds an [`Error::Io`] from a context message and an OS error.
    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds context to `std::io::Result` / `nix::Result` values.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`Error::Io`] with the message built by `f`.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
