//! `ferry query`, `ferry status`, `ferry tail`: read the running daemon's
//! API and print a table (or the JSON with `--json`).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::api::client::Client;

/// Where the daemon's API is.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The API's address.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9109")]
    pub api: String,
    /// The API's bearer token (`[api] token`); default: $FERRY_API_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ferry query`.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Series as DEVICE/FIELD (e.g. `7/voltage`); several are allowed.
    #[arg(value_name = "DEVICE/FIELD", required = true)]
    pub series: Vec<String>,
    /// Start (inclusive): ms since the epoch, RFC 3339, `now-1h`.
    #[arg(long, default_value = "now-1h")]
    pub from: String,
    /// End (exclusive); default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Bucket width (e.g. `1m`): count/min/max/mean/sum/first/last per
    /// bucket instead of raw points.
    #[arg(long)]
    pub step: Option<String>,
    /// The most points to accept (the API refuses a larger result).
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Only this device's records.
    #[arg(long)]
    pub device: Option<String>,
    /// Records already stored to show first.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub lines: usize,
    /// Print what is stored and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn fetch(api: &ApiArgs, path: &str) -> Result<Value, String> {
    let token = api
        .token
        .clone()
        .or_else(|| std::env::var("FERRY_API_TOKEN").ok());
    let client = Client::new(&api.api, token)?;
    let resp = client.get(path)?;
    let body: Value = serde_json::from_str(&resp.body)
        .map_err(|e| format!("the API answered {} with no JSON ({e})", resp.status))?;
    if resp.status != 200 {
        let msg = body["error"].as_str().unwrap_or("unknown error");
        return Err(format!("the API answered {}: {msg}", resp.status));
    }
    Ok(body)
}

fn fail(e: String) -> ExitCode {
    eprintln!("ferry: error: {e}");
    ExitCode::from(super::EXIT_RUNTIME)
}

fn time(ms: &Value) -> String {
    match ms.as_i64() {
        Some(ms) => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_millis(t).to_string()
        }
        None => "-".into(),
    }
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Runs `ferry query`.
pub fn query(args: QueryArgs) -> ExitCode {
    let mut path = String::from("/api/v1/query?");
    for s in &args.series {
        let _ = write!(path, "series={}&", enc(s));
    }
    let _ = write!(path, "from={}", enc(&args.from));
    if let Some(to) = &args.to {
        let _ = write!(path, "&to={}", enc(to));
    }
    if let Some(step) = &args.step {
        let _ = write!(path, "&step={}", enc(step));
    }
    if let Some(limit) = args.limit {
        let _ = write!(path, "&limit={limit}");
    }
    let body = match fetch(&args.api, &path) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if args.api.json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let mut rows = Vec::new();
    let series = body["series"].as_array().cloned().unwrap_or_default();
    let bucketed = args.step.is_some();
    for s in &series {
        let name = format!("{}/{}", num(&s["device"]), num(&s["field"]));
        if bucketed {
            for b in s["buckets"].as_array().into_iter().flatten() {
                rows.push(vec![
                    name.clone(),
                    time(&b["ts"]),
                    num(&b["count"]),
                    num(&b["min"]),
                    num(&b["max"]),
                    num(&b["mean"]),
                    num(&b["first"]),
                    num(&b["last"]),
                ]);
            }
        } else {
            for p in s["points"].as_array().into_iter().flatten() {
                rows.push(vec![name.clone(), time(&p[0]), num(&p[1])]);
            }
        }
    }
    let header: &[&str] = if bucketed {
        &[
            "series", "bucket", "count", "min", "max", "mean", "first", "last",
        ]
    } else {
        &["series", "ts", "value"]
    };
    print!("{}", table(header, &rows));
    ExitCode::SUCCESS
}

/// Runs `ferry status`.
pub fn status(args: ApiArgs) -> ExitCode {
    let body = match fetch(&args, "/api/v1/status") {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if args.json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    println!(
        "gateway {} (ferry {}): {} records stored, {} dead letters",
        num(&body["gateway"]),
        num(&body["version"]),
        num(&body["records_head"]),
        num(&body["dead_head"])
    );
    println!(
        "{} devices, {} series (GET /api/v1/devices lists them)",
        num(&body["devices"]),
        num(&body["series"])
    );
    let age = |v: &Value| {
        v.as_i64()
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
    };
    let sources: Vec<Vec<String>> = body["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                num(&s["name"]),
                num(&s["type"]),
                num(&s["health"]),
                num(&s["records_received"]),
                age(&s["last_age_ms"]),
            ]
        })
        .collect();
    print!(
        "\n{}",
        table(
            &["source", "type", "health", "received", "last record"],
            &sources
        )
    );
    let uplinks: Vec<Vec<String>> = body["uplinks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            vec![
                num(&u["name"]),
                if u["connected"].as_bool() == Some(true) {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
                num(&u["backlog"]),
                age(&u["oldest_unsent_age_ms"]),
                num(&u["acked_seq"]),
                u["send_rate"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{r:.1}/s")),
                drains_in(&u["drain_eta_s"]),
            ]
        })
        .collect();
    if uplinks.is_empty() {
        println!("\nno uplink");
    } else {
        print!(
            "\n{}",
            table(
                &[
                    "uplink",
                    "state",
                    "backlog",
                    "oldest unsent",
                    "acked seq",
                    "send rate",
                    "drains in"
                ],
                &uplinks
            )
        );
    }
    ExitCode::SUCCESS
}

/// An uplink's estimated time to drain: whole seconds, `-` when the
/// backlog does not shrink.
fn drains_in(eta: &Value) -> String {
    match eta.as_f64() {
        Some(s) if s.is_finite() && s >= 0.0 => {
            humantime::format_duration(std::time::Duration::from_secs(s.round() as u64)).to_string()
        }
        _ => "-".into(),
    }
}

fn print_record(r: &Value, json: bool) {
    if json {
        println!("{r}");
        return;
    }
    let fields: Vec<String> = r["fields"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", num(v)))
        .collect();
    println!(
        "{} {} {}/{} {}",
        num(&r["seq"]),
        time(&r["ts"]),
        num(&r["source"]),
        num(&r["device"]),
        fields.join(" ")
    );
}

/// Runs `ferry tail`: the last records, then new ones as they are stored.
pub fn tail(args: TailArgs) -> ExitCode {
    let device = args
        .device
        .as_ref()
        .map_or(String::new(), |d| format!("&device={}", enc(d)));
    let first = format!(
        "/api/v1/records?limit={}{device}",
        args.lines.clamp(1, 1000)
    );
    let mut body = match fetch(&args.api, &first) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    loop {
        for r in body["records"].as_array().into_iter().flatten() {
            print_record(r, args.api.json);
        }
        if args.no_follow {
            return ExitCode::SUCCESS;
        }
        let next = body["next"].as_u64().unwrap_or(0);
        let path = format!("/api/v1/records?after={next}&limit=1000&wait=5s{device}");
        body = match fetch(&args.api, &path) {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
    }
}
