//! The `exec` sink: runs a command with each new token on its standard
//! input, or signals a process named by a pid file so that it re-reads a
//! token file. The token is never put in the arguments or the environment,
//! where other local users could read it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Sink, SinkError, SyncFailureReason};
use crate::source::BoxFuture;
use crate::source::response::sanitize_body_redacting;
use crate::token::Token;

/// Action of an exec sink for each new token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecSinkAction {
    /// Run a program (no shell) with the access token on standard input.
    Command(Vec<String>),
    /// Send `signal` to the process whose pid is in `pid_file`.
    Signal { pid_file: PathBuf, signal: i32 },
}

/// Runs a command or sends a signal after each new token.
#[derive(Debug)]
pub struct ExecSink {
    id: String,
    action: ExecSinkAction,
    timeout: Duration,
}

impl ExecSink {
    pub fn new(action: ExecSinkAction, timeout: Duration) -> Self {
        let id = match &action {
            ExecSinkAction::Command(command) => format!("exec:{}", command.first().map_or("", String::as_str)),
            ExecSinkAction::Signal { pid_file, .. } => format!("signal:{}", pid_file.display()),
        };
        ExecSink { id, action, timeout }
    }

    async fn run(&self, token: &Token) -> Result<(), SinkError> {
        let fail = |reason, what: String| SinkError { reason, message: format!("sink {}: {what}", self.id) };
        match &self.action {
            ExecSinkAction::Signal { pid_file, signal } => {
                let text = tokio::fs::read_to_string(pid_file)
                    .await
                    .map_err(|error| SinkError::io(&self.id, "reading the pid file", &error))?;
                let pid: libc::pid_t = text
                    .trim()
                    .parse()
                    .ok()
                    .filter(|pid| *pid > 0)
                    .ok_or_else(|| fail(SyncFailureReason::ExecFailed, format!("{} holds no valid pid", pid_file.display())))?;
                // SAFETY: kill(2) takes plain integers and has no memory effects.
                if unsafe { libc::kill(pid, *signal) } == 0 {
                    Ok(())
                } else {
                    let error = std::io::Error::last_os_error();
                    Err(fail(SyncFailureReason::ExecFailed, format!("cannot signal pid {pid}: {error}")))
                }
            }
            ExecSinkAction::Command(command) => {
                let program = &command[0];
                let mut child = tokio::process::Command::new(program)
                    .args(&command[1..])
                    .env_clear()
                    .envs(crate::source::inherited_environment())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|error| fail(SyncFailureReason::ExecFailed, format!("cannot run {program}: {error}")))?;
                let mut stdin = child.stdin.take().expect("stdin is piped");
                let work = async {
                    // A command that does not read its input fails the write; its exit status decides.
                    let _ = stdin.write_all(token.access_token.expose().as_bytes()).await;
                    drop(stdin);
                    child.wait_with_output().await
                };
                let output = match tokio::time::timeout(self.timeout, work).await {
                    Err(_) => return Err(fail(SyncFailureReason::Timeout, format!("{program} did not finish within {:?}", self.timeout))),
                    Ok(Err(error)) => return Err(fail(SyncFailureReason::ExecFailed, format!("waiting for {program} failed: {error}"))),
                    Ok(Ok(output)) => output,
                };
                if output.status.success() {
                    Ok(())
                } else {
                    let code = output.status.code().map_or("a signal".to_owned(), |code| format!("exit status {code}"));
                    Err(fail(SyncFailureReason::ExecFailed, format!("{program} failed with {code} (stderr: {})", sanitize_body_redacting(&output.stderr, &[token.access_token.expose()]))))
                }
            }
        }
    }
}

impl Sink for ExecSink {
    fn id(&self) -> &str {
        &self.id
    }

    fn sync<'a>(&'a self, _token_name: &'a str, token: &'a Token) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.run(token))
    }
}
