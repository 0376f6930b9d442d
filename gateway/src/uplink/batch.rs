//! Turning stored records into publishes: the topic each record goes to and
//! the payload encodings, each kept within the cloud's payload limit.
//!
//! - `json`: a JSON array of flat records,
//!   `[{"gateway":"g","source":"local","device":"7","ts":1764000000000,"seq":42,"voltage":647},..]`.
//!   IoT Core rule actions with a batch mode take each element as one message.
//!   A field named like one of the reserved keys (`gateway`, `source`,
//!   `device`, `ts`, `seq`) is sent with a leading underscore (`_ts`).
//! - `columnar`: one JSON object per batch with a column per field, sequence
//!   numbers and timestamps delta-encoded (first value absolute):
//!   `{"gateway":"g","seq":[42,1,1],"ts":[1764000000000,1000,1000],
//!     "source":"local","devices":["7","8"],"device":[0,1,0],
//!     "fields":{"voltage":[647,650,null]}}` — `devices` lists the distinct
//!   devices and `device` indexes into it per record; `source` is the one
//!   source of the batch, or, when there are several, `sources` lists them
//!   and `source` indexes into it per record. A missing field is `null`.
//!   Several times fewer bytes per record, so more records per billed 5 KB.
//!
//! Non-finite floats (NaN, ±inf) have no JSON form and are sent as `null`.

use std::collections::HashMap;
use std::io::Write;

use ferry_core::record::{Record, Value};

use crate::store::StoredRecord;

/// Which payload encoding an uplink uses (`encoding = "json"` or `"columnar"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// A JSON array of flat records: what IoT rule actions with a batch mode
    /// take as one message per element.
    #[default]
    Json,
    /// One JSON object with a column per field: many more records per billed 5 KB.
    Columnar,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Device,
    Source,
}

/// A topic template with `{gateway}` already filled in and `{device}` /
/// `{source}` filled per record.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    parts: Vec<Part>,
}

impl Topic {
    /// Parses `template`. Unknown placeholders are an error (the config
    /// loader reports them first; this is the backstop).
    pub fn parse(template: &str, gateway: &str) -> Result<Topic, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in topic `{template}`"))?;
            match &rest[open + 1..open + close] {
                "gateway" => lit.push_str(gateway),
                name @ ("device" | "source") => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(if name == "device" {
                        Part::Device
                    } else {
                        Part::Source
                    });
                }
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` in topic `{template}`"
                    ))
                }
            }
            rest = &rest[open + close + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Topic { parts })
    }

    /// True when every record goes to the same topic.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The topic of `record`. Characters MQTT forbids in a published topic
    /// (`+`, `#`) are replaced by `_`.
    pub fn render(&self, record: &Record) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Device => push_level(&mut out, &record.device),
                Part::Source => push_level(&mut out, &record.source),
            }
        }
        out
    }
}

fn push_level(out: &mut String, value: &str) {
    out.extend(value.chars().map(|c| match c {
        '+' | '#' | '/' | '\0' => '_',
        c => c,
    }));
}

/// One encoded publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub topic: String,
    pub payload: Vec<u8>,
    /// How many records it carries.
    pub records: usize,
}

const RESERVED: [&str; 5] = ["gateway", "source", "device", "ts", "seq"];

fn json_str(buf: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *buf, s).expect("writing to a Vec cannot fail");
}

/// At least the length of `s` as a JSON string: quotes, `\"` and `\\` take
/// two bytes, a control character at most six (`\u001f`).
fn json_str_bound(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Decimal digits of `n`.
fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn json_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => buf.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => {
            let _ = write!(buf, "{i}");
        }
        Value::Float(x) if x.is_finite() => {
            serde_json::to_writer(&mut *buf, x).expect("writing to a Vec cannot fail")
        }
        Value::Float(_) => buf.extend_from_slice(b"null"),
        Value::Str(s) => json_str(buf, s),
    }
}

/// Encodes one record as a flat JSON object.
pub fn json_record(buf: &mut Vec<u8>, gateway: &str, r: &StoredRecord) {
    let rec = &r.record;
    buf.extend_from_slice(b"{\"gateway\":");
    json_str(buf, gateway);
    buf.extend_from_slice(b",\"source\":");
    json_str(buf, &rec.source);
    buf.extend_from_slice(b",\"device\":");
    json_str(buf, &rec.device);
    let _ = write!(buf, ",\"ts\":{},\"seq\":{}", rec.ts, r.seq);
    for (name, value) in &rec.fields {
        buf.push(b',');
        if RESERVED.contains(&&**name) {
            json_str(buf, &format!("_{name}"));
        } else {
            json_str(buf, name);
        }
        buf.push(b':');
        json_value(buf, value);
    }
    buf.push(b'}');
}

/// Builds batches of at most `max_bytes` from records in sequence order.
pub trait Encoder {
    /// Adds `r`; returns false (and leaves the batch as it was) when it does
    /// not fit. An empty encoder always takes a record unless it alone is
    /// larger than the limit.
    fn push(&mut self, r: &StoredRecord) -> bool;
    /// Records held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Encoded size so far (exact for `json`, an upper bound for `columnar`).
    fn size(&self) -> usize;
    /// The payload; the encoder is empty afterwards.
    fn finish(&mut self) -> Vec<u8>;
}

/// The `json` encoding.
pub struct JsonEncoder {
    gateway: String,
    max_bytes: usize,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    n: usize,
}

impl JsonEncoder {
    pub fn new(gateway: &str, max_bytes: usize) -> Self {
        JsonEncoder {
            gateway: gateway.to_owned(),
            max_bytes,
            buf: Vec::new(),
            scratch: Vec::new(),
            n: 0,
        }
    }
}

impl Encoder for JsonEncoder {
    fn push(&mut self, r: &StoredRecord) -> bool {
        self.scratch.clear();
        json_record(&mut self.scratch, &self.gateway, r);
        // '[' or ',' before, ']' after.
        if self.buf.len() + self.scratch.len() + 2 > self.max_bytes {
            return false;
        }
        self.buf.push(if self.n == 0 { b'[' } else { b',' });
        self.buf.extend_from_slice(&self.scratch);
        self.n += 1;
        true
    }

    fn len(&self) -> usize {
        self.n
    }

    fn size(&self) -> usize {
        self.buf.len() + 1
    }

    fn finish(&mut self) -> Vec<u8> {
        self.buf.push(b']');
        self.n = 0;
        std::mem::take(&mut self.buf)
    }
}

/// The `columnar` encoding.
pub struct ColumnarEncoder {
    gateway: String,
    /// The gateway id as a JSON string.
    gateway_json: Vec<u8>,
    max_bytes: usize,
    n: usize,
    seq: Vec<u8>,
    last_seq: u64,
    ts: Vec<u8>,
    last_ts: i64,
    sources: Dict,
    source_col: Vec<u8>,
    devices: Dict,
    device_col: Vec<u8>,
    /// Each field's name as a JSON string, and its column of values.
    columns: Vec<(Vec<u8>, Vec<u8>)>,
    column_ids: HashMap<Box<str>, usize>,
    touched: Vec<bool>,
    size: usize,
}

#[derive(Default)]
struct Dict {
    ids: HashMap<Box<str>, usize>,
    json: Vec<u8>,
}

impl Dict {
    /// The index of `s`, and the bytes it added to the listing.
    fn id(&mut self, s: &str) -> (usize, usize) {
        if let Some(&i) = self.ids.get(s) {
            return (i, 0);
        }
        let before = self.json.len();
        if !self.ids.is_empty() {
            self.json.push(b',');
        }
        json_str(&mut self.json, s);
        let i = self.ids.len();
        self.ids.insert(s.into(), i);
        (i, self.json.len() - before)
    }
}

/// Fixed bytes of a columnar batch beyond its columns and the gateway id:
/// keys and brackets (91 with several sources), with room to spare.
const COLUMNAR_OVERHEAD: usize = 96;

impl ColumnarEncoder {
    pub fn new(gateway: &str, max_bytes: usize) -> Self {
        let mut gateway_json = Vec::new();
        json_str(&mut gateway_json, gateway);
        let size = COLUMNAR_OVERHEAD + gateway_json.len();
        ColumnarEncoder {
            gateway: gateway.to_owned(),
            gateway_json,
            max_bytes,
            n: 0,
            seq: Vec::new(),
            last_seq: 0,
            ts: Vec::new(),
            last_ts: 0,
            sources: Dict::default(),
            source_col: Vec::new(),
            devices: Dict::default(),
            device_col: Vec::new(),
            columns: Vec::new(),
            column_ids: HashMap::new(),
            touched: Vec::new(),
            size,
        }
    }

    /// At least the bytes `r` would add, without adding it: the check that
    /// keeps a batch within `max_bytes`. Exact sizes are counted on push.
    fn cost(&self, r: &StoredRecord) -> usize {
        // A separator and at most 20 characters each: seq and ts.
        let mut cost = 21 + 21;
        // The source and the device: a separator and an index into their
        // listing (one more entry if new), and the new entry.
        for (dict, name) in [
            (&self.sources, &*r.record.source),
            (&self.devices, &*r.record.device),
        ] {
            cost += 1 + digits(dict.ids.len() + 1);
            if !dict.ids.contains_key(name) {
                cost += 1 + json_str_bound(name);
            }
        }
        for (name, value) in &r.record.fields {
            cost += 1 + match value {
                Value::Bool(_) => 5,
                Value::Int(_) => 20,
                Value::Float(_) => 24,
                Value::Str(s) => json_str_bound(s),
            };
            if !self.column_ids.contains_key(name) {
                // A new column: its name, brackets and separators, and a null
                // for every earlier record.
                cost += json_str_bound(name) + 4 + self.n * 5;
            }
        }
        // Columns this record lacks get a null.
        cost + self.columns.len() * 5
    }
}

fn sep(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        buf.push(b',');
    }
}

impl Encoder for ColumnarEncoder {
    fn push(&mut self, r: &StoredRecord) -> bool {
        if self.size + self.cost(r) > self.max_bytes {
            return false;
        }
        let before = self.byte_count();
        let rec = &r.record;
        sep(&mut self.seq);
        sep(&mut self.ts);
        if self.n == 0 {
            let _ = write!(self.seq, "{}", r.seq);
            let _ = write!(self.ts, "{}", rec.ts);
        } else {
            let _ = write!(self.seq, "{}", r.seq.wrapping_sub(self.last_seq));
            let _ = write!(self.ts, "{}", rec.ts.wrapping_sub(self.last_ts));
        }
        self.last_seq = r.seq;
        self.last_ts = rec.ts;
        let (s, _) = self.sources.id(&rec.source);
        sep(&mut self.source_col);
        let _ = write!(self.source_col, "{s}");
        let (d, _) = self.devices.id(&rec.device);
        sep(&mut self.device_col);
        let _ = write!(self.device_col, "{d}");
        self.touched.iter_mut().for_each(|t| *t = false);
        for (name, value) in &rec.fields {
            let i = match self.column_ids.get(name) {
                Some(&i) => i,
                None => {
                    let mut col = Vec::new();
                    for k in 0..self.n {
                        if k > 0 {
                            col.push(b',');
                        }
                        col.extend_from_slice(b"null");
                    }
                    let mut json = Vec::new();
                    json_str(&mut json, name);
                    self.columns.push((json, col));
                    self.touched.push(false);
                    self.column_ids.insert(name.clone(), self.columns.len() - 1);
                    self.columns.len() - 1
                }
            };
            if self.touched[i] {
                continue; // a duplicate field name: the first one counts
            }
            self.touched[i] = true;
            let col = &mut self.columns[i].1;
            if self.n > 0 {
                col.push(b',');
            }
            json_value(col, value);
        }
        for (i, (_, col)) in self.columns.iter_mut().enumerate() {
            if !self.touched[i] {
                if self.n > 0 {
                    col.push(b',');
                }
                col.extend_from_slice(b"null");
            }
        }
        self.n += 1;
        self.size += self.byte_count() - before;
        true
    }

    fn len(&self) -> usize {
        self.n
    }

    fn size(&self) -> usize {
        self.size
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size);
        out.extend_from_slice(b"{\"gateway\":");
        out.extend_from_slice(&self.gateway_json);
        out.extend_from_slice(b",\"seq\":[");
        out.extend_from_slice(&self.seq);
        out.extend_from_slice(b"],\"ts\":[");
        out.extend_from_slice(&self.ts);
        if self.sources.ids.len() == 1 {
            out.extend_from_slice(b"],\"source\":");
            out.extend_from_slice(&self.sources.json);
        } else {
            out.extend_from_slice(b"],\"sources\":[");
            out.extend_from_slice(&self.sources.json);
            out.extend_from_slice(b"],\"source\":[");
            out.extend_from_slice(&self.source_col);
            out.push(b']');
        }
        out.extend_from_slice(b",\"devices\":[");
        out.extend_from_slice(&self.devices.json);
        out.extend_from_slice(b"],\"device\":[");
        out.extend_from_slice(&self.device_col);
        out.extend_from_slice(b"],\"fields\":{");
        for (i, (name, col)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b":[");
            out.extend_from_slice(col);
            out.push(b']');
        }
        out.extend_from_slice(b"}}");
        *self = ColumnarEncoder::new(&self.gateway, self.max_bytes);
        out
    }
}

impl ColumnarEncoder {
    fn byte_count(&self) -> usize {
        self.seq.len()
            + self.ts.len()
            + self.sources.json.len()
            + self.source_col.len()
            + self.devices.json.len()
            + self.device_col.len()
            + self
                .columns
                .iter()
                .map(|(n, c)| n.len() + 4 + c.len())
                .sum::<usize>()
    }
}

/// A new encoder of the given kind.
pub fn encoder(kind: Encoding, gateway: &str, max_bytes: usize) -> Box<dyn Encoder + Send> {
    match kind {
        Encoding::Json => Box::new(JsonEncoder::new(gateway, max_bytes)),
        Encoding::Columnar => Box::new(ColumnarEncoder::new(gateway, max_bytes)),
    }
}

#[cfg(test)]
mod tests;
