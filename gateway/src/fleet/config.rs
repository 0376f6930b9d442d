//! `[fleet]`: which uplink's connection carries the device shadow, and how
//! configs from the fleet are applied. The table is the operator's alone: a
//! config from the fleet may not hold it (see [`super::merge`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::UplinkConfig;
use ferry_core::report::{KeyPath, Report};

/// The longest thing name AWS IoT accepts (CreateThing: 1 to 128 characters).
pub const MAX_THING_NAME: usize = 128;
/// The longest shadow name AWS IoT accepts (named shadows: 1 to 64 characters).
pub const MAX_SHADOW_NAME: usize = 64;
/// The largest shadow message accepted: a shadow's state document holds at
/// most 8 KB of desired and reported state, and `/get/accepted` adds its
/// delta and metadata (AWS IoT developer guide, "Diagnosing problems with
/// shadows"); 64 KiB bounds all of that with room.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024;

/// `[fleet]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The `[uplinks.NAME]` whose connection also carries the shadow: the
    /// one with the thing's certificate. Required.
    pub uplink: String,
    /// The thing's name in AWS IoT. Default: the uplink's client id (IoT
    /// Core policies tie the two with `${iot:Connection.Thing.ThingName}`).
    pub thing_name: Option<String>,
    /// The named shadow holding the fleet's config. 1 to 64 of
    /// `[A-Za-z0-9_:-]`. Default: `"ferry"`.
    #[serde(default = "defaults::shadow")]
    pub shadow: String,
    /// How long a config from the fleet is watched after it is applied: the
    /// fleet uplink must be connected at the end and have had a publish
    /// acknowledged since the apply, and the ingest writer must be turning,
    /// or the last good config comes back.
    /// 1s to 1h. Default: `"60s"`.
    #[serde(with = "humantime_serde", default = "defaults::probation")]
    pub probation: Duration,
    /// The least time between two reports to the shadow (`state.reported`):
    /// a change is reported at once unless the last report is more recent,
    /// then at this interval. 1s to 1 day. Default: `"30s"`.
    #[serde(with = "humantime_serde", default = "defaults::report_interval")]
    pub report_interval: Duration,
    /// Shadow messages taken per second, at most; more are dropped and
    /// counted. 1 to 100. Default: 10.
    #[serde(default = "defaults::max_messages_per_second")]
    pub max_messages_per_second: u32,
}

mod defaults {
    use std::time::Duration;
    pub fn shadow() -> String {
        "ferry".to_owned()
    }
    pub fn probation() -> Duration {
        Duration::from_secs(60)
    }
    pub fn report_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_messages_per_second() -> u32 {
        10
    }
}

/// Whether `name` is a valid thing or shadow name: `[A-Za-z0-9_:-]`, 1 to `max` bytes.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b))
}

impl FleetConfig {
    /// The thing name: `thing_name`, else the fleet uplink's client id.
    pub fn thing(&self, uplinks: &BTreeMap<String, UplinkConfig>, gateway: &str) -> String {
        match (&self.thing_name, uplinks.get(&self.uplink)) {
            (Some(t), _) => t.clone(),
            (None, Some(u)) => u.client_id_for(gateway),
            (None, None) => gateway.to_owned(),
        }
    }

    pub(crate) fn check(
        &self,
        at: &KeyPath,
        uplinks: Option<&BTreeMap<String, UplinkConfig>>,
        gateway: &str,
        report: &mut Report,
    ) {
        if let Some(uplinks) = uplinks {
            if !uplinks.contains_key(&self.uplink) {
                report.error(
                    at.key("uplink"),
                    format!(
                        "no uplink named {:?}; name the [uplinks.NAME] that connects with the thing's certificate",
                        self.uplink
                    ),
                );
            } else {
                let thing = self.thing(uplinks, gateway);
                let key = if self.thing_name.is_some() {
                    at.key("thing_name")
                } else {
                    at.key("uplink")
                };
                if !valid_name(&thing, MAX_THING_NAME) {
                    report.error(
                        key,
                        format!(
                            "the thing name {} is not a valid AWS IoT thing name (1 to {MAX_THING_NAME} of A-Z a-z 0-9 _ : -)",
                            ferry_core::text::excerpt(&thing)
                        ),
                    );
                }
            }
        }
        if !valid_name(&self.shadow, MAX_SHADOW_NAME) {
            report.error(
                at.key("shadow"),
                format!(
                    "{} is not a valid shadow name (1 to {MAX_SHADOW_NAME} of A-Z a-z 0-9 _ : -)",
                    ferry_core::text::excerpt(&self.shadow)
                ),
            );
        }
        let s = Duration::from_secs;
        report.duration_in(at.key("probation"), self.probation, s(1), s(3600));
        report.duration_in(
            at.key("report_interval"),
            self.report_interval,
            s(1),
            s(86_400),
        );
        report.int_in(
            at.key("max_messages_per_second"),
            u64::from(self.max_messages_per_second),
            1,
            100,
        );
    }
}
