//! Conditions over several events, for the steps of a rule's sequence: in a step's expression a
//! bare word `STEP.FIELD` that names an earlier step is that step's field, so
//! `type == FilesystemRename and path == create.path` holds when this event renames the file the
//! `create` step created. Everything else compiles as in any filter. Of an earlier step's event
//! only the fields later steps name are kept ([`Captures`]), not the event.

use std::collections::BTreeMap;

use super::{
    compile::{CompileError, Field, compile_in, field},
    parse::{CompareOp, Expr, Value},
};
use crate::event::SemanticEvent;

/// A field of an earlier step's event, as a later step reads it (`None`: the event had none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Captured {
    Number(Option<i64>),
    Bytes(Option<Box<[u8]>>),
}

/// What a sequence keeps of one step's event: the fields later steps name, in [`Captures`] order.
pub type Kept = Box<[Captured]>;

/// The fields of each step's event that later steps name, gathered while the steps compile (in
/// order): a step's event is reduced to them ([`Captures::keep`]).
#[derive(Default)]
pub struct Captures {
    /// Per step: the fields kept, by name.
    steps: Vec<Vec<(String, Field)>>,
}

impl Captures {
    /// Where step `step`'s field `name` is kept (added the first time a step names it).
    fn slot(&mut self, step: usize, name: &str) -> Result<(usize, Field), CompileError> {
        if self.steps.len() <= step {
            self.steps.resize_with(step + 1, Vec::new);
        }
        let fields = &mut self.steps[step];
        if let Some(at) = fields.iter().position(|(kept, _)| kept == name) {
            return Ok((at, fields[at].1));
        }
        let get = field(name)?;
        fields.push((name.to_owned(), get));
        Ok((fields.len() - 1, get))
    }

    /// What step `step` keeps of `event` (nothing when no later step names its fields).
    #[must_use]
    pub fn keep(&self, step: usize, event: &SemanticEvent) -> Kept {
        self.steps.get(step).map_or_else(Kept::default, |fields| {
            fields
                .iter()
                .map(|(_, get)| match get {
                    Field::Number(get) => Captured::Number(get(event)),
                    Field::Bytes(get) => Captured::Bytes(get(event).map(Box::from)),
                })
                .collect()
        })
    }
}

/// A compiled condition over an event and what the earlier steps kept, in step order.
pub type StepMatcher = Box<dyn Fn(&SemanticEvent, &[Kept]) -> bool + Send + Sync>;

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

/// Compiles a step's condition: `earlier` names the steps before it, in order; the earlier
/// steps' fields it names are added to `captures`.
///
/// # Errors
/// What [`compile`](super::compile::compile) refuses, an unknown field after `STEP.`, fields
/// of different types compared, or an ordering (`<`, `has`, ...) between text fields.
pub fn compile_steps(
    expr: &Expr,
    earlier: &[&str],
    macros: &BTreeMap<String, Expr>,
    captures: &mut Captures,
) -> Result<StepMatcher, CompileError> {
    if !refers(expr, earlier) {
        let matcher = compile_in(expr, macros, &mut Vec::new())?;
        return Ok(Box::new(move |event, _| matcher(event)));
    }
    Ok(match expr {
        Expr::Not(inner) => {
            let inner = compile_steps(inner, earlier, macros, captures)?;
            Box::new(move |e, steps| !inner(e, steps))
        }
        Expr::And(terms) => {
            let terms: Vec<StepMatcher> = terms
                .iter()
                .map(|t| compile_steps(t, earlier, macros, captures))
                .collect::<Result<_, _>>()?;
            Box::new(move |e, steps| terms.iter().all(|t| t(e, steps)))
        }
        Expr::Or(terms) => {
            let terms: Vec<StepMatcher> = terms
                .iter()
                .map(|t| compile_steps(t, earlier, macros, captures))
                .collect::<Result<_, _>>()?;
            Box::new(move |e, steps| terms.iter().any(|t| t(e, steps)))
        }
        Expr::Compare { field: name, op, value } if reference(value, earlier).is_some() => {
            let (step, other) = reference(value, earlier).unwrap_or_default();
            compare_fields(name, *op, captures.slot(step, other)?, (step, other))?
        }
        other => {
            let matcher = compile_in(other, macros, &mut Vec::new())?;
            Box::new(move |event, _| matcher(event))
        }
    })
}

/// What step `step` kept at `slot`.
fn kept(steps: &[Kept], (step, slot): (usize, usize)) -> Option<&Captured> {
    steps.get(step)?.get(slot)
}

fn compare_fields(
    name: &str,
    op: CompareOp,
    (slot, other_field): (usize, Field),
    (step, other): (usize, &str),
) -> Result<StepMatcher, CompileError> {
    let mismatch = || CompileError::WrongType {
        field: name.to_owned(),
        kind: "compared with a field of another type",
        value: other.to_owned(),
    };
    Ok(match (field(name)?, other_field) {
        (Field::Number(get), Field::Number(_)) => Box::new(move |e, steps| {
            let (Some(a), Some(Captured::Number(Some(b)))) = (get(e), kept(steps, (step, slot))) else {
                return false;
            };
            let b = *b;
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
        (Field::Bytes(get), Field::Bytes(_)) => {
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
            Box::new(move |e, steps| match (get(e), kept(steps, (step, slot))) {
                (Some(a), Some(Captured::Bytes(Some(b)))) => (a == &b[..]) == equal,
                _ => false,
            })
        }
        _ => return Err(mismatch()),
    })
}
