//! From text to a checked [`Config`]: TOML syntax first (one error), then each
//! section, source and uplink deserialized on its own (so one bad section
//! does not hide the others), then the checks across keys and sections.
//! Every problem is collected, then given its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::check::Listener;
use super::error::{ConfigError, ConfigErrors, ConfigWarnings};
use super::gateway::KeyFilePolicy;
use super::locate::{line_of, Locator};
use super::uplink_check::UplinkContext;
use super::{
    ApiConfig, Config, GatewayConfig, MetricsConfig, SourceConfig, StoreConfig, UplinkConfig,
};
use ferry_core::report::{check_name, one_line, typed, KeyPath, Problem, Report};

/// The top-level sections.
const SECTIONS: [&str; 10] = [
    "gateway", "store", "sources", "uplinks", "metrics", "pipeline", "devices", "routes", "api",
    "fleet",
];

/// Parses and checks a config; on success also returns the warnings.
pub(crate) fn parse(text: &str, file: &Path) -> Result<(Config, ConfigWarnings), ConfigErrors> {
    let locator = Locator::new(text);
    let resolve = |problems: Vec<Problem>| -> Vec<ConfigError> {
        let mut out: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| ConfigError {
                line: locator.line(&p.path),
                key: p.path.to_string(),
                message: p.message,
            })
            .collect();
        out.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        out
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(e) => {
            let error = ConfigError {
                line: e.span().map(|s| line_of(text, s.start)),
                key: String::new(),
                message: format!("invalid TOML: {}", one_line(e.message())),
            };
            return Err(ConfigErrors {
                file: file.to_owned(),
                errors: vec![error],
                warnings: Vec::new(),
            });
        }
    };
    let mut report = Report::default();
    let config = build(table, &mut report);
    let warnings = resolve(report.warnings);
    match config {
        Some(config) if report.errors.is_empty() => Ok((
            config,
            ConfigWarnings {
                file: file.to_owned(),
                warnings,
            },
        )),
        _ => Err(ConfigErrors {
            file: file.to_owned(),
            errors: resolve(report.errors),
            warnings,
        }),
    }
}

/// Deserializes and checks every section; `None` if a part could not be
/// deserialized at all (the other parts were still checked).
fn build(mut table: toml::Table, report: &mut Report) -> Option<Config> {
    for key in table.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            report.error(
                KeyPath::root(key),
                format!(
                    "unknown key `{key}`, expected one of the sections \
                     `gateway`, `store`, `sources`, `uplinks`, `metrics`, \
                     `pipeline`, `devices`, `routes`, `api`, `fleet`"
                ),
            );
        }
    }
    let mut section = |name: &str| (table.remove(name), KeyPath::root(name));

    let (value, at) = section("gateway");
    let gateway = value.map_or(Some(GatewayConfig::default()), |v| typed(v, &at, report));
    if let Some(g) = &gateway {
        g.check(&at, report);
    }
    let gateway_id = gateway
        .as_ref()
        .map_or("ferry", |g| g.id.as_str())
        .to_owned();

    let (value, at) = section("store");
    let store = value.map_or(Some(StoreConfig::default()), |v| typed(v, &at, report));
    if let Some(s) = &store {
        s.check(&at, report);
    }

    let (value, at) = section("metrics");
    let metrics = value.map_or(Some(MetricsConfig::default()), |v| typed(v, &at, report));
    if let Some(m) = &metrics {
        m.check(&at, report);
    }

    let (value, at) = section("api");
    let api = value.map_or(Some(ApiConfig::default()), |v| typed(v, &at, report));
    if let Some(a) = &api {
        a.check(&at, report);
    }

    let key_files = gateway
        .as_ref()
        .map_or(KeyFilePolicy::Warn, |g| g.insecure_key_files);
    let (value, at) = section("sources");
    let (sources, source_names) = build_sources(value, &at, key_files, report);
    if let Some(sources) = &sources {
        super::source::check_conflicts(sources, &gateway_id, report);
        if let (Some(a), Some(m)) = (&api, &metrics) {
            super::budget::check(a, m, sources, report);
        }
    }
    check_listeners(sources.as_ref(), metrics.as_ref(), api.as_ref(), report);

    let (value, at) = section("uplinks");
    let cx = UplinkContext {
        gateway: &gateway_id,
        sources: &source_names,
        key_files,
    };
    let uplinks = build_uplinks(value, &at, &cx, report);

    let (value, at) = section("fleet");
    let fleet = match value {
        None => Some(None),
        Some(v) => typed::<crate::fleet::FleetConfig>(v, &at, report).map(|f| {
            f.check(&at, uplinks.as_ref(), &gateway_id, report);
            Some(f)
        }),
    };

    let (value, at) = section("devices");
    let devices = crate::pipeline::config::build_devices(value, &at, report);
    let (value, at) = section("pipeline");
    let steps = crate::pipeline::config::build_steps(value, &at, &source_names, report);
    let (value, at) = section("routes");
    let routes = build_routes(value, &at, &source_names, report);
    if let (Some(uplinks), Some(routes)) = (&uplinks, &routes) {
        for (name, u) in uplinks {
            if let Some(r) = u.route.as_ref().filter(|r| !routes.contains_key(*r)) {
                report.error(
                    KeyPath::root("uplinks").key(name).key("route"),
                    format!("no route named {r:?}; define it as [routes.{r}]"),
                );
            }
        }
    }

    Some(Config {
        gateway: gateway?,
        store: store?,
        sources: sources?,
        uplinks: uplinks?,
        metrics: metrics?,
        pipeline: super::PipelineConfig { steps, devices },
        routes: routes?,
        api: api?,
        fleet: fleet?,
    })
}

/// Every listener on an address of its own: the embedded brokers (by
/// name), then the metrics endpoint, then the API.
fn check_listeners(
    sources: Option<&BTreeMap<String, SourceConfig>>,
    metrics: Option<&MetricsConfig>,
    api: Option<&ApiConfig>,
    report: &mut Report,
) {
    let mut listeners = Vec::new();
    for (name, source) in sources.into_iter().flatten() {
        if let SourceConfig::MqttBroker(b) = source {
            listeners.push(Listener {
                key: KeyPath::root("sources").key(name).key("listen"),
                what: format!("source {name:?}"),
                addr: b.listen,
            });
        }
    }
    if let Some(addr) = metrics.and_then(|m| m.listen) {
        listeners.push(Listener {
            key: KeyPath::root("metrics").key("listen"),
            what: "the metrics endpoint (metrics.listen)".to_owned(),
            addr,
        });
    }
    if let Some(addr) = api.and_then(|a| a.listen) {
        listeners.push(Listener {
            key: KeyPath::root("api").key("listen"),
            what: "the API (api.listen)".to_owned(),
            addr,
        });
    }
    super::check::check_listeners(&listeners, report);
}

/// `[routes.NAME]`: the valid routes, `None` if any is not.
fn build_routes(
    value: Option<toml::Value>,
    at: &KeyPath,
    sources: &BTreeSet<String>,
    report: &mut Report,
) -> Option<BTreeMap<String, super::RouteConfig>> {
    let table = named_tables(value, at, "route", report)?;
    let mut routes = Some(BTreeMap::new());
    for (name, value) in table {
        let at = at.key(&name);
        check_name(report, at.clone(), "route", &name);
        match typed::<super::RouteConfig>(value, &at, report) {
            Some(route) => {
                route.check(&at, sources, report);
                if let Some(r) = &mut routes {
                    r.insert(name, route);
                }
            }
            None => routes = None,
        }
    }
    routes
}

/// A section holding named tables (`[sources.NAME]`, `[uplinks.NAME]`).
fn named_tables(
    value: Option<toml::Value>,
    at: &KeyPath,
    what: &str,
    report: &mut Report,
) -> Option<toml::Table> {
    match value {
        None => Some(toml::Table::new()),
        Some(toml::Value::Table(t)) => Some(t),
        Some(other) => {
            report.error(
                at.clone(),
                format!(
                    "invalid type: {}, expected {what}s as tables, like [{at}.NAME]",
                    other.type_str()
                ),
            );
            None
        }
    }
}

/// `[sources.NAME]`: the valid sources (`None` if any is not), and the names
/// of all of them.
fn build_sources(
    value: Option<toml::Value>,
    at: &KeyPath,
    key_files: KeyFilePolicy,
    report: &mut Report,
) -> (Option<BTreeMap<String, SourceConfig>>, BTreeSet<String>) {
    let Some(table) = named_tables(value, at, "source", report) else {
        return (None, BTreeSet::new());
    };
    let names: BTreeSet<String> = table.keys().cloned().collect();
    if table.is_empty() {
        report.error(
            at.clone(),
            "no sources: define at least one, e.g. [sources.local] with type = \"mqtt_broker\"",
        );
    }
    let mut sources = Some(BTreeMap::new());
    for (name, value) in table {
        let at = at.key(&name);
        check_name(report, at.clone(), "source", &name);
        match SourceConfig::from_value(value, &at, report) {
            Some(source) => {
                source.check(&at, key_files, report);
                if let Some(s) = &mut sources {
                    s.insert(name, source);
                }
            }
            None => sources = None,
        }
    }
    (sources, names)
}

/// `[uplinks.NAME]`: the valid uplinks, `None` if any is not.
fn build_uplinks(
    value: Option<toml::Value>,
    at: &KeyPath,
    cx: &UplinkContext<'_>,
    report: &mut Report,
) -> Option<BTreeMap<String, UplinkConfig>> {
    let table = named_tables(value, at, "uplink", report)?;
    let mut uplinks = Some(BTreeMap::new());
    let mut client_ids: BTreeMap<(String, String), String> = BTreeMap::new();
    for (name, value) in table {
        let at = at.key(&name);
        check_name(report, at.clone(), "uplink", &name);
        let Some(uplink) = typed::<UplinkConfig>(value, &at, report) else {
            uplinks = None;
            continue;
        };
        uplink.check(&at, cx, report);
        let client_id = uplink.client_id_for(cx.gateway);
        if let Some(first) = client_ids.insert((uplink.endpoint.clone(), client_id), name.clone()) {
            report.error(
                at.key("client_id"),
                format!(
                    "uplink {first:?} already connects to {} as {:?}; \
                     the broker would disconnect one whenever the other connects",
                    uplink.endpoint,
                    uplink.client_id_for(cx.gateway)
                ),
            );
        }
        if let Some(u) = &mut uplinks {
            u.insert(name, uplink);
        }
    }
    uplinks
}
