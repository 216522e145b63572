//! The `webhook` sink: POSTs each new token as JSON to a URL.

use std::time::Duration;

use chrono::SecondsFormat;

use super::{Sink, SinkError, SyncFailureReason};
use crate::secret::Secret;
use crate::source::{BoxFuture, build_http_client};
use crate::token::Token;

/// Settings of a `webhook` sink.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookSettings {
    pub url: url::Url,
    /// Header values may carry credentials, so they are secrets.
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub ca_file: Option<std::path::PathBuf>,
}

/// Sends `{"token", "access_token", "token_type", "expires_at"}` to a URL.
/// Any status other than 2xx is a failure, retried by the engine.
#[derive(Debug)]
pub struct WebhookSink {
    id: String,
    settings: WebhookSettings,
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(settings: WebhookSettings) -> Result<Self, String> {
        let client = build_http_client(settings.timeout, settings.ca_file.as_deref())?;
        // The id is a metric label: no query string, which may carry a credential.
        let mut shown = settings.url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        Ok(WebhookSink { id: format!("webhook:{shown}"), settings, client })
    }

    async fn send(&self, token_name: &str, token: &Token) -> Result<(), SinkError> {
        let body = serde_json::json!({
            "token": token_name,
            "access_token": token.access_token.expose(),
            "token_type": token.token_type,
            "expires_at": token.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        });
        let mut request = self.client.post(self.settings.url.clone()).json(&body);
        for (name, value) in &self.settings.headers {
            request = request.header(name.as_str(), value.expose());
        }
        let fail = |reason, what: String| SinkError { reason, message: format!("sink {}: {what}", self.id) };
        let response = request.send().await.map_err(|error| {
            let reason = if error.is_timeout() { SyncFailureReason::Timeout } else { SyncFailureReason::Connect };
            let cause = std::error::Error::source(&error).map(|cause| format!(": {cause}")).unwrap_or_default();
            fail(reason, format!("request failed{cause}"))
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(fail(SyncFailureReason::HttpError, format!("the webhook returned {status}")))
        }
    }
}

impl Sink for WebhookSink {
    fn id(&self) -> &str {
        &self.id
    }

    fn sync<'a>(&'a self, token_name: &'a str, token: &'a Token) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.send(token_name, token))
    }
}
