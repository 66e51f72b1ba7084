//! KEDA's ExternalScaler gRPC service.

use crate::proto::externalscaler::external_scaler_server::ExternalScaler;
use crate::proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use crate::query::EvalError;
use crate::self_metrics::Rpc;
use crate::state::ScalerState;
use crate::trigger::{Trigger, TriggerError, TriggerValue, ceil_to_i64, metric_name};
use aim_policy::PolicyError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Least time between two evaluations of one stream, so a burst of exports
/// does not turn into a burst of queries.
const STREAM_MIN_GAP: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct KedaService {
    state: Arc<ScalerState>,
}

impl KedaService {
    pub fn new(state: Arc<ScalerState>) -> Self {
        KedaService { state }
    }

    fn trigger(&self, reference: &ScaledObjectRef) -> Result<Arc<Trigger>, Status> {
        let metadata: BTreeMap<String, String> = reference
            .scaler_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.state
            .trigger(&metadata)
            .map_err(|e| status_for(&e, reference))
    }

    fn evaluate(&self, rpc: Rpc, reference: &ScaledObjectRef) -> Result<TriggerValue, Status> {
        let started = Instant::now();
        let result = warm(&self.state, reference)
            .and_then(|()| self.trigger(reference))
            .and_then(|t| {
                let value = self
                    .state
                    .evaluate(&t)
                    .map_err(|e| status_for(&e, reference))?;
                self.state
                    .record_decision(&reference.namespace, &reference.name, &t, &value);
                Ok(value)
            });
        self.state
            .metrics
            .record_query(rpc, started.elapsed(), result.is_ok());
        if let Err(status) = &result {
            tracing::debug!(scaledobject = %reference.name, namespace = %reference.namespace, error = %status.message(), "query failed");
        }
        result
    }
}

/// Refuses while the store may hold only some pods' series: right after a
/// (re)start, before every sidecar's next export.
fn warm(state: &ScalerState, reference: &ScaledObjectRef) -> Result<(), Status> {
    match state.warming_up() {
        None => Ok(()),
        Some((up, warmup)) => Err(Status::unavailable(format!(
            "ScaledObject {}/{}: the scaler started {:.1}s ago and answers after its {:.0}s warm-up (--warmup), once every pod's sidecar has exported: an empty or partial store would under-count",
            reference.namespace,
            reference.name,
            up.as_secs_f64(),
            warmup.as_secs_f64()
        ))),
    }
}

/// Maps errors to gRPC codes a human can act on. KEDA counts any error
/// toward its fallback, so the code matters for people reading logs.
fn status_for(error: &TriggerError, reference: &ScaledObjectRef) -> Status {
    let message = format!(
        "ScaledObject {}/{}: {error}",
        reference.namespace, reference.name
    );
    match error {
        TriggerError::MissingKey { .. }
        | TriggerError::InvalidValue { .. }
        | TriggerError::Query(_)
        | TriggerError::Policy(
            PolicyError::Unknown { .. }
            | PolicyError::InvalidParameter { .. }
            | PolicyError::UnknownParameter { .. },
        ) => Status::invalid_argument(message),
        TriggerError::Eval(
            EvalError::UnknownMetric { .. } | EvalError::NoMatchingSeries { .. },
        ) => Status::not_found(message),
        TriggerError::Eval(
            EvalError::AllSeriesStale { .. }
            | EvalError::NoSamplesInWindow { .. }
            | EvalError::NoObservations { .. },
        ) => Status::unavailable(message),
        TriggerError::Eval(
            EvalError::WrongKind { .. } | EvalError::BucketLayoutMismatch { .. },
        )
        | TriggerError::Policy(PolicyError::NotEnoughValues { .. })
        | TriggerError::NotFinite { .. } => Status::failed_precondition(message),
    }
}

#[tonic::async_trait]
impl ExternalScaler for KedaService {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let value = self.evaluate(Rpc::IsActive, request.get_ref())?;
        Ok(Response::new(IsActiveResponse {
            result: value.active,
        }))
    }

    type StreamIsActiveStream = ReceiverStream<Result<IsActiveResponse, Status>>;

    /// Sends the state when the stream opens and then only on a change,
    /// re-evaluating after each export and every `stream_interval`.
    /// Evaluation errors send nothing: KEDA's polling reports them.
    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let reference = request.into_inner();
        let trigger = self.trigger(&reference)?;
        let (sender, receiver) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut ingested = state.subscribe_ingest();
            let mut last: Option<bool> = None;
            loop {
                let started = Instant::now();
                // Nothing is sent while warming up; the stream re-checks
                // every stream interval.
                let result = state
                    .warming_up()
                    .is_none()
                    .then(|| state.evaluate(&trigger));
                state.metrics.record_query(
                    Rpc::StreamIsActive,
                    started.elapsed(),
                    result.as_ref().is_some_and(|r| r.is_ok()),
                );
                if let Some(Ok(value)) = result
                    && last != Some(value.active)
                {
                    if sender
                        .send(Ok(IsActiveResponse {
                            result: value.active,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = Some(value.active);
                }
                tokio::select! {
                    _ = sender.closed() => return,
                    changed = ingested.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tokio::time::sleep(STREAM_MIN_GAP).await;
                    }
                    _ = tokio::time::sleep(state.stream_interval) => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let started = Instant::now();
        let reference = request.get_ref();
        let result = self.trigger(reference);
        self.state
            .metrics
            .record_query(Rpc::GetMetricSpec, started.elapsed(), result.is_ok());
        let trigger = result?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: metric_name(&reference.namespace, &reference.name),
                target_size: ceil_to_i64(trigger.target),
                target_size_float: trigger.target,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let reference = request.scaled_object_ref.ok_or_else(|| {
            Status::invalid_argument(
                "GetMetricsRequest.scaledObjectRef is missing; KEDA always sets it",
            )
        })?;
        let value = self.evaluate(Rpc::GetMetrics, &reference)?;
        let name = if request.metric_name.is_empty() {
            metric_name(&reference.namespace, &reference.name)
        } else {
            request.metric_name
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: name,
                metric_value: ceil_to_i64(value.value),
                metric_value_float: value.value,
            }],
        }))
    }
}
