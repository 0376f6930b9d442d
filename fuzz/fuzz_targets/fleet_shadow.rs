//! A shadow message from the network, as the fleet agent takes it: the
//! payload of `/get/accepted` or `/update/delta` (the first byte picks
//! which), parsed for its version and desired config, decided on by the
//! version machine, and the config merged with a local file and checked by
//! the loader, as an apply does.
//!
//! Beyond "no panic": a refusal of the merge is one line per problem, with
//! no control character in it.
#![no_main]

use std::path::Path;

use ferry_gateway::config::Config;
use ferry_gateway::fleet::state::{Decision, Machine};
use ferry_gateway::fleet::{merge, shadow_message};
use libfuzzer_sys::fuzz_target;

const LOCAL: &str = r#"
[gateway]
id = "pi-line-7"
data_dir = "/nonexistent/ferry-fuzz"

[sources.local]
type = "mqtt_broker"

[uplinks.cloud]
endpoint = "127.0.0.1:8883"
plaintext = true

[fleet]
uplink = "cloud"
"#;

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let kind = if which % 2 == 0 {
        "get/accepted"
    } else {
        "update/delta"
    };
    let Ok(Some((version, config))) = shadow_message(kind, payload) else {
        return;
    };
    let mut machine = Machine::new(None);
    let Decision::Apply(desired) = machine.on_desired(version, config) else {
        return;
    };
    let local: toml::Table = toml::from_str(LOCAL).expect("the local config parses");
    match merge(&local, &desired.config) {
        Err(refused) => {
            assert!(!refused.is_empty());
            for r in refused {
                assert!(!r.message.contains('\n') && !r.key.contains('\n'), "{r:?}");
                assert!(!r.message.chars().any(char::is_control), "{r:?}");
            }
        }
        Ok(text) => {
            let _ = Config::from_toml(&text, Path::new("<fuzz>"));
        }
    }
});
