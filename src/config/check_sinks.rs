//! Validation of sinks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::resolve::{Checker, DEFAULT_FILE_MODE, ResolvedSink, SessionKeyEntry, expand_env, line_of};
use super::types::{FileFormatConfig, SinkConfig, SinkType};
use crate::secret::Secret;
use crate::sink::{ExecSinkAction, FileFormat, WebhookSettings};

/// Default time for one webhook delivery or command run.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(10);

impl Checker<'_> {
    pub(super) fn sink(
        &mut self,
        sink: &Spanned<SinkConfig>,
        path: &str,
        stores: &mut BTreeMap<PathBuf, SessionKeyEntry>,
    ) -> Option<ResolvedSink> {
        let config = &sink.value;
        let line = line_of(sink);
        self.foreign_sink_keys(sink, path);
        let timeout = config.timeout.map_or(DEFAULT_SINK_TIMEOUT, |value| value.0);

        match config.kind {
            SinkType::File | SinkType::SessionStore => {
                let Some(target) = &config.path else {
                    self.problem(format!("{path}.path"), line, "path is missing");
                    return None;
                };
                let target_path = PathBuf::from(self.expand(target, &format!("{path}.path"))?);
                self.writable_parent(&target_path, &format!("{path}.path"), line_of(target));
                if config.kind == SinkType::File {
                    Some(self.file_sink(config, target_path, path))
                } else {
                    self.session_store_sink(config, target_path, path, line, stores)
                }
            }
            SinkType::Webhook => {
                let Some(url) = &config.url else {
                    self.problem(format!("{path}.url"), line, "url is missing");
                    return None;
                };
                let url = self.url(url, &format!("{path}.url"));
                let mut headers = Vec::new();
                for (name, value) in &config.headers {
                    match expand_env(value, self.env) {
                        Ok(value) => headers.push((name.clone(), Secret::new(value))),
                        Err(message) => self.problem(format!("{path}.headers.{name}"), line, message),
                    }
                }
                let ca_file = self.readable_file(config.ca_file.as_ref(), &format!("{path}.ca_file"))?;
                Some(ResolvedSink::Webhook(WebhookSettings { url: url?, headers, timeout, ca_file }))
            }
            SinkType::Exec => {
                let action = match (&config.command, &config.pid_file) {
                    (Some(_), Some(pid_file)) => {
                        self.problem(format!("{path}.pid_file"), line_of(pid_file), "set command or pid_file, not both");
                        return None;
                    }
                    (Some(command), None) if command.value.first().is_some_and(|program| !program.is_empty()) => {
                        ExecSinkAction::Command(command.value.clone())
                    }
                    (Some(command), None) => {
                        self.problem(format!("{path}.command"), line_of(command), "command is empty");
                        return None;
                    }
                    (None, Some(pid_file)) => {
                        let signal = match &config.signal {
                            None => libc::SIGHUP,
                            Some(name) => match signal_number(&name.value) {
                                Some(number) => number,
                                None => {
                                    self.problem(format!("{path}.signal"), line_of(name), format!(
                                        "unknown signal `{}`: use HUP, USR1, USR2, TERM or INT", name.value
                                    ));
                                    return None;
                                }
                            },
                        };
                        let pid_file = PathBuf::from(self.expand(pid_file, &format!("{path}.pid_file"))?);
                        ExecSinkAction::Signal { pid_file, signal }
                    }
                    (None, None) => {
                        self.problem(path, line, "an exec sink needs command (run with the token on stdin) or pid_file (send a signal)");
                        return None;
                    }
                };
                Some(ResolvedSink::Exec { action, timeout })
            }
        }
    }

    fn file_sink(&mut self, config: &SinkConfig, target: PathBuf, path: &str) -> ResolvedSink {
        let format = match config.format.unwrap_or_default() {
            FileFormatConfig::Raw => FileFormat::Raw,
            FileFormatConfig::Json => FileFormat::Json,
        };
        let mode = match &config.mode {
            None => DEFAULT_FILE_MODE,
            Some(mode) => match u32::from_str_radix(mode.value.trim_start_matches("0o"), 8) {
                Ok(bits) if bits <= 0o777 => bits,
                _ => {
                    self.problem(format!("{path}.mode"), line_of(mode), format!(
                        "invalid mode `{}`: use octal permission bits as a string, such as \"0600\"", mode.value
                    ));
                    DEFAULT_FILE_MODE
                }
            },
        };
        ResolvedSink::File { path: target, format, mode }
    }

    fn session_store_sink(
        &mut self,
        config: &SinkConfig,
        target: PathBuf,
        path: &str,
        line: Option<u64>,
        stores: &mut BTreeMap<PathBuf, SessionKeyEntry>,
    ) -> Option<ResolvedSink> {
        let key = match (&config.key_file, &config.key_env) {
            (Some(_), Some(env)) => {
                self.problem(format!("{path}.key_env"), line_of(env), "set key_file or key_env, not both");
                None
            }
            (Some(file), None) => self.key_from_file(file, &format!("{path}.key_file")),
            (None, Some(env)) => match (self.env)(&env.value) {
                Some(text) => self.parse_key(&text, &format!("{path}.key_env"), line_of(env), &format!("environment variable {}", env.value)),
                None => {
                    self.problem(format!("{path}.key_env"), line_of(env), format!("environment variable {} is not set", env.value));
                    None
                }
            },
            (None, None) => {
                self.problem(path, line, "a session_store needs key_file or key_env");
                None
            }
        }?;
        let key = SessionKeyEntry(key);
        match stores.get(&target) {
            Some(existing) if *existing != key => {
                self.problem(path, line, format!("{} is used with two different keys", target.display()));
            }
            _ => {
                stores.insert(target.clone(), key);
            }
        }
        Some(ResolvedSink::SessionStore { path: target })
    }

    /// Reports keys set on a sink type they do not belong to.
    fn foreign_sink_keys(&mut self, sink: &Spanned<SinkConfig>, path: &str) {
        let config = &sink.value;
        let kind = config.kind;
        let keys: [(&str, bool, bool); 12] = [
            ("path", config.path.is_some(), matches!(kind, SinkType::File | SinkType::SessionStore)),
            ("format", config.format.is_some(), kind == SinkType::File),
            ("mode", config.mode.is_some(), kind == SinkType::File),
            ("key_file", config.key_file.is_some(), kind == SinkType::SessionStore),
            ("key_env", config.key_env.is_some(), kind == SinkType::SessionStore),
            ("url", config.url.is_some(), kind == SinkType::Webhook),
            ("headers", !config.headers.is_empty(), kind == SinkType::Webhook),
            ("ca_file", config.ca_file.is_some(), kind == SinkType::Webhook),
            ("timeout", config.timeout.is_some(), matches!(kind, SinkType::Webhook | SinkType::Exec)),
            ("command", config.command.is_some(), kind == SinkType::Exec),
            ("pid_file", config.pid_file.is_some(), kind == SinkType::Exec),
            ("signal", config.signal.is_some(), kind == SinkType::Exec && config.pid_file.is_some()),
        ];
        let type_name = match kind {
            SinkType::File => "file",
            SinkType::SessionStore => "session_store",
            SinkType::Webhook => "webhook",
            SinkType::Exec => "exec",
        };
        for (key, present, allowed) in keys {
            if present && !allowed {
                self.problem(format!("{path}.{key}"), line_of(sink), format!("{key} does not belong to a sink of type {type_name}"));
            }
        }
    }
}

/// Maps a signal name (`HUP` or `SIGHUP`) to its number.
fn signal_number(name: &str) -> Option<i32> {
    match name.trim().trim_start_matches("SIG").to_ascii_uppercase().as_str() {
        "HUP" => Some(libc::SIGHUP),
        "USR1" => Some(libc::SIGUSR1),
        "USR2" => Some(libc::SIGUSR2),
        "TERM" => Some(libc::SIGTERM),
        "INT" => Some(libc::SIGINT),
        _ => None,
    }
}
