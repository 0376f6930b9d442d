//! The AWS IoT Device Shadow service for tests: `shadow_service.py` (next to this file)
//! serves named shadows on the reserved `$aws/things/THING/shadow/name/SHADOW/...`
//! topics of a TLS [`crate::Mosquitto`], with the document rules of moto's IoT data
//! plane (see the script's doc for what comes from where). [`ShadowService`] starts it
//! and plays the fleet operator's side: [`ShadowService::set_desired`] is what
//! `aws iot-data update-thing-shadow` does, [`ShadowService::get`] what
//! `get-thing-shadow` does; both publish on the topics as the service does.
//!
//! Needs `python3` with moto 5.2.1 and paho-mqtt 2.1.0 (`FERRY_PYTHON` names another
//! interpreter); the script's self-test (`shadow_selftest.py`) checks its messages
//! against awsiotsdk 1.31.0's shadow models.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::pki::Pki;

/// The service script.
pub const SHADOW_SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/shadow_service.py");
/// Its self-test against awsiotsdk's shadow models.
pub const SHADOW_SELFTEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/shadow_selftest.py");

/// How long the service may take to answer a command or to start.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn python() -> String {
    std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A running shadow service, stopped on drop.
pub struct ShadowService {
    child: Child,
    io: Mutex<(ChildStdin, std_mpsc::Receiver<String>)>,
}

impl ShadowService {
    /// Starts the service against the broker at `broker` (its TLS listener), as the
    /// cloud identity of `pki`; returns once it is subscribed.
    pub fn start(pki: &Pki, broker: SocketAddr) -> Result<ShadowService> {
        let mut child = Command::new(python())
            .arg(SHADOW_SERVICE)
            .arg("--host")
            .arg(broker.ip().to_string())
            .arg("--port")
            .arg(broker.port().to_string())
            .arg("--ca")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.cloud.cert)
            .arg("--key")
            .arg(&pki.cloud.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting python3 (FERRY_PYTHON) with testkit/src/shadow_service.py")?;
        let stdin = child.stdin.take().context("the service's stdin")?;
        let stdout = child.stdout.take().context("the service's stdout")?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let service = ShadowService {
            child,
            io: Mutex::new((stdin, rx)),
        };
        let first = service.line()?;
        if first != "ready" {
            bail!("the shadow service printed {first:?} instead of ready");
        }
        Ok(service)
    }

    fn line(&self) -> Result<String> {
        let io = self.io.lock().map_err(|_| anyhow!("poisoned"))?;
        io.1.recv_timeout(ANSWER_TIMEOUT).map_err(|_| {
            anyhow!("the shadow service did not answer within {ANSWER_TIMEOUT:?} (are moto 5.2.1 and paho-mqtt 2.1.0 installed?)")
        })
    }

    fn call(&self, command: Value) -> Result<std::result::Result<Value, Value>> {
        let mut io = self.io.lock().map_err(|_| anyhow!("poisoned"))?;
        writeln!(io.0, "{command}").context("writing to the shadow service")?;
        io.0.flush().context("flushing to the shadow service")?;
        let line = io.1.recv_timeout(ANSWER_TIMEOUT).map_err(|_| {
            anyhow!("the shadow service did not answer {command} within {ANSWER_TIMEOUT:?}")
        })?;
        let mut answer: Value = serde_json::from_str(&line)
            .with_context(|| format!("the shadow service answered {line:?}"))?;
        if let Some(ok) = answer.get_mut("ok") {
            return Ok(Ok(ok.take()));
        }
        Ok(Err(answer
            .get_mut("error")
            .map(Value::take)
            .unwrap_or(answer)))
    }

    /// UpdateThingShadow with `payload` (`{"state": {...}, "version": N}`): the
    /// accepted response, or the rejection (`{"code", "message", ...}`) as `Err`.
    pub fn update(
        &self,
        thing: &str,
        shadow: &str,
        payload: Value,
    ) -> Result<std::result::Result<Value, Value>> {
        self.call(json!({"op": "update", "thing": thing, "shadow": shadow, "payload": payload}))
    }

    /// Sets `state.desired` to `desired` (merged as the service merges it; a `null`
    /// value removes a key). Returns the new document's version.
    pub fn set_desired(&self, thing: &str, shadow: &str, desired: Value) -> Result<u64> {
        match self.update(thing, shadow, json!({"state": {"desired": desired}}))? {
            Ok(accepted) => accepted["version"]
                .as_u64()
                .context("an accepted update without a version"),
            Err(rejected) => bail!("the shadow service rejected the update: {rejected}"),
        }
    }

    /// GetThingShadow: the whole document (`state.desired`, `state.reported`,
    /// `state.delta`, `metadata`, `version`), or `None` if there is no shadow.
    pub fn get(&self, thing: &str, shadow: &str) -> Result<Option<Value>> {
        Ok(self
            .call(json!({"op": "get", "thing": thing, "shadow": shadow}))?
            .ok())
    }

    /// How many requests devices have published on this shadow's `/get` and
    /// `/update` topics.
    pub fn requests(&self, thing: &str, shadow: &str) -> Result<u64> {
        match self.call(json!({"op": "requests", "thing": thing, "shadow": shadow}))? {
            Ok(n) => n.as_u64().context("a count"),
            Err(e) => bail!("{e}"),
        }
    }
}

impl Drop for ShadowService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
