//! One link to devices: a TCP connection or a serial bus, one request at a
//! time, every outcome classified.
//!
//! [`Link::read`] sends one read request and tells apart what the caller
//! must treat differently ([`ReadError`]): the device answered with an
//! exception (the link is fine: nothing is reset), it did not answer in time,
//! it answered something that is not a valid answer to the request (garbage,
//! a bad CRC, the wrong unit, the wrong length), or the link itself failed.
//!
//! After a timeout or a bad answer the client is dropped, because a late or
//! partial answer could otherwise be read as the answer to the next request:
//! a TCP connection is closed and opened again on the next request; a serial
//! bus keeps its port open (other devices are on it), drops what is in its
//! input buffer before the next request and frames afresh. Only when the
//! port itself fails (a USB adapter unplugged) is it opened again.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::{rtu, tcp, Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ProtocolError, Request, Response, Slave};

use super::events::FailureKind;
use super::types::{Parity, Table};

/// A serial line's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

/// What a link talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Modbus TCP server, `host:port`.
    Tcp(String),
    /// A serial bus (Modbus RTU).
    Serial(SerialSettings),
}

impl Target {
    /// `host:port` or the serial port's path.
    pub fn describe(&self) -> String {
        match self {
            Target::Tcp(addr) => addr.clone(),
            Target::Serial(s) => s.path.display().to_string(),
        }
    }
}

/// What one read returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why a read returned no data.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The device answered with an exception code: it is there, it refused.
    #[error("exception {code:#04x} ({})", exception_name(*.code))]
    Exception { code: u8, round_trip: Duration },
    /// No answer within the timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// An answer that is not a valid answer to the request.
    #[error("bad answer: {0}")]
    BadResponse(String),
    /// The connection or port failed (or could not be opened).
    #[error("{0}")]
    Link(String),
}

impl ReadError {
    /// The failure kind for metrics; `None` for an exception.
    pub fn failure(&self) -> Option<FailureKind> {
        match self {
            ReadError::Exception { .. } => None,
            ReadError::Timeout(_) => Some(FailureKind::Timeout),
            ReadError::BadResponse(_) => Some(FailureKind::BadResponse),
            ReadError::Link(_) => Some(FailureKind::Link),
        }
    }
}

/// The standard meaning of an exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// One TCP connection or serial bus; see the module doc.
pub struct Link {
    target: Target,
    gap: Duration,
    client: Option<Context>,
    /// Serial: the open port, kept across client resets.
    port: Option<serialport::TTYPort>,
    /// Serial: discard unread input before the next request.
    flush: bool,
    /// When the last exchange ended (for the request gap).
    quiet_from: Option<Instant>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("gap", &self.gap)
            .field("open", &self.client.is_some())
            .finish()
    }
}

impl Link {
    /// A link to `target` with `gap` of quiet time between requests; it
    /// connects on the first read.
    pub fn new(target: Target, gap: Duration) -> Link {
        Link {
            target,
            gap,
            client: None,
            port: None,
            flush: false,
            quiet_from: None,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Reads `count` registers or bits of `table` from `start` at `unit`,
    /// waiting at most `wait` for the answer (and as long again to connect).
    /// Returns the data and the round-trip time.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        wait: Duration,
    ) -> Result<(Data, Duration), ReadError> {
        if let Some(quiet) = self.quiet_from {
            sleep_until(quiet + self.gap).await;
        }
        let result = self.exchange(unit, table, start, count, wait).await;
        self.quiet_from = Some(Instant::now());
        match &result {
            Ok(_) | Err(ReadError::Exception { .. }) => {}
            Err(ReadError::Link(_)) => {
                self.client = None;
                self.port = None;
            }
            Err(ReadError::Timeout(_) | ReadError::BadResponse(_)) => {
                self.client = None;
                self.flush = true;
            }
        }
        result
    }

    async fn exchange(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        wait: Duration,
    ) -> Result<(Data, Duration), ReadError> {
        let client = self.client(wait).await?;
        client.set_slave(Slave(unit));
        let request = match table {
            Table::Coil => Request::ReadCoils(start, count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(start, count),
            Table::Holding => Request::ReadHoldingRegisters(start, count),
            Table::Input => Request::ReadInputRegisters(start, count),
        };
        let sent = Instant::now();
        let answer = timeout(wait, client.call(request))
            .await
            .map_err(|_| ReadError::Timeout(wait))?;
        let round_trip = sent.elapsed();
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(exception)) => {
                return Err(ReadError::Exception {
                    code: u8::from(exception),
                    round_trip,
                })
            }
            Err(tokio_modbus::Error::Transport(e)) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(ReadError::BadResponse(e.to_string()))
            }
            Err(tokio_modbus::Error::Transport(e)) => {
                return Err(ReadError::Link(format!("{}: {e}", self.target.describe())))
            }
            Err(tokio_modbus::Error::Protocol(p)) => {
                return Err(ReadError::BadResponse(protocol_message(&p, unit)))
            }
        };
        Ok((check(table, count, response)?, round_trip))
    }

    /// The client, connecting (or opening the port) first if needed.
    async fn client(&mut self, wait: Duration) -> Result<&mut Context, ReadError> {
        if self.client.is_none() {
            let client = match &self.target {
                Target::Tcp(addr) => {
                    let stream = timeout(wait, TcpStream::connect(addr.as_str()))
                        .await
                        .map_err(|_| {
                            ReadError::Link(format!(
                                "cannot connect to {addr}: no answer within {}",
                                humantime::format_duration(wait)
                            ))
                        })?
                        .map_err(|e| ReadError::Link(format!("cannot connect to {addr}: {e}")))?;
                    let _ = stream.set_nodelay(true);
                    tcp::attach(stream)
                }
                Target::Serial(settings) => {
                    if self.port.is_none() {
                        self.port = Some(open_serial(settings)?);
                    }
                    let port = self.port.as_ref().expect("opened above");
                    let serial_error = |e: serialport::Error| {
                        ReadError::Link(format!("{}: {e}", settings.path.display()))
                    };
                    if std::mem::take(&mut self.flush) {
                        use serialport::SerialPort;
                        port.clear(serialport::ClearBuffer::Input)
                            .map_err(serial_error)?;
                    }
                    let stream = port.try_clone_native().map_err(serial_error)?;
                    let stream =
                        tokio_serial::SerialStream::try_from(stream).map_err(serial_error)?;
                    rtu::attach(stream)
                }
            };
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("set above"))
    }
}

fn open_serial(s: &SerialSettings) -> Result<serialport::TTYPort, ReadError> {
    use serialport::{DataBits, FlowControl, StopBits};
    let data_bits = match s.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match s.parity {
        Parity::None => serialport::Parity::None,
        Parity::Even => serialport::Parity::Even,
        Parity::Odd => serialport::Parity::Odd,
    };
    let stop_bits = if s.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let path = s.path.to_string_lossy();
    let builder = serialport::new(path.as_ref(), s.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(FlowControl::None);
    serialport::TTYPort::open(&builder)
        .map_err(|e| ReadError::Link(format!("cannot open {path}: {e}")))
}

fn protocol_message(p: &ProtocolError, unit: u8) -> String {
    match p {
        ProtocolError::HeaderMismatch { message, .. } => {
            format!("its header does not match the request to unit {unit}: {message}")
        }
        ProtocolError::FunctionCodeMismatch { request, result } => {
            let got = match result {
                Ok(r) => r.function_code().value(),
                Err(e) => e.function.value(),
            };
            format!(
                "function code {got:#04x} in answer to function {:#04x}",
                request.value()
            )
        }
    }
}

/// Checks that `response` answers a read of `count` items of `table`.
fn check(table: Table, count: u16, response: Response) -> Result<Data, ReadError> {
    let count = usize::from(count);
    match (table, response) {
        (Table::Coil, Response::ReadCoils(mut bits))
        | (Table::DiscreteInput, Response::ReadDiscreteInputs(mut bits)) => {
            // Bits come packed, 8 to a byte: exactly the bytes `count` needs.
            if bits.len() != count.div_ceil(8) * 8 {
                return Err(ReadError::BadResponse(format!(
                    "{} bytes of bits for {count} bits (expected {})",
                    bits.len() / 8,
                    count.div_ceil(8)
                )));
            }
            bits.truncate(count);
            Ok(Data::Bits(bits))
        }
        (Table::Holding, Response::ReadHoldingRegisters(words))
        | (Table::Input, Response::ReadInputRegisters(words)) => {
            if words.len() != count {
                return Err(ReadError::BadResponse(format!(
                    "{} registers for a request of {count}",
                    words.len()
                )));
            }
            Ok(Data::Words(words))
        }
        (_, other) => Err(ReadError::BadResponse(format!(
            "answer of function {:#04x} to a read of the {table} table",
            other.function_code().value()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_against_the_request() {
        assert_eq!(
            check(
                Table::Holding,
                2,
                Response::ReadHoldingRegisters(vec![1, 2])
            )
            .unwrap(),
            Data::Words(vec![1, 2])
        );
        let short = check(
            Table::Holding,
            3,
            Response::ReadHoldingRegisters(vec![1, 2]),
        );
        assert_eq!(
            short.unwrap_err().to_string(),
            "bad answer: 2 registers for a request of 3"
        );
        assert_eq!(
            check(
                Table::Coil,
                3,
                Response::ReadCoils(vec![true, false, true, false, false, false, false, false])
            )
            .unwrap(),
            Data::Bits(vec![true, false, true])
        );
        let long = check(Table::Coil, 3, Response::ReadCoils(vec![false; 16]));
        assert_eq!(
            long.unwrap_err().to_string(),
            "bad answer: 2 bytes of bits for 3 bits (expected 1)"
        );
        let wrong = check(Table::Input, 1, Response::ReadHoldingRegisters(vec![1]));
        assert_eq!(
            wrong.unwrap_err().to_string(),
            "bad answer: answer of function 0x03 to a read of the input table"
        );
    }

    #[test]
    fn exceptions_are_named() {
        let e = ReadError::Exception {
            code: 2,
            round_trip: Duration::ZERO,
        };
        assert_eq!(e.to_string(), "exception 0x02 (illegal data address)");
        assert_eq!(e.failure(), None);
        assert_eq!(
            ReadError::Timeout(Duration::from_millis(250)).to_string(),
            "no answer within 250ms"
        );
    }
}
