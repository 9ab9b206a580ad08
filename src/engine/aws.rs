//! The AWS SDK's shared configuration for the engine's S3 and SQS backends.
//!
//! Credentials come only from the SDK's standard chain (environment, profile, the EC2 instance
//! role through IMDSv2), never from the node's configuration. HTTPS goes through rustls on ring.
//! Every call has a timeout and the SDK's own bounded retries: a slow or absent service becomes
//! an error the caller turns into a refusal, never a request that hangs.

use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use crate::events::{emit, CallOutcome, Event};

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

/// Counts and times every call the engine makes to S3 or SQS (retries included), by service,
/// operation and outcome, as [`Event::BackendCall`]. Streaming downloads are timed to their
/// response head: the body is the caller's to read.
#[derive(Debug)]
pub struct Observed;

/// When a call began, kept in the call's configuration bag between two hooks.
#[derive(Debug)]
struct Began(Instant);

impl Storable for Began {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Observed {
    fn name(&self) -> &'static str {
        "showcase-metrics"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Began(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let seconds = cfg
            .load::<Began>()
            .map_or(0.0, |began| began.0.elapsed().as_secs_f64());
        let (service, operation) = cfg
            .load::<Metadata>()
            .map_or(("unknown", "unknown"), |m| (m.service(), m.name()));
        let status = context.response().map(|r| r.status().as_u16());
        let outcome = match context.output_or_error() {
            Some(Ok(_)) => CallOutcome::Ok,
            Some(Err(e)) if e.is_timeout_error() => CallOutcome::Timeout,
            Some(Err(e)) if e.is_connector_error() => CallOutcome::Unreachable,
            _ => match status {
                Some(400..=499) => CallOutcome::ClientError,
                Some(500..=599) => CallOutcome::ServerError,
                _ => CallOutcome::Other,
            },
        };
        emit(Event::BackendCall {
            service: service.to_ascii_lowercase(),
            operation: operation.to_string(),
            outcome,
            seconds,
        });
        Ok(())
    }
}
