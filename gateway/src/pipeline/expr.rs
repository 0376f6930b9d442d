//! Expressions of `filter` and `math` steps, compiled once at load time with
//! [evalexpr](https://docs.rs/evalexpr).
//!
//! # Semantics (what an operator writes)
//! - A record's fields are variables by name; `ts` (milliseconds since the
//!   epoch), `device` and `source` are variables too, unless a field has
//!   that name (the field wins).
//! - **Every number is a 64-bit float**: integer fields and integer
//!   literals alike. So `voltage * current / 1000` divides exactly,
//!   `device_id == 7` is true for an integer field 7, and there is no
//!   integer overflow or integer division by zero. `int(x)` truncates a
//!   result to an integer field.
//! - Operators: `+ - * / % ^`, `== != < <= > >=`, `&& || !`, strings in
//!   double quotes. Functions: `abs`, `sqrt`, `cbrt`, `exp`, `ln`,
//!   `log` (natural, or `log(x, base)`), `log2`, `log10`, `pow(x, y)`,
//!   `int`, `min(a, b, ...)`, `max(a, b, ...)`, `round`, `floor`, `ceil`,
//!   `if(cond, a, b)`, `len`, and evalexpr's other builtins (`math::*`,
//!   `str::*`).
//! - Evaluation never panics: a missing field, a wrong type or a result
//!   that is not a finite number is an [`EvalError`] the step counts.

use std::fmt;

use evalexpr::error::EvalexprResultValue;
use evalexpr::{
    build_operator_tree, Context, DefaultNumericTypes, EvalexprError, EvalexprResult, Node,
    Operator, Value as EValue,
};
use ferry_core::record::{Record, Value};

type EvalValue = EValue<DefaultNumericTypes>;

/// A compiled expression and its source text.
#[derive(Clone)]
pub struct Expression {
    text: String,
    node: Node<DefaultNumericTypes>,
    /// The variables it reads, once each, in order of first use.
    vars: Vec<String>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.text)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why an expression gave no usable value for one record: a short fixed
/// label, used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalError {
    /// A variable is neither a field of the record nor `ts`/`device`/`source`.
    MissingField,
    /// An operator or function got a value of the wrong type.
    WrongType,
    /// The result is NaN or infinite (e.g. `x / 0`, `sqrt(-1)`).
    NotFinite,
    /// Anything else evalexpr refuses.
    Other,
}

impl EvalError {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            EvalError::MissingField => "missing_field",
            EvalError::WrongType => "wrong_type",
            EvalError::NotFinite => "not_finite",
            EvalError::Other => "error",
        }
    }
}

impl Expression {
    /// Compiles `text`; the error is evalexpr's message, on one line.
    pub fn compile(text: &str) -> Result<Expression, String> {
        let mut node = build_operator_tree::<DefaultNumericTypes>(text)
            .map_err(|e| format!("invalid expression {text:?}: {e}"))?;
        if node.children().is_empty() && matches!(node.operator(), Operator::RootNode) {
            return Err("empty expression".to_owned());
        }
        floats_only(&mut node);
        let mut vars: Vec<String> = Vec::new();
        for v in node.iter_read_variable_identifiers() {
            if !vars.iter().any(|x| x == v) {
                vars.push(v.to_owned());
            }
        }
        let assigned = node
            .iter_variable_identifiers()
            .find(|v| !vars.iter().any(|x| x == v))
            .map(str::to_owned);
        if let Some(v) = assigned {
            return Err(format!(
                "invalid expression {text:?}: assignment to `{v}` is not allowed; \
                 a math step names its output field as the key"
            ));
        }
        // evalexpr finds a missing operand only when it evaluates: try once
        // with every variable a number, so `temperature >` fails here.
        let probe = Probe(EValue::Float(1.0));
        if let Err(
            e @ (EvalexprError::WrongOperatorArgumentAmount { .. }
            | EvalexprError::WrongFunctionArgumentAmount { .. }
            | EvalexprError::FunctionIdentifierNotFound(_)),
        ) = node.eval_with_context(&probe)
        {
            return Err(format!("invalid expression {text:?}: {e}"));
        }
        Ok(Expression {
            text: text.to_owned(),
            node,
            vars,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates over `record`.
    pub fn eval(&self, record: &Record) -> Result<Value, EvalError> {
        let cx = RecordContext::new(record, &self.vars);
        let v = self.node.eval_with_context(&cx).map_err(classify)?;
        to_value(v)
    }

    /// Evaluates over `record` as a condition.
    pub fn eval_bool(&self, record: &Record) -> Result<bool, EvalError> {
        let cx = RecordContext::new(record, &self.vars);
        match self.node.eval_with_context(&cx).map_err(classify)? {
            EValue::Boolean(b) => Ok(b),
            _ => Err(EvalError::WrongType),
        }
    }
}

/// Turns every integer literal into a float (see the module doc).
fn floats_only(node: &mut Node<DefaultNumericTypes>) {
    if let Operator::Const { value } = node.operator_mut() {
        if let EValue::Int(i) = *value {
            *value = EValue::Float(i as f64);
        }
    }
    for child in node.children_mut() {
        floats_only(child);
    }
}

fn classify(e: EvalexprError<DefaultNumericTypes>) -> EvalError {
    use EvalexprError as E;
    match e {
        E::VariableIdentifierNotFound(_) => EvalError::MissingField,
        E::ExpectedNumber { .. }
        | E::ExpectedNumberOrString { .. }
        | E::ExpectedString { .. }
        | E::ExpectedBoolean { .. }
        | E::ExpectedFloat { .. }
        | E::ExpectedInt { .. }
        | E::ExpectedTuple { .. }
        | E::ExpectedFixedLengthTuple { .. }
        | E::ExpectedRangedLengthTuple { .. }
        | E::WrongTypeCombination { .. }
        | E::WrongOperatorArgumentAmount { .. }
        | E::WrongFunctionArgumentAmount { .. }
        | E::TypeError { .. } => EvalError::WrongType,
        E::DivisionError { .. } | E::ModulationError { .. } => EvalError::NotFinite,
        _ => EvalError::Other,
    }
}

/// A value evalexpr computed, as a record field.
fn to_value(v: EvalValue) -> Result<Value, EvalError> {
    match v {
        EValue::Float(f) if f.is_finite() => Ok(Value::Float(f)),
        EValue::Float(_) => Err(EvalError::NotFinite),
        EValue::Int(i) => Ok(Value::Int(i)),
        EValue::Boolean(b) => Ok(Value::Bool(b)),
        EValue::String(s) => Ok(Value::Str(s.into())),
        EValue::Tuple(_) | EValue::Empty => Err(EvalError::WrongType),
    }
}

/// A record field, as evalexpr sees it.
fn to_eval(v: &Value) -> EvalValue {
    match v {
        Value::Bool(b) => EValue::Boolean(*b),
        Value::Int(i) => EValue::Float(*i as f64),
        Value::Float(f) => EValue::Float(*f),
        Value::Str(s) => EValue::String(s.to_string()),
    }
}

/// Answers every variable with the same value (to check an expression's
/// shape at load time); functions as in [`RecordContext`].
struct Probe(EvalValue);

impl Context for Probe {
    type NumericTypes = DefaultNumericTypes;

    fn get_value(&self, _identifier: &str) -> Option<&EvalValue> {
        Some(&self.0)
    }

    fn call_function(&self, identifier: &str, argument: &EvalValue) -> EvalexprResultValue {
        call(identifier, argument)
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(
        &mut self,
        _disabled: bool,
    ) -> EvalexprResult<(), DefaultNumericTypes> {
        Err(EvalexprError::BuiltinFunctionsCannotBeDisabled)
    }
}

/// The variables one evaluation reads, looked up once.
struct RecordContext<'a> {
    vars: &'a [String],
    values: Vec<Option<EvalValue>>,
}

impl<'a> RecordContext<'a> {
    fn new(record: &Record, vars: &'a [String]) -> Self {
        let values = vars
            .iter()
            .map(|name| match record.field(name) {
                Some(v) => Some(to_eval(v)),
                None => match name.as_str() {
                    "ts" => Some(EValue::Float(record.ts as f64)),
                    "device" => Some(EValue::String(record.device.to_string())),
                    "source" => Some(EValue::String(record.source.to_string())),
                    _ => None,
                },
            })
            .collect();
        RecordContext { vars, values }
    }
}

impl Context for RecordContext<'_> {
    type NumericTypes = DefaultNumericTypes;

    fn get_value(&self, identifier: &str) -> Option<&EvalValue> {
        let i = self.vars.iter().position(|v| v == identifier)?;
        self.values[i].as_ref()
    }

    fn call_function(&self, identifier: &str, argument: &EvalValue) -> EvalexprResultValue {
        call(identifier, argument)
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(
        &mut self,
        _disabled: bool,
    ) -> EvalexprResult<(), DefaultNumericTypes> {
        Err(EvalexprError::BuiltinFunctionsCannotBeDisabled)
    }
}

/// Ferry's functions; anything else falls through to evalexpr's builtins.
fn call(identifier: &str, argument: &EvalValue) -> EvalexprResultValue {
    {
        let one = |f: fn(f64) -> f64| -> EvalexprResultValue {
            Ok(EValue::Float(f(argument.as_number()?)))
        };
        let two = |f: fn(f64, f64) -> f64| -> EvalexprResultValue {
            let t = argument.as_fixed_len_tuple(2)?;
            Ok(EValue::Float(f(t[0].as_number()?, t[1].as_number()?)))
        };
        match identifier {
            "abs" => one(f64::abs),
            "sqrt" => one(f64::sqrt),
            "cbrt" => one(f64::cbrt),
            "exp" => one(f64::exp),
            "ln" => one(f64::ln),
            "log2" => one(f64::log2),
            "log10" => one(f64::log10),
            "log" => match argument {
                EValue::Tuple(_) => two(f64::log),
                _ => one(f64::ln),
            },
            "pow" => two(f64::powf),
            "int" => {
                let x = argument.as_number()?;
                if x.is_finite() && x.abs() < 9.2e18 {
                    Ok(EValue::Int(x.trunc() as i64))
                } else {
                    Err(EvalexprError::CustomMessage(
                        "int of a non-finite number".into(),
                    ))
                }
            }
            _ => Err(EvalexprError::FunctionIdentifierNotFound(
                identifier.to_owned(),
            )),
        }
    }
}
