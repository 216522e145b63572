//! Turning a resolved configuration into engine token specs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::resolve::{Problem, ResolvedConfig, ResolvedSink, ResolvedSource, SessionKeyEntry};
use super::types::SourceType;
use crate::engine::TokenSpec;
use crate::sink::{ExecSink, FileSink, LoadProblem, SessionStore, Sink, WebhookSink};
use crate::source::{ClientCredentials, ExecSource, FileSource, HttpLogin, RefreshTokenGrant, Source};

/// Token specs built from a configuration, with what opening the session
/// stores found wrong (logged by the caller; none of it is fatal).
pub struct BuiltTokens {
    pub specs: Vec<TokenSpec>,
    pub store_problems: Vec<LoadProblem>,
}

/// Session stores opened so far, by path. A store is opened once per process
/// and shared by every token that uses it, across reloads, so that two
/// tokens never rewrite one file from two different in-memory copies.
pub type StoreCache = HashMap<PathBuf, (SessionKeyEntry, SessionStore)>;

/// Builds sources, sinks and specs. Fails only where building needs more
/// than validation checked (an unparsable CA file, say).
pub fn build(config: &ResolvedConfig, stores: &mut StoreCache) -> Result<BuiltTokens, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut store_problems = Vec::new();

    for (path, key) in &config.stores {
        let reusable = stores.get(path).is_some_and(|(cached_key, _)| cached_key == key);
        if !reusable {
            let (store, found) = SessionStore::open(path, &key.0);
            store_problems.extend(found);
            stores.insert(path.clone(), (key.clone(), store));
        }
    }

    let mut specs = Vec::new();
    for (index, token) in config.tokens.iter().enumerate() {
        let source = match build_source(&token.source) {
            Ok(source) => source,
            Err(message) => {
                problems.push(Problem { path: format!("tokens[{index}].source"), line: None, message });
                continue;
            }
        };

        let mut spec = TokenSpec::new(token.name.clone(), Some(source));
        for sink in &token.sinks {
            match sink {
                ResolvedSink::File { path, format, mode } => {
                    spec.sinks.push(Arc::new(FileSink::new(path.clone(), *format, *mode)));
                }
                ResolvedSink::Webhook(settings) => match WebhookSink::new(settings.clone()) {
                    Ok(sink) => spec.sinks.push(Arc::new(sink)),
                    Err(message) => problems.push(Problem { path: format!("tokens[{index}].sinks"), line: None, message }),
                },
                ResolvedSink::Exec { action, timeout } => {
                    spec.sinks.push(Arc::new(ExecSink::new(action.clone(), *timeout)));
                }
                ResolvedSink::SessionStore { path } => {
                    let Some((_, store)) = stores.get(path) else {
                        problems.push(Problem {
                            path: format!("tokens[{index}].sinks"),
                            line: None,
                            message: format!("session store {} has no key", path.display()),
                        });
                        continue;
                    };
                    spec.sinks.push(Arc::new(store.clone()) as Arc<dyn Sink>);
                    spec.session_store.get_or_insert_with(|| store.clone());
                }
            }
        }
        spec.policy = token.policy;
        spec.backoff = token.backoff;
        spec.fallback_lifetime = token.fallback_lifetime;
        specs.push(spec);
    }

    if problems.is_empty() { Ok(BuiltTokens { specs, store_problems }) } else { Err(problems) }
}

fn build_source(source: &ResolvedSource) -> Result<Arc<dyn Source>, String> {
    match source {
        ResolvedSource::OAuth2 { grant: SourceType::Oauth2RefreshToken, settings, refresh_token, refresh_token_modified_at } => {
            let initial = refresh_token.clone().ok_or("refresh_token is missing")?;
            Ok(Arc::new(RefreshTokenGrant::new(settings.clone(), initial, *refresh_token_modified_at)?))
        }
        ResolvedSource::OAuth2 { settings, .. } => Ok(Arc::new(ClientCredentials::new(settings.clone())?)),
        ResolvedSource::HttpLogin(settings) => Ok(Arc::new(HttpLogin::new(settings.clone())?)),
        ResolvedSource::Exec(settings) => Ok(Arc::new(ExecSource::new(settings.clone())?)),
        ResolvedSource::File(settings) => Ok(Arc::new(FileSource::new(settings.clone()))),
    }
}
