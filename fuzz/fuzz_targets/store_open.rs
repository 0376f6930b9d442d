//! Opening a damaged store file (`gateway/src/store/salvage.rs`): mutated
//! copies of a small real store (built once, here, by the real ingest
//! writer: 300 records, dead letters, a cursor).
//!
//! Input: 4 bytes (little-endian `t`) choosing a truncation (0: none; with
//! the top bit set, the low 31 bits modulo the length + 1 are cut from the
//! end; else the new length is `t - 1` modulo the length + 1, so 1 empties
//! the file), then groups of 5 bytes, each a position (4 bytes, modulo the
//! length) and a byte XORed in there.
//!
//! Properties:
//! 1. `Store::open_or_salvage` never panics outside a contained scope (this
//!    target's hook aborts on one, as the daemon's does) and always returns
//!    a store: a damaged file is never an error that needs a person.
//! 2. The store it returns reads: every record and dead letter, the cursor,
//!    in order, without a panic (a panic here means the open declared a
//!    damaged file sound); it opens again after being closed.
//! 3. Salvaged records' seqs increase and the head is never behind the
//!    last of them (no seq is used twice). Where one byte was changed (or
//!    the file only truncated) they are seqs of the original store
//!    (1..=300): a changed key is dropped, not kept under a seq it never
//!    had. With more changes no such promise holds: a key changed to fit
//!    between its neighbours, or one past the end that a changed head in
//!    `meta` vouches for, reads like a real one (records carry no seq of
//!    their own to check it against).
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, Once, OnceLock};

use ferry_core::record::{DeadLetter, Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::contain;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::store::{Opened, Store, StoreOptions, Writer, WriterSettings};
use libfuzzer_sys::fuzz_target;

const RECORDS: u64 = 300;

/// A directory in memory where there is one (the store fsyncs).
fn scratch() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("ferry-fuzz-store-open-{}", std::process::id()))
}

/// The seed store's bytes.
fn seed() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = scratch().join("seed");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = Store::file_in(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Store::open(&path, &StoreOptions::default()).unwrap();
            let ingest = Writer::spawn(
                store.clone(),
                WriterSettings::default()
                    .with_commit_interval(std::time::Duration::from_millis(10)),
                IngestMetrics::new(),
            );
            for chunk in 0..RECORDS / 100 {
                let mut items: Vec<Item> = (chunk * 100..chunk * 100 + 100)
                    .map(|i| {
                        Item::Record(Record {
                            ts: 1_764_000_000_000 + i as i64,
                            source: Arc::from("local"),
                            device: format!("d{}", i % 5).into(),
                            fields: vec![
                                ("voltage".into(), Value::Int(i as i64)),
                                ("state".into(), Value::Str("run".into())),
                            ],
                        })
                    })
                    .collect();
                items.push(Item::Dead(DeadLetter::new(
                    Arc::from("local"),
                    "sensors/x/telemetry",
                    "not_json",
                    "payload is not JSON",
                    b"{",
                )));
                ingest.sink.submit_and_wait(items).await.unwrap();
            }
            ingest
                .cursors
                .advance_promptly(&Arc::from("uplink.cloud"), 150)
                .await
                .unwrap();
            drop(ingest.sink);
            drop(ingest.cursors);
            ingest.task.await.unwrap();
        });
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // The daemon's rule: a panic outside a contained scope is the end.
        std::panic::set_hook(Box::new(|info| {
            if !contain::is_contained() {
                eprintln!("{info}");
                std::process::abort();
            }
        }));
    });
    let mut bytes = seed().to_vec();
    let len = bytes.len();
    let (head, ops) = data.split_at(data.len().min(4));
    if head.len() == 4 {
        let t = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if t & 0x8000_0000 != 0 {
            let cut = (t & 0x7FFF_FFFF) as usize % (len + 1);
            bytes.truncate(len - cut);
        } else if t != 0 {
            bytes.truncate((t - 1) as usize % (len + 1));
        }
    }
    for op in ops.chunks_exact(5) {
        if bytes.is_empty() {
            break;
        }
        let at = u32::from_le_bytes([op[0], op[1], op[2], op[3]]) as usize % bytes.len();
        bytes[at] ^= op[4];
    }

    let dir = scratch().join("case");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = Store::file_in(&dir);
    std::fs::write(&path, &bytes).unwrap();

    let (store, opened) = Store::open_or_salvage(&path, &StoreOptions::default())
        .unwrap_or_else(|e| panic!("a damaged store must open or be salvaged: {e}"));
    if bytes == seed() {
        assert!(matches!(opened, Opened::Sound(_)), "{opened:?}");
    }
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let before = out.len();
        let stats = store.read_records(after, 1000, &mut out).unwrap();
        if out.len() == before && stats.last_seq == after {
            break;
        }
        after = stats.last_seq;
    }
    assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
    if matches!(opened, Opened::Salvaged { .. }) && ops.len() < 10 {
        assert!(out.iter().all(|r| (1..=RECORDS).contains(&r.seq)));
    }
    assert!(store.heads().records >= out.last().map_or(0, |r| r.seq));
    store.read_dead(0, 10_000).unwrap();
    store.cursor("uplink.cloud").unwrap();
    drop(store);
    let again = Store::open(&path, &StoreOptions::default()).unwrap();
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
});
