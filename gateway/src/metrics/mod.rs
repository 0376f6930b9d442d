//! Prometheus metrics: one registry, built in `main` and handed to each
//! component, which registers its own metrics under its own prefix.
//!
//! Every metric Ferry exports is declared in this folder, one file per
//! component, each metric once (its field, name, help text and unit, with
//! `metric_set!`), so the mapping from events to metric names is in one
//! place. Names follow Prometheus conventions: `ferry_` prefix, counters end
//! in `_total`, base units.
//!
//! | file | metrics |
//! | --- | --- |
//! | `mod.rs` | the registry, `ferry_build_info`, the label sets several components use |
//! | `ingest.rs` | the ingest writer and the store (`ferry_ingest_*`, `ferry_store_*`) |
//! | `uplink.rs` | the uplinks (`ferry_uplink_*`) |
//! | `modbus.rs` | the Modbus sources and their observer (`ferry_modbus_*`) |
//! | `broker.rs` | the embedded broker sources and their observer (`ferry_source_*`) |
//! | `pipeline.rs` | the pipeline and the routes (`ferry_pipeline_*`, `ferry_route_*`) |
//! | `query.rs` | the query index (`ferry_query_*`) |
//! | `api.rs` | the query API (`ferry_api_*`) |
//! | `http.rs` | the HTTP listeners' connections (`ferry_http_*`) |
//! | `reload.rs` | config reloads (`ferry_config_*`) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Declares a set of metrics, each once: its field (with its type, and
/// `= constructor` when `Default::default()` will not do), the name it is
/// registered under (`in Unit` adds a unit: `Seconds`, `Bytes`) and its
/// help text, grouped by the prefix of their sub-registry (`"ingest" { .. }`
/// registers `ferry_ingest_*`).
///
/// Makes the struct (`Clone`, `Debug`, every field public), `new` (and
/// `Default`), and `register`, which registers the fields in their order.
macro_rules! metric_set {
    (@init) => { Default::default() };
    (@init $init:expr) => { $init };
    (@register $r:ident, $name:literal, $help:literal, $value:expr) => {
        $r.register($name, $help, $value)
    };
    (@register $r:ident, $name:literal, $help:literal, $value:expr, $unit:ident) => {
        $r.register_with_unit(
            $name,
            $help,
            prometheus_client::registry::Unit::$unit,
            $value,
        )
    };
    (
        $(#[$meta:meta])*
        pub struct $set:ident {
            $($prefix:literal {
                $(
                    $(#[$field_meta:meta])*
                    $field:ident: $ty:ty $(= $init:expr)?
                        => $name:literal $(in $unit:ident)?, $help:literal;
                )*
            })*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $set {
            $($(
                $(#[$field_meta])*
                pub $field: $ty,
            )*)*
        }

        impl Default for $set {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $set {
            pub fn new() -> Self {
                $set {
                    $($($field: metric_set!(@init $($init)?),)*)*
                }
            }

            pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
                $({
                    let r = registry.sub_registry_with_prefix($prefix);
                    $(metric_set!(@register r, $name, $help, self.$field.clone() $(, $unit)?);)*
                })*
            }
        }
    };
}

mod api;
mod broker;
mod fleet;
mod http;
mod ingest;
mod modbus;
mod pipeline;
mod query;
mod reload;
mod uplink;

pub use api::ApiMetrics;
pub use broker::{BrokerMetrics, DeniedLabels, LimitLabels, LoginLabels};
pub use fleet::FleetMetrics;
pub use http::{ListenerLabel, ListenerMetrics, ListenerReasonLabels};
pub use ingest::{DataLabel, IngestMetrics, RejectLabels};
pub use modbus::{DeviceErrorLabels, DeviceExceptionLabels, DeviceLabels, ModbusMetrics};
pub use pipeline::{PipelineMetrics, RouteLabel, StepLabels};
pub use query::QueryMetrics;
pub use reload::{ConfigMetrics, ResultLabel};
pub use uplink::{UplinkLabel, UplinkMetrics};

/// A fresh registry with Ferry's prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("ferry")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub arch: String,
}

/// `ferry_build_info{version, arch} 1`: which build is running (a constant
/// gauge, the Prometheus convention for build information).
pub fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
    })
    .set(1);
    registry.register("build_info", "The running build of Ferry (always 1)", info);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabels {
    pub route: String,
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
