//! HTTP plumbing shared by the HTTP-based sources: reading a response body
//! up to a size limit and classifying transport errors.

use reqwest::header::RETRY_AFTER;

use super::response::MAX_BODY_BYTES;
use super::{FailureReason, SourceError};

/// Reads status, `Retry-After` and at most [`MAX_BODY_BYTES`] of the body.
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    token_name: &str,
    url: &url::Url,
) -> Result<(u16, Option<String>, Vec<u8>), SourceError> {
    let status = response.status().as_u16();
    let retry_after = response.headers().get(RETRY_AFTER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| transport_error(token_name, url, &error))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(SourceError {
                reason: FailureReason::InvalidResponse,
                message: format!("{url} returned a body larger than {MAX_BODY_BYTES} bytes for token `{token_name}`"),
                status: Some(status),
                retry_after: None,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, retry_after, body))
}

/// Classifies a request that got no complete response.
pub(super) fn transport_error(token_name: &str, url: &url::Url, error: &reqwest::Error) -> SourceError {
    let (reason, what) = if error.is_timeout() {
        (FailureReason::Timeout, "timed out")
    } else if error.is_connect() {
        (FailureReason::Connect, "failed to connect")
    } else if error.is_body() || error.is_decode() {
        (FailureReason::Connect, "failed while reading the response")
    } else {
        (FailureReason::Connect, "failed")
    };
    // reqwest errors name the URL and the cause, never the request body.
    let cause = std::error::Error::source(error).map(|cause| format!(": {cause}")).unwrap_or_default();
    SourceError::new(reason, format!("request to {url} for token `{token_name}` {what}{cause}"))
}
