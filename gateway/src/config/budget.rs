//! The file descriptor budget of the listeners.
//!
//! Every connection a listener accepts holds a descriptor; a process out of
//! them (`EMFILE`) can accept nothing more on any listener and open no file,
//! so the listeners' caps together must stay well below the process's limit
//! (`LimitNOFILE=8192` in `systemd/ferry.service`), leaving room for the
//! rest: the store, uplinks (TLS), Modbus links, the subscriber, logging
//! and the runtime. What a listener may hold at most:
//!
//! | listener | descriptors |
//! | --- | --- |
//! | `[api]` | `max_connections` + [`HTTP_REFUSING`] (over the cap, being answered 503) |
//! | `[metrics]` | `max_connections` + [`HTTP_REFUSING`] |
//! | `mqtt_broker`, through the device front | 3 × `max_connections` (device, front to broker, broker side) + 64 (being refused) |
//! | `mqtt_broker`, devices connected directly | `max_connections` + [`DIRECT_PENDING`] (accepted by rumqttd, not past CONNECT yet) |
//!
//! Devices connected directly hold rumqttd's sockets, and rumqttd's own
//! accept loop retries at once on `EMFILE` (spinning a core while the
//! process is out of descriptors: Ferry's loops back off, rumqttd's cannot
//! be made to): counting every socket it may hold keeps that out of reach
//! within the budget. rumqttd refuses a connection over its cap only after
//! the CONNECT, so besides its connections it may hold those it accepted
//! within its CONNECT timeout, at its accept rate.
//!
//! Their sum is an error past [`FD_BUDGET`], and a warning past the
//! process's `RLIMIT_NOFILE` less [`FD_RESERVE`] (checked where the config
//! is read: `ferry validate`, `ferry run`, a reload).

use super::{ApiConfig, MetricsConfig, SourceConfig};
use ferry_core::report::{KeyPath, Report};

use std::collections::BTreeMap;

use crate::listen::HTTP_REFUSING;

/// The descriptors all listeners together may hold: three quarters of the
/// unit's `LimitNOFILE=8192`, the rest kept for everything else.
pub const FD_BUDGET: u64 = 6144;

/// Descriptors kept for everything but the listeners, compared with the
/// process's own limit: the store, uplinks, Modbus links, the runtime.
pub const FD_RESERVE: u64 = 256;

/// Sockets the device front keeps open beyond `max_connections`.
pub const FRONT_REFUSING: u64 = 64;

#[cfg(feature = "embedded-broker")]
const _: () = assert!(FRONT_REFUSING == ferry_sources::mqtt::FRONT_REFUSING as u64);

/// Sockets rumqttd may hold beyond `max_connections` with devices connected
/// directly: accepted at most one a millisecond, each closed if no CONNECT
/// comes within 5 s.
pub const DIRECT_PENDING: u64 = 5_000;

#[cfg(feature = "embedded-broker")]
const _: () = assert!(DIRECT_PENDING == ferry_sources::mqtt::DIRECT_PENDING as u64);

/// One listener's share: the key that sets it, and its descriptors.
struct Share {
    key: KeyPath,
    what: String,
    fds: u64,
}

fn shares(
    api: &ApiConfig,
    metrics: &MetricsConfig,
    sources: &BTreeMap<String, SourceConfig>,
) -> Vec<Share> {
    let mut shares = Vec::new();
    let http = |section: &str, max: u64| Share {
        key: KeyPath::root(section).key("max_connections"),
        what: format!("{section}.max_connections {max} + {HTTP_REFUSING}"),
        fds: max.saturating_add(HTTP_REFUSING),
    };
    if api.listen.is_some() {
        shares.push(http("api", api.max_connections.get() as u64));
    }
    if metrics.listen.is_some() {
        shares.push(http("metrics", metrics.max_connections.get() as u64));
    }
    for (name, source) in sources {
        let SourceConfig::MqttBroker(b) = source else {
            continue;
        };
        let key = KeyPath::root("sources").key(name).key("max_connections");
        let max = b.max_connections as u64;
        shares.push(if b.uses_front() {
            Share {
                what: format!("sources.{name}.max_connections 3 x {max} + {FRONT_REFUSING}"),
                fds: max.saturating_mul(3).saturating_add(FRONT_REFUSING),
                key,
            }
        } else {
            Share {
                what: format!("sources.{name}.max_connections {max} + {DIRECT_PENDING}"),
                fds: max.saturating_add(DIRECT_PENDING),
                key,
            }
        });
    }
    shares
}

/// The process's soft `RLIMIT_NOFILE`, if it has one.
fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Errors if the listeners' caps sum past [`FD_BUDGET`]; warns if they
/// sum past this process's descriptor limit less [`FD_RESERVE`].
pub(crate) fn check(
    api: &ApiConfig,
    metrics: &MetricsConfig,
    sources: &BTreeMap<String, SourceConfig>,
    report: &mut Report,
) {
    check_against(api, metrics, sources, nofile_limit(), report);
}

fn check_against(
    api: &ApiConfig,
    metrics: &MetricsConfig,
    sources: &BTreeMap<String, SourceConfig>,
    nofile: Option<u64>,
    report: &mut Report,
) {
    let shares = shares(api, metrics, sources);
    let total = shares.iter().fold(0u64, |t, s| t.saturating_add(s.fds));
    let Some(largest) = shares.iter().max_by_key(|s| s.fds) else {
        return;
    };
    let sum = shares
        .iter()
        .map(|s| s.what.as_str())
        .collect::<Vec<_>>()
        .join(" + ");
    if total > FD_BUDGET {
        report.error(
            largest.key.clone(),
            format!(
                "the listeners may hold {total} file descriptors ({sum}), more than the \
                 budget of {FD_BUDGET} (of LimitNOFILE=8192 in ferry.service, the rest kept \
                 for the store, uplinks and Modbus): lower these max_connections"
            ),
        );
    } else if let Some(limit) = nofile {
        if total.saturating_add(FD_RESERVE) > limit {
            report.warn(
                largest.key.clone(),
                format!(
                    "the listeners may hold {total} file descriptors ({sum}); with \
                     {FD_RESERVE} for the rest that is more than this process's limit of \
                     {limit} (RLIMIT_NOFILE): raise it (LimitNOFILE=) or lower these \
                     max_connections"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    fn api(max: usize) -> ApiConfig {
        ApiConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            max_connections: NonZeroUsize::new(max).unwrap(),
            ..ApiConfig::default()
        }
    }

    fn metrics(max: usize) -> MetricsConfig {
        MetricsConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            max_connections: NonZeroUsize::new(max).unwrap(),
            ..MetricsConfig::default()
        }
    }

    fn broker(max: usize) -> BTreeMap<String, SourceConfig> {
        let b = ferry_sources::mqtt::BrokerSourceConfig {
            max_connections: max,
            ..Default::default()
        };
        BTreeMap::from([("local".to_owned(), SourceConfig::MqttBroker(b))])
    }

    fn direct_broker(max: usize) -> BTreeMap<String, SourceConfig> {
        let b = ferry_sources::mqtt::BrokerSourceConfig {
            max_connections: max,
            device_front: ferry_sources::mqtt::DeviceFront::Auto,
            ..Default::default()
        };
        assert!(!b.uses_front());
        BTreeMap::from([("local".to_owned(), SourceConfig::MqttBroker(b))])
    }

    fn problems(report: &Report) -> (Vec<String>, Vec<String>) {
        let show = |p: &Vec<ferry_core::report::Problem>| {
            p.iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect()
        };
        (show(&report.errors), show(&report.warnings))
    }

    #[test]
    fn the_default_caps_fit_the_budget_and_the_unit_s_limit() {
        let mut report = Report::default();
        // 64 + 16 + 16 + 16 + 3 x 1000 + 64 = 3176.
        check_against(
            &api(64),
            &metrics(16),
            &broker(1000),
            Some(8192),
            &mut report,
        );
        assert_eq!(problems(&report), (vec![], vec![]));
    }

    #[test]
    fn caps_past_the_budget_are_an_error_naming_every_key() {
        let mut report = Report::default();
        check_against(&api(4000), &metrics(16), &broker(1000), None, &mut report);
        assert_eq!(
            problems(&report).0,
            [
                "api.max_connections: the listeners may hold 7112 file descriptors \
              (api.max_connections 4000 + 16 + metrics.max_connections 16 + 16 + \
              sources.local.max_connections 3 x 1000 + 64), more than the budget of 6144 \
              (of LimitNOFILE=8192 in ferry.service, the rest kept for the store, uplinks \
              and Modbus): lower these max_connections"
            ]
        );
    }

    /// Devices connected to rumqttd directly: its sockets not past their
    /// CONNECT count too (rumqttd spins on `EMFILE`), so the default cap
    /// fits once, and a second such broker passes the budget.
    #[test]
    fn devices_connected_directly_count_rumqttd_s_unconnected_sockets() {
        let mut report = Report::default();
        check_against(
            &api(64),
            &metrics(16),
            &direct_broker(1000),
            Some(8192),
            &mut report,
        );
        assert_eq!(problems(&report), (vec![], vec![]));
        let mut two = direct_broker(1000);
        two.insert(
            "other".to_owned(),
            direct_broker(100).remove("local").unwrap(),
        );
        let mut report = Report::default();
        check_against(&api(64), &metrics(16), &two, Some(8192), &mut report);
        assert_eq!(
            problems(&report).0,
            [
                "sources.local.max_connections: the listeners may hold 11212 file descriptors \
              (api.max_connections 64 + 16 + metrics.max_connections 16 + 16 + \
              sources.local.max_connections 1000 + 5000 + sources.other.max_connections 100 \
              + 5000), more than the budget of 6144 (of LimitNOFILE=8192 in ferry.service, \
              the rest kept for the store, uplinks and Modbus): lower these max_connections"
            ]
        );
    }

    #[test]
    fn caps_past_the_process_s_limit_are_a_warning() {
        let mut report = Report::default();
        check_against(&api(64), &metrics(16), &broker(10), Some(256), &mut report);
        assert_eq!(
            problems(&report),
            (
                vec![],
                vec![
                    "sources.local.max_connections: the listeners may hold 206 file descriptors \
                      (api.max_connections 64 + 16 + metrics.max_connections 16 + 16 + \
                      sources.local.max_connections 3 x 10 + 64); with 256 for the rest that \
                      is more than this process's limit of 256 (RLIMIT_NOFILE): raise it \
                      (LimitNOFILE=) or lower these max_connections"
                        .to_owned()
                ]
            )
        );
    }
}
