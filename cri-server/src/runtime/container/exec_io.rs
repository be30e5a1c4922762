//! What ExecSync and streaming exec share: the exec's `Process` JSON built from the container's,
//! and the FIFOs in `<bundle>/exec/` that carry its stdio.
//!
//! berthd creates the FIFOs and opens its ends before the shim opens the others: stdout and
//! stderr for reading (non-blocking, read by tokio), stdin read-write (so the open does not wait
//! for a reader, and the shim's reader sees EOF only once berthd drops it).

use std::path::{Path, PathBuf};

use tokio::net::unix::pipe;

use super::shim_client::ExecStdio;
use crate::error::Error;

/// The exec's `Process` JSON: the container's process with `args` replaced and `terminal` set;
/// `console` (columns, rows) becomes its `consoleSize`.
pub fn exec_process(
    spec: &[u8],
    cmd: &[String],
    terminal: bool,
    console: Option<(u16, u16)>,
) -> Result<Vec<u8>, String> {
    let spec: serde_json::Value =
        serde_json::from_slice(spec).map_err(|e| format!("not JSON: {e}"))?;
    let mut process = spec
        .get("process")
        .filter(|p| p.is_object())
        .cloned()
        .ok_or_else(|| "no process in the spec".to_string())?;
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::Value::Bool(terminal);
    if let Some(p) = process.as_object_mut() {
        // The init's; an exec has its own console (or none).
        p.remove("consoleSize");
        p.remove("commandLine");
        if let (true, Some((width, height))) = (terminal, console) {
            p.insert(
                "consoleSize".into(),
                serde_json::json!({"height": height, "width": width}),
            );
        }
    }
    serde_json::to_vec(&process).map_err(|e| format!("encoding the exec process: {e}"))
}

/// An exec's FIFOs, with berthd's ends open. Take the ends out (`stdin`, `stdout`, `stderr`);
/// [`ExecFifos::remove`] unlinks the files.
pub struct ExecFifos {
    paths: Vec<PathBuf>,
    stdio: ExecStdio,
    /// Write end of the stdin FIFO (opened read-write), when the exec has stdin.
    pub stdin: Option<pipe::Sender>,
    /// Read end of the stdout FIFO. Read it only after the shim started the process: a FIFO
    /// read before any writer opened it reports EOF at once.
    pub stdout: Option<pipe::Receiver>,
    /// Read end of the stderr FIFO, when the exec has a separate stderr (no terminal).
    pub stderr: Option<pipe::Receiver>,
}

impl ExecFifos {
    /// Creates `<bundle>/exec/<exec_id>.{in,out,err}`: stdin only when `stdin`, stderr only
    /// without a terminal.
    pub async fn create(
        bundle: &Path,
        exec_id: &str,
        stdin: bool,
        terminal: bool,
    ) -> Result<Self, Error> {
        let dir = bundle.join("exec");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut fifos = Self {
            paths: Vec::new(),
            stdio: ExecStdio {
                terminal,
                ..Default::default()
            },
            stdin: None,
            stdout: None,
            stderr: None,
        };
        if let Err(e) = fifos.open_all(&dir, exec_id, stdin, terminal) {
            fifos.remove().await;
            return Err(e);
        }
        Ok(fifos)
    }

    fn open_all(
        &mut self,
        dir: &Path,
        exec_id: &str,
        stdin: bool,
        terminal: bool,
    ) -> Result<(), Error> {
        if stdin {
            let path = self.make(dir, exec_id, "in")?;
            self.stdin = Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&path)
                    .map_err(|e| Error::io(format!("opening {}", path.display()), e))?,
            );
            self.stdio.stdin = path.display().to_string();
        }
        let path = self.make(dir, exec_id, "out")?;
        self.stdout = Some(open_receiver(&path)?);
        self.stdio.stdout = path.display().to_string();
        if !terminal {
            let path = self.make(dir, exec_id, "err")?;
            self.stderr = Some(open_receiver(&path)?);
            self.stdio.stderr = path.display().to_string();
        }
        Ok(())
    }

    fn make(&mut self, dir: &Path, exec_id: &str, suffix: &str) -> Result<PathBuf, Error> {
        let path = dir.join(format!("{exec_id}.{suffix}"));
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::io(format!("mkfifo {}", path.display()), e.into()))?;
        self.paths.push(path.clone());
        Ok(path)
    }

    /// The paths and terminal flag for the shim's ExecProcessRequest.
    pub fn stdio(&self) -> &ExecStdio {
        &self.stdio
    }

    /// Closes the ends still held and unlinks the FIFOs; failures are logged.
    pub async fn remove(self) {
        drop((self.stdin, self.stdout, self.stderr));
        for path in &self.paths {
            if let Err(e) = tokio::fs::remove_file(path).await {
                tracing::warn!(path = %path.display(), %e, "removing exec FIFO");
            }
        }
    }
}

fn open_receiver(path: &Path) -> Result<pipe::Receiver, Error> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn exec_process_replaces_args_and_terminal() -> anyhow::Result<()> {
        let spec = br#"{"ociVersion":"1.0.2","process":{"terminal":true,"args":["sleep","1d"],
            "env":["A=1"],"cwd":"/w","user":{"uid":1000,"gid":1000},"consoleSize":{"height":1,"width":2}}}"#;
        let out = exec_process(spec, &["id".to_string(), "-u".to_string()], false, None)
            .map_err(anyhow::Error::msg)?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        assert_eq!(v["args"], serde_json::json!(["id", "-u"]));
        assert_eq!(v["env"], serde_json::json!(["A=1"]));
        assert_eq!(v["cwd"], "/w");
        assert_eq!(v["user"]["uid"], 1000);
        assert_eq!(v["terminal"], false);
        assert!(v.get("consoleSize").is_none());

        let out = exec_process(spec, &["sh".to_string()], true, Some((80, 24)))
            .map_err(anyhow::Error::msg)?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        assert_eq!(v["terminal"], true);
        assert_eq!(
            v["consoleSize"],
            serde_json::json!({"height": 24, "width": 80})
        );
        let out = exec_process(spec, &["sh".to_string()], false, Some((80, 24)))
            .map_err(anyhow::Error::msg)?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        assert!(v.get("consoleSize").is_none());

        assert!(exec_process(b"{}", &["x".to_string()], false, None).is_err());
        assert!(exec_process(b"nope", &["x".to_string()], false, None).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn fifos_carry_bytes_and_are_removed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut fifos = ExecFifos::create(dir.path(), "e1", true, false).await?;
        let stdio = fifos.stdio().clone();
        assert!(stdio.stdin.ends_with("e1.in") && stdio.stderr.ends_with("e1.err"));
        // Play the shim: open the other ends.
        let mut shim_in = pipe::OpenOptions::new().open_receiver(&stdio.stdin)?;
        let mut shim_out = pipe::OpenOptions::new().open_sender(&stdio.stdout)?;
        let mut tx = fifos
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        tx.write_all(b"ping").await?;
        drop(tx);
        let mut got = Vec::new();
        shim_in.read_to_end(&mut got).await?;
        assert_eq!(got, b"ping");
        shim_out.write_all(b"pong").await?;
        drop(shim_out);
        let mut rx = fifos
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await?;
        assert_eq!(got, b"pong");
        fifos.remove().await;
        assert_eq!(std::fs::read_dir(dir.path().join("exec"))?.count(), 0);

        let fifos = ExecFifos::create(dir.path(), "e2", false, true).await?;
        assert!(fifos.stdin.is_none() && fifos.stderr.is_none());
        assert!(fifos.stdio().terminal && fifos.stdio().stderr.is_empty());
        fifos.remove().await;
        Ok(())
    }
}
