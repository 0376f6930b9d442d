//! One entry of a register map, `{ name, table, address, type, ... }`, and
//! its checks.

use ferry_core::report::{KeyPath, Report};
use serde::{Deserialize, Serialize};

use super::decode::Field;
use super::types::{DataType, Order, Table};

/// One value read from a device: `{ name = "voltage", table = "input",
/// address = 0, type = "f32" }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// The field name in the record. Required, unique within the device.
    pub name: String,
    /// `"holding"`, `"input"`, `"coil"` or `"discrete_input"`. Required.
    pub table: Table,
    /// Protocol address of the first register or bit, 0-based as sent on the
    /// wire (the register documented as 40001 is holding address 0).
    /// Required.
    pub address: u16,
    /// `"bool"`, `"u16"`, `"i16"`, `"u32"`, `"i32"`, `"u64"`, `"i64"`,
    /// `"f32"`, `"f64"` or `"string"`. Default: `"bool"` in the coil and
    /// discrete input tables, `"u16"` in the register tables.
    #[serde(default, rename = "type")]
    pub kind: Option<DataType>,
    /// Registers taken: required for a string (two characters each, at most
    /// 125); for the other types it is implied and, if given, must match.
    #[serde(default)]
    pub count: Option<u16>,
    /// Byte and word order: `"ABCD"`, `"CDAB"`, `"BADC"` or `"DCBA"`.
    /// Default: the device's (or its map's) `order`.
    #[serde(default)]
    pub order: Option<Order>,
    /// For a `bool` in a register table: the bit that holds it, 0 (least
    /// significant) to 15. Default: none (any bit set is `true`).
    #[serde(default)]
    pub bit: Option<u8>,
    /// Multiplies the raw value; the field is then a float. Default: none.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after `scale`; the field is then a float. Default: none.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Unit label (`"V"`, `"kWh"`), for the people reading the config;
    /// records carry values only. Default: none.
    #[serde(default)]
    pub unit: Option<String>,
}

impl RegisterConfig {
    /// The value type, defaults applied.
    pub fn data_type(&self) -> DataType {
        self.kind.unwrap_or(if self.table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        })
    }

    /// Registers or bits taken (a string without `count` takes 1, and is
    /// reported by [`RegisterConfig::validate`]).
    pub fn width(&self) -> u16 {
        self.data_type()
            .width()
            .unwrap_or_else(|| self.count.unwrap_or(1).max(1))
    }

    /// Every problem with this entry on its own, each at its key below `at`
    /// (the entry's path, such as `registers[3]`).
    pub fn check(&self, at: &KeyPath, report: &mut Report) {
        let kind = self.data_type();
        if self.name.trim().is_empty() {
            report.error(at.key("name"), "must not be empty".to_string());
        }
        if self.table.is_bits() {
            if kind != DataType::Bool {
                report.error(
                    at.key("type"),
                    format!(
                        "the {} table holds bits: the type must be \"bool\", not \"{kind}\"",
                        self.table
                    ),
                );
            }
            for (key, set) in [
                ("order", self.order.is_some()),
                ("bit", self.bit.is_some()),
                ("count", self.count.is_some_and(|c| c != 1)),
            ] {
                if set {
                    report.error(
                        at.key(key),
                        format!(
                            "does not apply to the {} table, which holds single bits",
                            self.table
                        ),
                    );
                }
            }
        }
        match (kind.width(), self.count) {
            (None, None) => report.error(
                at.key("count"),
                "a string needs `count`, its length in registers (two characters each)".to_string(),
            ),
            (None, Some(c)) if c == 0 || c > 125 => report.error(
                at.key("count"),
                format!("a string takes 1 to 125 registers, not {c}"),
            ),
            (Some(w), Some(c)) if c != w && !self.table.is_bits() => {
                let unit = if w == 1 { "register" } else { "registers" };
                report.error(
                    at.key("count"),
                    format!("type \"{kind}\" takes {w} {unit}, not {c}"),
                )
            }
            _ => {}
        }
        if let Some(bit) = self.bit {
            if kind != DataType::Bool {
                report.error(
                    at.key("bit"),
                    format!("only a \"bool\" can be one bit of a register, not a \"{kind}\""),
                );
            } else if bit > 15 {
                report.error(
                    at.key("bit"),
                    format!("a register has bits 0 to 15, not {bit}"),
                );
            }
        }
        for (key, value) in [("scale", self.scale), ("offset", self.offset)] {
            let Some(v) = value else { continue };
            if matches!(kind, DataType::Bool | DataType::String) {
                report.error(at.key(key), format!("a \"{kind}\" cannot be scaled"));
            } else if !v.is_finite() || (key == "scale" && v == 0.0) {
                report.error(
                    at.key(key),
                    format!("must be a finite, non-zero number, not {v}"),
                );
            }
        }
        let end = u32::from(self.address) + u32::from(self.width());
        if end > 65_536 {
            report.error(
                at.key("address"),
                format!(
                    "{} + {} registers runs past the last address, 65535",
                    self.address,
                    self.width()
                ),
            );
        }
    }

    /// The resolved field, with the order to use when it names none.
    pub fn field(&self, default_order: Order) -> Field {
        Field {
            name: self.name.as_str().into(),
            table: self.table,
            address: self.address,
            count: self.width(),
            kind: self.data_type(),
            order: self.order.unwrap_or(default_order),
            bit: self.bit,
            scale: self.scale,
            offset: self.offset,
            unit: self.unit.as_deref().map(Into::into),
        }
    }
}

/// Problems across the entries of one map: duplicate names and overlapping
/// addresses. `at` names the list (`devices[0].registers`).
pub fn check_map(at: &KeyPath, registers: &[RegisterConfig], report: &mut Report) {
    for (i, r) in registers.iter().enumerate() {
        if let Some(first) = registers[..i].iter().position(|o| o.name == r.name) {
            report.error(
                at.index(i).key("name"),
                format!("`{}` is already the name of {at}[{first}]", r.name),
            );
        }
    }
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].table, registers[i].address));
    // The entry reaching furthest so far in the current table.
    let mut reach: Option<usize> = None;
    for i in order {
        let r = &registers[i];
        if let Some(j) = reach {
            let p = &registers[j];
            let p_end = u32::from(p.address) + u32::from(p.width());
            let shared_bits = p.address == r.address
                && p.width() == 1
                && r.width() == 1
                && p.bit.is_some()
                && r.bit.is_some()
                && p.bit != r.bit;
            if p.table == r.table && u32::from(r.address) < p_end && !shared_bits {
                report.error(
                    at.index(i).key("address"),
                    format!(
                        "`{}` ({} {}) overlaps `{}` ({} {}, {at}[{j}])",
                        r.name,
                        r.table,
                        range(r.address, r.width()),
                        p.name,
                        p.table,
                        range(p.address, p.width()),
                    ),
                );
            }
            let r_end = u32::from(r.address) + u32::from(r.width());
            if p.table != r.table || r_end > p_end {
                reach = Some(i);
            }
        } else {
            reach = Some(i);
        }
    }
}

/// `100` or `100..=103`.
pub fn range(address: u16, count: u16) -> String {
    if count <= 1 {
        format!("{address}")
    } else {
        format!("{address}..={}", u32::from(address) + u32::from(count) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(text: &str) -> RegisterConfig {
        toml::from_str(text).expect("register entry")
    }

    fn problems(text: &str) -> Vec<String> {
        let at = KeyPath::root("registers").index(0);
        ferry_core::report::problem_lines(|_, report| reg(text).check(&at, report))
    }

    #[test]
    fn defaults_by_table() {
        let coil = reg("name = \"pump\"\ntable = \"coil\"\naddress = 3");
        assert_eq!(coil.data_type(), DataType::Bool);
        let holding = reg("name = \"x\"\ntable = \"holding\"\naddress = 3");
        assert_eq!(holding.data_type(), DataType::U16);
        assert!(problems("name = \"x\"\ntable = \"holding\"\naddress = 3").is_empty());
    }

    #[test]
    fn each_mistake_is_named() {
        assert_eq!(
            problems("name = \"t\"\ntable = \"holding\"\naddress = 0\ntype = \"f32\"\ncount = 1"),
            ["registers[0].count: type \"f32\" takes 2 registers, not 1"]
        );
        assert_eq!(
            problems("name = \"s\"\ntable = \"holding\"\naddress = 0\ntype = \"string\""),
            ["registers[0].count: a string needs `count`, its length in registers (two characters each)"]
        );
        assert_eq!(
            problems("name = \"c\"\ntable = \"coil\"\naddress = 0\ntype = \"u16\""),
            ["registers[0].type: the coil table holds bits: the type must be \"bool\", not \"u16\""]
        );
        assert_eq!(
            problems("name = \"e\"\ntable = \"input\"\naddress = 65534\ntype = \"u64\""),
            ["registers[0].address: 65534 + 4 registers runs past the last address, 65535"]
        );
        assert_eq!(
            problems("name = \"b\"\ntable = \"holding\"\naddress = 0\ntype = \"bool\"\nbit = 16"),
            ["registers[0].bit: a register has bits 0 to 15, not 16"]
        );
        assert_eq!(
            problems(
                "name = \"b\"\ntable = \"holding\"\naddress = 0\ntype = \"bool\"\nscale = 2.0"
            ),
            ["registers[0].scale: a \"bool\" cannot be scaled"]
        );
        assert_eq!(
            problems("name = \"\"\ntable = \"holding\"\naddress = 0\nscale = 0.0"),
            [
                "registers[0].name: must not be empty",
                "registers[0].scale: must be a finite, non-zero number, not 0"
            ]
        );
    }

    #[test]
    fn unknown_orders_and_types_are_refused_by_name() {
        let e = toml::from_str::<RegisterConfig>(
            "name = \"t\"\ntable = \"holding\"\naddress = 0\norder = \"ABDC\"",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown variant `ABDC`, expected one of `ABCD`, `CDAB`, `BADC`, `DCBA`"),
            "{e}"
        );
        let e = toml::from_str::<RegisterConfig>(
            "name = \"t\"\ntable = \"holding\"\naddress = 0\ntype = \"float\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `float`"), "{e}");
    }

    #[test]
    fn overlaps_and_duplicates() {
        let map: Vec<RegisterConfig> = [
            "name = \"a\"\ntable = \"holding\"\naddress = 100\ntype = \"f32\"",
            "name = \"b\"\ntable = \"holding\"\naddress = 101",
            "name = \"a\"\ntable = \"input\"\naddress = 100\ntype = \"f32\"",
            "name = \"bit3\"\ntable = \"holding\"\naddress = 7\ntype = \"bool\"\nbit = 3",
            "name = \"bit4\"\ntable = \"holding\"\naddress = 7\ntype = \"bool\"\nbit = 4",
            "name = \"c\"\ntable = \"coil\"\naddress = 101",
        ]
        .iter()
        .map(|t| reg(t))
        .collect();
        let at = KeyPath::root("registers");
        let out = ferry_core::report::problem_lines(|_, report| check_map(&at, &map, report));
        assert_eq!(
            out,
            [
                "registers[2].name: `a` is already the name of registers[0]",
                "registers[1].address: `b` (holding 101) overlaps `a` (holding 100..=101, registers[0])",
            ]
        );
    }
}
