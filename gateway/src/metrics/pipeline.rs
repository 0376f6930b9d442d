//! What the pipeline and the routes count (`ferry_pipeline_*`,
//! `ferry_route_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

use super::RouteReasonLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub reason: String,
}

impl StepLabels {
    pub fn new(step: &str, reason: &str) -> Self {
        StepLabels {
            step: step.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

metric_set! {
    /// What the pipeline and the routes count (`ferry_pipeline_*`, `ferry_route_*`).
    pub struct PipelineMetrics {
        "pipeline" {
            /// Records that entered the pipeline.
            records_in: Counter
                => "records_in", "Records that entered the pipeline";
            /// Records the pipeline dropped (any step).
            records_out_dropped: Counter
                => "records_filtered", "Records the pipeline dropped, all steps";
            /// Records a step dropped, by step and reason (`filtered`, or why the
            /// filter could not be evaluated: `missing_field`, `wrong_type`, ...).
            records_dropped: Family<StepLabels, Counter>
                => "records_dropped", "Records a step dropped, by step and reason";
            /// Values a step could not compute, by step and reason.
            errors: Family<StepLabels, Counter>
                => "errors", "Values a step could not compute, by step and reason";
        }
        "route" {
            /// Stored records a route has read, by route.
            route_records_in: Family<RouteLabel, Counter>
                => "records_in", "Stored records a route has read";
            /// Records a route has emitted to its output stream, by route.
            route_records_out: Family<RouteLabel, Counter>
                => "records_out", "Records a route has emitted";
            /// Values a route did not use, by route and reason (`too_late`,
            /// `not_finite`, `bad_time`, `undecodable`).
            route_dropped: Family<RouteReasonLabels, Counter>
                => "values_dropped", "Values a route did not use, by reason";
            /// Route commits (output, state and cursor in one transaction).
            route_commits: Family<RouteLabel, Counter>
                => "commits", "Route commits (output, state and cursor together)";
            /// The last stored sequence number each route has processed.
            route_seq: Family<RouteLabel, Gauge<u64, AtomicU64>>
                => "seq", "Last stored sequence number a route has processed";
        }
    }
}
