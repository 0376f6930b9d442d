//! The bodies of the query routes, serialized straight from the engine's
//! results (no intermediate `serde_json::Value`): the 24 h query in
//! one-minute buckets is 1,440 objects, and building them as a tree of maps
//! cost more than the query.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferry_core::record::{Millis, Value};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Serialize, Serializer};

use super::ApiError;
use crate::query::{Bucket, Point, Series, SeriesInfo};

/// A JSON body already serialized.
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn of(value: &impl Serialize) -> Result<Body, ApiError> {
        let mut buf = Vec::with_capacity(4096);
        serde_json::to_writer(&mut buf, value).map_err(ApiError::internal)?;
        Ok(Body(buf))
    }
}

impl IntoResponse for Body {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// A stored value as JSON: integers exactly, floats (NaN and infinities as
/// `null`), booleans, strings.
pub struct V<'a>(pub &'a Value);

impl Serialize for V<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) if x.is_finite() => s.serialize_f64(*x),
            Value::Float(_) => s.serialize_none(),
            Value::Str(v) => s.serialize_str(v),
        }
    }
}

/// `GET /query`.
#[derive(Serialize)]
pub struct QueryOut<'a> {
    pub from: Millis,
    pub to: Millis,
    pub step: Option<i64>,
    /// Stored records the index had not taken in when the query read it
    /// (nonzero while it replays the log after a restart).
    pub index_lag_records: u64,
    /// Whether every stored record was in the index: `false` means the
    /// answer may miss readings (see `index_lag_records`).
    pub complete: bool,
    pub series: Vec<SeriesOut<'a>>,
}

#[derive(Serialize)]
pub struct SeriesOut<'a> {
    pub device: &'a str,
    pub field: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<Points<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Buckets<'a>>,
}

impl<'a> SeriesOut<'a> {
    pub fn new(device: &'a str, field: &'a str, s: &'a Series) -> SeriesOut<'a> {
        let (points, buckets) = match s {
            Series::Raw(p) => (Some(Points(p)), None),
            Series::Buckets(b) => (None, Some(Buckets(b))),
        };
        SeriesOut {
            device,
            field,
            points,
            buckets,
        }
    }
}

/// Points as `[ts, value]` pairs.
pub struct Points<'a>(&'a [Point]);

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            seq.serialize_element(&Pair(p))?;
        }
        seq.end()
    }
}

struct Pair<'a>(&'a Point);

impl Serialize for Pair<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0.ts)?;
        t.serialize_element(&V(&self.0.value))?;
        t.end()
    }
}

pub struct Buckets<'a>(&'a [Bucket]);

impl Serialize for Buckets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for b in self.0 {
            let r = &b.rollup;
            let stats = r.stats();
            seq.serialize_element(&BucketOut {
                ts: b.ts,
                count: r.count,
                min: stats.map(|s| s.0),
                max: stats.map(|s| s.1),
                mean: stats.map(|s| s.2),
                sum: stats.map(|s| s.3),
                first: V(&r.first),
                last: V(&r.last),
            })?;
        }
        seq.end()
    }
}

/// One bucket: `min`, `max`, `mean`, `sum` are `null` when no reading in it
/// is a number (a string field).
#[derive(Serialize)]
struct BucketOut<'a> {
    ts: Millis,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    sum: Option<f64>,
    first: V<'a>,
    last: V<'a>,
}

/// `GET /devices`.
#[derive(Serialize)]
pub struct DevicesOut<'a> {
    pub devices: Vec<DeviceOut<'a>>,
    /// The last device of this page when more follow (`after=` it for
    /// the next page).
    pub next: Option<&'a str>,
    /// Stored records the query index has not taken in yet (the fields'
    /// last points may be older than what is stored); 0 when `complete`.
    pub index_lag_records: u64,
    pub complete: bool,
}

#[derive(Serialize)]
pub struct DeviceOut<'a> {
    pub device: &'a str,
    /// How many fields the device has (also with `fields=false`).
    pub field_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ts: Option<Option<Millis>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldOut<'a>>>,
}

#[derive(Serialize)]
pub struct FieldOut<'a> {
    pub field: &'a str,
    pub first_ts: Millis,
    pub last_ts: Millis,
    pub last: V<'a>,
    pub last_seq: u64,
}

impl<'a> FieldOut<'a> {
    pub fn new(s: &'a SeriesInfo) -> FieldOut<'a> {
        FieldOut {
            field: &s.field,
            first_ts: s.first_ts,
            last_ts: s.last.ts,
            last: V(&s.last.value),
            last_seq: s.last.seq,
        }
    }
}

/// `GET /devices/{device}/latest`.
#[derive(Serialize)]
pub struct LatestOut<'a> {
    pub device: &'a str,
    pub ts: Option<Millis>,
    pub fields: Latest<'a>,
    /// As in [`DevicesOut`]: how far the index behind these values is.
    pub index_lag_records: u64,
    pub complete: bool,
}

/// Field name → `{ts, value, seq}`.
pub struct Latest<'a>(pub &'a [SeriesInfo]);

impl Serialize for Latest<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct One<'a> {
            ts: Millis,
            value: V<'a>,
            seq: u64,
        }
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for i in self.0 {
            m.serialize_entry(
                &*i.field,
                &One {
                    ts: i.last.ts,
                    value: V(&i.last.value),
                    seq: i.last.seq,
                },
            )?;
        }
        m.end()
    }
}
