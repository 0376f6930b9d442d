//! `ferry modbus probe`: read a range of registers once and show them raw and
//! decoded as every type in all four byte/word orders, to find the register
//! map of an undocumented device.

use std::fmt::{self, Write as _};
use std::time::Duration;

use thiserror::Error;

use super::decode::{ordered_u16, raw, Raw};
use super::link::{Data, Link, ReadError, Target};
use super::register::range;
use super::types::{DataType, Order, Table};

/// What to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub target: Target,
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub timeout: Duration,
}

impl ProbeRequest {
    fn describe(&self) -> String {
        format!(
            "{} unit {}, {} {}",
            self.target.describe(),
            self.unit,
            self.table,
            range(self.address, self.count)
        )
    }
}

/// A read that failed, with what was asked.
#[derive(Debug, Error)]
#[error("{what}: {error}")]
pub struct ProbeError {
    pub what: String,
    pub error: ReadError,
}

/// What the device answered.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub request: ProbeRequest,
    pub data: Data,
    pub round_trip: Duration,
}

/// Reads once. The count must be 1 to 125 registers or 1 to 2000 bits, and
/// fit below address 65536.
pub async fn probe(request: ProbeRequest) -> Result<ProbeReport, ProbeError> {
    let fail = |error| ProbeError {
        what: request.describe(),
        error,
    };
    let end = u32::from(request.address) + u32::from(request.count);
    if request.count == 0 || request.count > request.table.max_per_request() || end > 65_536 {
        return Err(fail(ReadError::BadResponse(format!(
            "cannot ask for {} items from address {} (1 to {} per request, below 65536)",
            request.count,
            request.address,
            request.table.max_per_request()
        ))));
    }
    let mut link = Link::new(request.target.clone(), Duration::ZERO);
    let (data, round_trip) = link
        .read(
            request.unit,
            request.table,
            request.address,
            request.count,
            request.timeout,
        )
        .await
        .map_err(fail)?;
    Ok(ProbeReport {
        request,
        data,
        round_trip,
    })
}

/// Width of a value column.
const COLUMN: usize = 22;

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.request;
        writeln!(
            f,
            "{}: answered in {:.1} ms",
            r.describe(),
            self.round_trip.as_secs_f64() * 1000.0
        )?;
        match &self.data {
            Data::Bits(bits) => {
                writeln!(f, "\naddress  value")?;
                for (i, b) in bits.iter().enumerate() {
                    writeln!(
                        f,
                        "{:>7}  {}",
                        u32::from(r.address) + i as u32,
                        u8::from(*b)
                    )?;
                }
                Ok(())
            }
            Data::Words(words) => registers(f, r.address, words),
        }
    }
}

fn registers(f: &mut fmt::Formatter<'_>, start: u16, words: &[u16]) -> fmt::Result {
    writeln!(f, "\naddress  hex     u16    i16     bits 15..0")?;
    for (i, w) in words.iter().enumerate() {
        writeln!(
            f,
            "{:>7}  0x{w:04X}  {w:<5}  {:<6}  {:08b} {:08b}",
            u32::from(start) + i as u32,
            *w as i16,
            w >> 8,
            w & 0xFF
        )?;
    }
    for order in [Order::ABCD, Order::BADC] {
        let text: String = words
            .iter()
            .flat_map(|w| ordered_u16(*w, order).to_be_bytes())
            .map(printable)
            .collect();
        writeln!(
            f,
            "text ({}): \"{text}\"",
            if order.byte_swap() {
                "bytes swapped"
            } else {
                "as read"
            }
        )?;
    }
    writeln!(
        f,
        "\nValues starting at each address, in each byte/word order (ABCD = big-endian):"
    )?;
    for at in 0..words.len() {
        let mut header = format!("\n{:>7}  {:<4}", u32::from(start) + at as u32, "");
        for order in Order::ALL {
            let _ = write!(header, "  {:<COLUMN$}", order.as_str());
        }
        writeln!(f, "{}", header.trim_end())?;
        for kind in DataType::NUMERIC {
            let width = usize::from(kind.width().unwrap_or(1));
            let Some(slice) = words.get(at..at + width) else {
                continue;
            };
            let mut line = format!("{:>7}  {:<4}", "", kind.as_str());
            for order in Order::ALL {
                let value = match raw(kind, order, slice) {
                    Ok(Raw::Float(x)) if kind == DataType::F32 => float(x as f32 as f64, true),
                    Ok(Raw::Float(x)) => float(x, false),
                    Ok(other) => other.to_string(),
                    Err(e) => e.to_string(),
                };
                let _ = write!(line, "  {value:<COLUMN$}");
            }
            writeln!(f, "{}", line.trim_end())?;
        }
    }
    Ok(())
}

/// A float in its shortest exact form, in exponent form when very large or
/// small.
fn float(x: f64, single: bool) -> String {
    let a = x.abs();
    let plain = a == 0.0 || !x.is_finite() || (1e-4..1e15).contains(&a);
    match (plain, single) {
        (true, true) => format!("{}", x as f32),
        (true, false) => format!("{x}"),
        (false, true) => format!("{:e}", x as f32),
        (false, false) => format!("{x:e}"),
    }
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        b as char
    } else {
        '.'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_shows_every_type_and_order() {
        let report = ProbeReport {
            request: ProbeRequest {
                target: Target::Tcp("127.0.0.1:502".into()),
                unit: 1,
                table: Table::Holding,
                address: 100,
                count: 2,
                timeout: Duration::from_secs(1),
            },
            data: Data::Words(vec![0x41AC, 0x0000]),
            round_trip: Duration::from_micros(1500),
        };
        let text = report.to_string();
        assert!(
            text.starts_with("127.0.0.1:502 unit 1, holding 100..=101: answered in 1.5 ms\n"),
            "{text}"
        );
        assert!(
            text.contains("    100  0x41AC  16812  16812   01000001 10101100"),
            "{text}"
        );
        let f32_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("f32"))
            .unwrap();
        let cells: Vec<&str> = f32_line.split_whitespace().collect();
        assert_eq!(cells[0], "f32");
        assert_eq!(cells[1], "21.5", "{f32_line}");
        assert_eq!(cells.len(), 5, "{f32_line}");
        // Only the types that fit from the second register on.
        let at_101 = text.rsplit("\n    101").next().unwrap();
        assert!(
            at_101.contains("u16") && !at_101.contains("u32"),
            "{at_101}"
        );
    }

    #[test]
    fn floats_read_well() {
        assert_eq!(float(21.5, true), "21.5");
        assert_eq!(float(0.1f32 as f64, true), "0.1");
        assert_eq!(float(1e-30, false), "1e-30");
        assert_eq!(float(f64::NAN, false), "NaN");
    }
}
