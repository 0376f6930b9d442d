//! Request planning: which read requests one poll of a device sends.
//!
//! Computed once when a source starts, as plain data. Neighbouring entries of
//! the same table are read together while the request stays within Modbus's
//! limits (125 registers, or the device's `max_registers`; 2000 bits) and the
//! unmapped addresses read through between two entries are at most
//! `max_gap`. Greedy merging over the entries sorted by address is optimal
//! for these two constraints: no plan covers the map with fewer requests
//! (the property tests check it against an exhaustive search).

use super::types::Table;

/// Where one map entry lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub table: Table,
    pub start: u16,
    /// Registers or bits, at least 1.
    pub count: u16,
}

impl Span {
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// The limits a plan respects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most unmapped addresses read through between two entries.
    pub max_gap: u16,
    /// The most registers per request (at most 125).
    pub max_registers: u16,
}

impl Limits {
    /// The most items one request of `table` may read.
    pub fn max_count(&self, table: Table) -> u16 {
        if table.is_bits() {
            table.max_per_request()
        } else {
            self.max_registers.clamp(1, table.max_per_request())
        }
    }
}

/// One read request of a poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// The entries it reads (indexes into the spans planned), by address.
    pub fields: Vec<usize>,
}

impl Request {
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Plans the requests that read every span, in table then address order.
///
/// Spans of one table must not overlap, except that identical one-register
/// spans (bits of one register) may repeat; each must fit one request. The
/// config validation ensures both.
pub fn plan(spans: &[Span], limits: Limits) -> Vec<Request> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].table, spans[i].start, spans[i].end()));
    let mut out: Vec<Request> = Vec::new();
    for i in order {
        let s = spans[i];
        if let Some(last) = out.last_mut() {
            let end = last.end();
            let new_end = end.max(s.end());
            let gap = u32::from(s.start).saturating_sub(end);
            let fits = new_end - u32::from(last.start) <= u32::from(limits.max_count(s.table));
            if last.table == s.table && gap <= u32::from(limits.max_gap) && fits {
                last.count = (new_end - u32::from(last.start)) as u16;
                last.fields.push(i);
                continue;
            }
        }
        out.push(Request {
            table: s.table,
            start: s.start,
            count: s.count,
            fields: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests;
