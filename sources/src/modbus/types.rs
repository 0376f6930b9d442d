//! The vocabulary of a register map: tables, value types, byte/word orders,
//! serial parity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One of Modbus's four data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    DiscreteInput,
    /// Read/write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
}

impl Table {
    /// All four, in planning order.
    pub const ALL: [Table; 4] = [
        Table::Coil,
        Table::DiscreteInput,
        Table::Holding,
        Table::Input,
    ];

    /// Whether the table holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// The most items one read request may ask for (Modbus application
    /// protocol: 2000 bits, 125 registers).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }

    /// The name used in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the registers of one map entry are read as a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A coil or discrete input; in a register table, a register that is not
    /// 0 (or one bit of it, with `bit`).
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Fixed-length text, two bytes per register (`count` registers),
    /// trailing NULs and spaces removed.
    String,
}

impl DataType {
    /// Every type, in the order `ferry modbus probe` prints them.
    pub const NUMERIC: [DataType; 8] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::I64,
        DataType::F64,
    ];

    /// The number of registers (or bits) the type takes; `None` for a string,
    /// whose length is its `count`.
    pub fn width(self) -> Option<u16> {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => Some(1),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(2),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(4),
            DataType::String => None,
        }
    }

    /// The name used in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Byte and word order of a multi-register value, named by where the bytes
/// of the big-endian value `A B C D` (A most significant) appear in the
/// registers as read. Modbus itself only fixes the byte order inside one
/// register (big-endian); devices disagree about the rest.
///
/// | order | registers | also known as |
/// | --- | --- | --- |
/// | `ABCD` | `AB CD` | big-endian (the Modbus convention) |
/// | `CDAB` | `CD AB` | word-swapped, "little-endian word order" |
/// | `BADC` | `BA DC` | byte-swapped |
/// | `DCBA` | `DC BA` | little-endian |
///
/// For 64-bit values the same rule holds per register: `CDAB` reverses the
/// order of the four registers, `BADC` swaps the bytes inside each. For
/// 16-bit values only the byte swap matters; for strings, `BADC` and `DCBA`
/// swap the two characters in each register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum Order {
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl Order {
    /// All four, in the order `ferry modbus probe` prints them.
    pub const ALL: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

    /// The two bytes inside each register are swapped.
    pub fn byte_swap(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }

    /// The registers come least significant first.
    pub fn word_swap(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Order::ABCD => "ABCD",
            Order::CDAB => "CDAB",
            Order::BADC => "BADC",
            Order::DCBA => "DCBA",
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serial parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}
