//! The workload executor handed to libcontainer: libcontainer's default `execvp`, preceded by
//! resetting the signal dispositions the shim changed. Rust's runtime sets SIGPIPE to SIG_IGN in
//! the shim, and an ignored disposition survives `execve`: without the reset, every container
//! would run with SIGPIPE ignored (`yes | head -1` would never end).

use std::collections::HashMap;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::sys::signal::{signal, SigHandler, Signal};
use oci_spec::runtime::Spec;

/// [`DefaultExecutor`] with SIGPIPE restored to its default action.
#[derive(Clone)]
pub struct BerthExecutor {
    inner: DefaultExecutor,
}

impl Default for BerthExecutor {
    fn default() -> Self {
        BerthExecutor {
            inner: DefaultExecutor {},
        }
    }
}

impl Executor for BerthExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // SAFETY: runs in the container init just before execve; SIG_DFL installs no handler.
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
            .map_err(|e| ExecutorError::Other(format!("reset SIGPIPE: {e}")))?;
        self.inner.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.inner.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        self.inner.setup_envs(envs)
    }
}
