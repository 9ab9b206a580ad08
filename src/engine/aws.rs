//! The AWS SDK's shared configuration for the engine's S3 and SQS backends.
//!
//! Credentials come only from the SDK's standard chain (environment, profile, the EC2 instance
//! role through IMDSv2), never from the node's configuration. HTTPS goes through rustls on ring.
//! Every call has a timeout and the SDK's own bounded retries: a slow or absent service becomes
//! an error the caller turns into a refusal, never a request that hangs.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Longest wait for a connection to a service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for one attempt of a call (a part of 8 MiB included), before a retry.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a call, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of one call, the first included.
const MAX_ATTEMPTS: u32 = 3;

/// Where a service is: its region (empty: the SDK's default chain) and endpoint (empty: AWS;
/// set for S3- and SQS-compatible servers).
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub region: String,
    pub endpoint_url: String,
}

/// The SDK configuration for `endpoint`.
pub async fn sdk_config(endpoint: &Endpoint) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    if !endpoint.region.is_empty() {
        loader = loader.region(Region::new(endpoint.region.clone()));
    }
    if !endpoint.endpoint_url.is_empty() {
        loader = loader.endpoint_url(endpoint.endpoint_url.clone());
    }
    loader.load().await
}
