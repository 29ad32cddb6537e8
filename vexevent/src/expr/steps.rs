//! Conditions over several events, for the steps of a rule's sequence: in a step's expression a
//! bare word `STEP.FIELD` that names an earlier step is that step's field, so
//! `type == FilesystemRename and path == create.path` holds when this event renames the file the
//! `create` step created. Everything else compiles as in any filter.

use std::collections::BTreeMap;

use super::{
    compile::{CompileError, Field, compile_in, field},
    parse::{CompareOp, Expr, Value},
};
use crate::event::SemanticEvent;

/// A compiled condition over an event and the events of the earlier steps, in step order.
pub type StepMatcher = Box<dyn Fn(&SemanticEvent, &[&SemanticEvent]) -> bool + Send + Sync>;

/// An earlier step's field named by a value, when the value is `STEP.FIELD` with `STEP` in
/// `earlier`.
pub(super) fn reference<'a>(value: &'a Value, earlier: &[&str]) -> Option<(usize, &'a str)> {
    let Value::Text(text) = value else { return None };
    let (step, field) = text.split_once('.')?;
    Some((earlier.iter().position(|name| *name == step)?, field))
}

fn refers(expr: &Expr, earlier: &[&str]) -> bool {
    match expr {
        Expr::And(terms) | Expr::Or(terms) => terms.iter().any(|t| refers(t, earlier)),
        Expr::Not(inner) => refers(inner, earlier),
        Expr::Compare { value, .. } => reference(value, earlier).is_some(),
        _ => false,
    }
}

/// Compiles a step's condition: `earlier` names the steps before it, in order.
///
/// # Errors
/// What [`compile`](super::compile::compile) refuses, an unknown field after `STEP.`, fields
/// of different types compared, or an ordering (`<`, `has`, ...) between text fields.
pub fn compile_steps(
    expr: &Expr,
    earlier: &[&str],
    macros: &BTreeMap<String, Expr>,
) -> Result<StepMatcher, CompileError> {
    if !refers(expr, earlier) {
        let matcher = compile_in(expr, macros, &mut Vec::new())?;
        return Ok(Box::new(move |event, _| matcher(event)));
    }
    Ok(match expr {
        Expr::Not(inner) => {
            let inner = compile_steps(inner, earlier, macros)?;
            Box::new(move |e, steps| !inner(e, steps))
        }
        Expr::And(terms) => {
            let terms: Vec<StepMatcher> =
                terms.iter().map(|t| compile_steps(t, earlier, macros)).collect::<Result<_, _>>()?;
            Box::new(move |e, steps| terms.iter().all(|t| t(e, steps)))
        }
        Expr::Or(terms) => {
            let terms: Vec<StepMatcher> =
                terms.iter().map(|t| compile_steps(t, earlier, macros)).collect::<Result<_, _>>()?;
            Box::new(move |e, steps| terms.iter().any(|t| t(e, steps)))
        }
        Expr::Compare { field: name, op, value } if reference(value, earlier).is_some() => {
            let (step, other) = reference(value, earlier).unwrap_or_default();
            compare_fields(name, *op, step, other)?
        }
        other => {
            let matcher = compile_in(other, macros, &mut Vec::new())?;
            Box::new(move |event, _| matcher(event))
        }
    })
}

fn compare_fields(name: &str, op: CompareOp, step: usize, other: &str) -> Result<StepMatcher, CompileError> {
    let mismatch = || CompileError::WrongType {
        field: name.to_owned(),
        kind: "compared with a field of another type",
        value: other.to_owned(),
    };
    Ok(match (field(name)?, field(other)?) {
        (Field::Number(get), Field::Number(get_other)) => Box::new(move |e, steps| {
            let (Some(a), Some(b)) = (get(e), steps.get(step).and_then(|s| get_other(s))) else {
                return false;
            };
            match op {
                CompareOp::Eq => a == b,
                CompareOp::Ne => a != b,
                CompareOp::Lt => a < b,
                CompareOp::Le => a <= b,
                CompareOp::Gt => a > b,
                CompareOp::Ge => a >= b,
                CompareOp::Has => a & b == b,
            }
        }),
        (Field::Bytes(get), Field::Bytes(get_other)) => {
            let equal = match op {
                CompareOp::Eq => true,
                CompareOp::Ne => false,
                _ => {
                    return Err(CompileError::WrongType {
                        field: name.to_owned(),
                        kind: "text (compare with == or !=)",
                        value: other.to_owned(),
                    });
                }
            };
            Box::new(move |e, steps| match (get(e), steps.get(step).and_then(|s| get_other(s))) {
                (Some(a), Some(b)) => (a == b) == equal,
                _ => false,
            })
        }
        _ => return Err(mismatch()),
    })
}
