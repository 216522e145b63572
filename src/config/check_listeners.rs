//! Validation of the token API and the injecting proxies.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::resolve::{ApiListen, Checker, ResolvedApi, ResolvedProxy, line_of};
use super::types::{ApiConfig, ProxyConfig};

/// Default largest request body kept for a replay after a 401.
pub const DEFAULT_REPLAY_BODY_LIMIT: u64 = 1024 * 1024;
/// Default permission bits of the token API's Unix socket.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

impl Checker<'_> {
    pub(super) fn api(&mut self, api: &Spanned<ApiConfig>) -> Option<ResolvedApi> {
        let config = &api.value;
        let listen = self.api_listen(&config.listen)?;
        let socket_mode = match &config.socket_mode {
            None => DEFAULT_SOCKET_MODE,
            Some(mode) => match u32::from_str_radix(mode.value.trim_start_matches("0o"), 8) {
                Ok(bits) if bits <= 0o777 => bits,
                _ => {
                    self.problem("api.socket_mode", line_of(mode), format!("invalid mode `{}`: use octal bits as a string, such as \"0600\"", mode.value));
                    return None;
                }
            },
        };
        let bearer_token = match (&config.bearer_token_file, &listen, config.unix_socket_permissions_only) {
            (Some(file), _, _) => Some(self.secret_file(file, "api.bearer_token_file")?.0),
            (None, ApiListen::Unix(_), true) => None,
            (None, ApiListen::Tcp(_), _) => {
                self.problem("api.bearer_token_file", line_of(api), "a TCP token API needs bearer_token_file");
                return None;
            }
            (None, ApiListen::Unix(_), false) => {
                self.problem(
                    "api.bearer_token_file",
                    line_of(api),
                    "set bearer_token_file, or set unix_socket_permissions_only: true to rely on the socket's file permissions alone",
                );
                return None;
            }
        };
        if let ApiListen::Unix(socket) = &listen {
            self.writable_parent(socket, "api.listen", line_of(&config.listen));
        }
        Some(ResolvedApi { listen, bearer_token, socket_mode })
    }

    fn api_listen(&mut self, listen: &Spanned<String>) -> Option<ApiListen> {
        let text = listen.value.trim();
        if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                self.problem("api.listen", line_of(listen), "unix:// needs a socket path, as in unix:///run/tokensync/api.sock");
                return None;
            }
            return Some(ApiListen::Unix(PathBuf::from(path)));
        }
        let Some(address) = text.strip_prefix("tcp://") else {
            self.problem("api.listen", line_of(listen), format!(
                "invalid listen address `{text}`: use unix:///PATH or tcp://127.0.0.1:PORT"
            ));
            return None;
        };
        let address = self.loopback_address(address, "api.listen", line_of(listen))?;
        Some(ApiListen::Tcp(address))
    }

    /// Parses `HOST:PORT` and accepts only loopback addresses: the token API
    /// and the proxies hand out tokens without TLS.
    fn loopback_address(&mut self, text: &str, path: &str, line: Option<u64>) -> Option<SocketAddr> {
        let address = match text.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) if text.starts_with("localhost:") => match text["localhost:".len()..].parse::<u16>() {
                Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
                Err(_) => {
                    self.problem(path, line, format!("invalid port in `{text}`"));
                    return None;
                }
            },
            Err(_) => {
                self.problem(path, line, format!("invalid address `{text}`: use IP:PORT, as in 127.0.0.1:8081"));
                return None;
            }
        };
        if !address.ip().is_loopback() {
            self.problem(path, line, format!(
                "{address} is not a loopback address; tokensync serves tokens without TLS, so it listens only on loopback or a Unix socket"
            ));
            return None;
        }
        Some(address)
    }

    /// Reports two listeners of the configuration on one port.
    pub(super) fn port_clashes(&mut self, web: Option<&Spanned<String>>, api: Option<&ResolvedApi>, proxies: &[ResolvedProxy]) {
        let mut taken: Vec<(String, SocketAddr)> = Vec::new();
        if let Some(address) = web.and_then(|web| web.value.parse::<SocketAddr>().ok()) {
            taken.push(("web.listen_address".to_owned(), address));
        }
        if let Some(ApiListen::Tcp(address)) = api.map(|api| &api.listen) {
            taken.push(("api.listen".to_owned(), *address));
        }
        for (index, proxy) in proxies.iter().enumerate() {
            taken.push((format!("proxies[{index}].listen"), proxy.listen));
        }
        for (index, (name, address)) in taken.iter().enumerate() {
            if let Some((other, _)) = taken[..index].iter().find(|(_, earlier)| listeners_clash(*earlier, *address)) {
                self.problem(name.clone(), None, format!("{address} is also used by {other}; give each listener its own port"));
            }
        }
    }

    pub(super) fn proxies(&mut self, proxies: &[Spanned<ProxyConfig>], tokens: &HashSet<String>, default_timeout: Duration) -> Vec<ResolvedProxy> {
        let mut names = HashSet::new();
        let mut resolved = Vec::new();
        for (index, proxy) in proxies.iter().enumerate() {
            let path = format!("proxies[{index}]");
            let config = &proxy.value;
            if !names.insert(config.name.value.clone()) {
                self.problem(format!("{path}.name"), line_of(&config.name), format!("proxy name `{}` is used twice", config.name.value));
            }
            if !tokens.contains(&config.token.value) {
                self.problem(format!("{path}.token"), line_of(&config.token), format!("no token named `{}` is configured", config.token.value));
            }
            let listen = self.loopback_address(config.listen.value.trim(), &format!("{path}.listen"), line_of(&config.listen));
            let upstream = self.url(&config.upstream, &format!("{path}.upstream"));
            let ca_file = self.readable_file(config.ca_file.as_ref(), &format!("{path}.ca_file"));
            let (Some(listen), Some(upstream), Some(ca_file)) = (listen, upstream, ca_file) else { continue };
            resolved.push(ResolvedProxy {
                name: config.name.value.clone(),
                listen,
                upstream,
                token: config.token.value.clone(),
                ca_file,
                timeout: config.timeout.map_or(default_timeout.max(Duration::from_secs(30)), |value| value.0),
                replay_body_limit: config.replay_body_limit.as_ref().map_or(DEFAULT_REPLAY_BODY_LIMIT, |limit| limit.value),
            });
        }
        resolved
    }
}

/// Returns whether two listen addresses cannot both be bound: the same port,
/// on the same IP or with either one on all addresses (`0.0.0.0`, `::`).
/// Port 0 never clashes, because the system picks a free port for each.
pub fn listeners_clash(first: SocketAddr, second: SocketAddr) -> bool {
    first.port() == second.port()
        && first.port() != 0
        && (first.ip() == second.ip() || first.ip().is_unspecified() || second.ip().is_unspecified())
}
