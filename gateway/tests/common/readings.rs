//! Readings as devices send them (the seed format of issue 2) and as the
//! cloud receives them.

/// The seed-format reading number `i`, from device `i % 10`.
pub fn seed_payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"client_id": 1, "device_id": {}, "voltage": {}, "temperature": {}, "sequence": {i}}}"#,
        i % 10,
        600 + i % 50,
        100 + i % 20
    )
    .into_bytes()
}

pub fn seed_topic(i: u64) -> String {
    format!("sensors/{}/telemetry", i % 10)
}

/// The `sequence` field of every record in a JSON batch.
pub fn sequences(m: &ferry_testkit::Message) -> anyhow::Result<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
    v.as_array()
        .ok_or_else(|| anyhow::anyhow!("not an array"))?
        .iter()
        .map(|r| {
            r["sequence"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("no sequence in {r}"))
        })
        .collect()
}
