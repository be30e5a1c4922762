//! Executing one CNI plugin binary per the CNI spec: environment, config on stdin, result or error on stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::NetworkError;

/// The environment of one plugin call (everything but the config on stdin).
#[derive(Debug, Clone)]
pub struct PluginEnv<'a> {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: &'a str,
    /// `CNI_NETNS`: the pinned network namespace.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    /// Searched in order for the plugin binary; also `CNI_PATH`.
    pub bin_dirs: &'a [PathBuf],
    /// The plugin is killed after this long.
    pub timeout: Duration,
}

/// Finds a plugin binary in the bin dirs.
pub fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    bin_dirs
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
}

/// Runs one plugin; returns its stdout (the result; empty for DEL). Blocking: call from a blocking thread.
pub fn exec_plugin(
    plugin: &str,
    env: &PluginEnv<'_>,
    config: &Value,
) -> Result<Vec<u8>, NetworkError> {
    let binary = find_plugin(env.bin_dirs, plugin).ok_or_else(|| NetworkError::PluginNotFound {
        plugin: plugin.to_owned(),
        dirs: env
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    })?;
    let cni_path = std::env::join_paths(env.bin_dirs).map_err(|e| NetworkError::Plugin {
        plugin: plugin.to_owned(),
        message: format!("bad CNI_PATH: {e}"),
    })?;
    let stdin_data = serde_json::to_vec(config).map_err(|e| NetworkError::Plugin {
        plugin: plugin.to_owned(),
        message: format!("encoding config: {e}"),
    })?;
    let spawn_err = |source| NetworkError::Io {
        context: format!("running CNI plugin {}", binary.display()),
        source,
    };
    let mut child = Command::new(&binary)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", env.command)
        .env("CNI_CONTAINERID", env.container_id)
        .env("CNI_NETNS", env.netns)
        .env("CNI_IFNAME", env.ifname)
        .env("CNI_ARGS", env.args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;

    let stdout_reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        })
    });
    let stderr_reader = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.take(64 * 1024).read_to_end(&mut buf);
            buf
        })
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its config gives EPIPE here; its exit status tells why.
        let _ = stdin.write_all(&stdin_data);
    }

    let deadline = Instant::now() + env.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetworkError::Timeout {
                    plugin: plugin.to_owned(),
                    command: env.command.to_owned(),
                    after: env.timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(NetworkError::Io {
                    context: format!("waiting for CNI plugin {plugin}"),
                    source,
                })
            }
        }
    };
    let stdout = stdout_reader
        .and_then(|h| h.join().ok())
        .unwrap_or_default();
    let stderr = stderr_reader
        .and_then(|h| h.join().ok())
        .unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(NetworkError::Plugin {
        plugin: plugin.to_owned(),
        message: error_message(&stdout, &stderr, &status.to_string()),
    })
}

/// The message of a failed plugin: the CNI error object on stdout (`code`, `msg`, `details`), else stderr.
pub fn error_message(stdout: &[u8], stderr: &[u8], status: &str) -> String {
    if let Ok(Value::Object(err)) = serde_json::from_slice::<Value>(stdout) {
        let msg = err.get("msg").and_then(Value::as_str).unwrap_or("");
        if !msg.is_empty() {
            let code = err
                .get("code")
                .and_then(Value::as_u64)
                .map(|c| format!(" (code {c})"))
                .unwrap_or_default();
            let details = match err.get("details").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!(": {d}"),
                _ => String::new(),
            };
            return format!("{msg}{details}{code}");
        }
    }
    let text = String::from_utf8_lossy(if stderr.trim_ascii().is_empty() {
        stdout
    } else {
        stderr
    });
    let text = text.trim();
    if text.is_empty() {
        format!("plugin failed with {status}")
    } else {
        format!("{text} ({status})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_is_preferred() {
        let out =
            br#"{"cniVersion":"1.0.0","code":7,"msg":"failed to allocate","details":"range full"}"#;
        assert_eq!(
            error_message(out, b"noise", "exit status: 1"),
            "failed to allocate: range full (code 7)"
        );
    }

    #[test]
    fn stderr_then_status_otherwise() {
        assert_eq!(
            error_message(b"", b"boom\n", "exit status: 2"),
            "boom (exit status: 2)"
        );
        assert_eq!(
            error_message(b"", b"", "exit status: 2"),
            "plugin failed with exit status: 2"
        );
    }

    #[test]
    fn runs_a_plugin_with_the_cni_environment_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("echoer");
        std::fs::write(&script, "#!/bin/sh\necho \"{\\\"cmd\\\":\\\"$CNI_COMMAND\\\",\\\"ifname\\\":\\\"$CNI_IFNAME\\\",\\\"in\\\":$(cat)}\"\n").unwrap();
        let sleeper = dir.path().join("sleeper");
        std::fs::write(&sleeper, "#!/bin/sh\nexec sleep 5\n").unwrap();
        let failer = dir.path().join("failer");
        std::fs::write(
            &failer,
            "#!/bin/sh\necho '{\"code\":11,\"msg\":\"nope\"}'\nexit 1\n",
        )
        .unwrap();
        for f in [&script, &sleeper, &failer] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let dirs = vec![dir.path().to_path_buf()];
        let env = PluginEnv {
            command: "ADD",
            container_id: "c1",
            netns: Path::new("/proc/self/ns/net"),
            ifname: "eth0",
            args: "IgnoreUnknown=1",
            bin_dirs: &dirs,
            timeout: Duration::from_millis(500),
        };
        let out = exec_plugin("echoer", &env, &serde_json::json!({"a": 1})).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cmd"], "ADD");
        assert_eq!(v["ifname"], "eth0");
        assert_eq!(v["in"]["a"], 1);
        assert!(matches!(
            exec_plugin("sleeper", &env, &Value::Null),
            Err(NetworkError::Timeout { .. })
        ));
        let err = exec_plugin("failer", &env, &Value::Null)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope (code 11)"), "{err}");
        assert!(matches!(
            exec_plugin("absent", &env, &Value::Null),
            Err(NetworkError::PluginNotFound { .. })
        ));
    }
}
