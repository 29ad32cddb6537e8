//! What an expression requires of an event before it can hold: the event types it can match and
//! the path prefixes the event's path must start with (from `type ==`, `type in`, `path ==`,
//! `path in`, `path prefix`, a glob's literal start, and in a sequence's step `path == STEP.path`,
//! which inherits the earlier step's prefixes). Both are necessary conditions, never sufficient:
//! a stage indexes its conditions by them and evaluates only the candidates an event can match.

use std::collections::HashSet;

use super::{
    Macros,
    parse::{CompareOp, Expr, TextOp, Value},
    steps::reference,
};
use crate::event::EventType;

/// Macro expansions followed (compiling refuses deeper nesting and recursion first).
const MAX_DEPTH: usize = 16;

/// What an event must have for an expression to hold (`None`: anything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The event types it can match.
    pub types: Option<HashSet<EventType>>,
    /// The path starts with one of these (never empty: an empty prefix is `None`).
    pub path_prefixes: Option<Vec<Vec<u8>>>,
}

impl Needs {
    /// What either of two expressions needs (their `or`).
    #[must_use]
    pub fn or(self, other: Needs) -> Needs {
        Needs {
            types: self.types.zip(other.types).map(|(a, b)| &a | &b),
            path_prefixes: self.path_prefixes.zip(other.path_prefixes).map(|(mut a, b)| {
                a.extend(b);
                a
            }),
        }
    }

    fn prefixes(prefixes: Vec<Vec<u8>>) -> Needs {
        let known = !prefixes.iter().any(Vec::is_empty);
        Needs { types: None, path_prefixes: known.then_some(prefixes) }
    }
}

/// The literal start of a glob (up to its first special character).
fn glob_prefix(pattern: &str) -> &str {
    &pattern[..pattern.find(['*', '?', '[', '{', '\\']).unwrap_or(pattern.len())]
}

/// What `expr` needs; `earlier` names a sequence's earlier steps with what each needs (empty
/// outside a sequence).
#[must_use]
pub fn needs(expr: &Expr, macros: &Macros, earlier: &[(&str, &Needs)]) -> Needs {
    needs_in(expr, macros, earlier, 0)
}

fn needs_in(expr: &Expr, macros: &Macros, earlier: &[(&str, &Needs)], depth: usize) -> Needs {
    let type_named = |value: &Value| match value {
        Value::Text(name) => EventType::from_name(name),
        Value::Number(_) => None,
    };
    let text = |value: &Value| match value {
        Value::Text(text) => text.as_bytes().to_vec(),
        Value::Number(n) => n.to_string().into_bytes(),
    };
    match expr {
        Expr::Const(false) => Needs { types: Some(HashSet::new()), path_prefixes: Some(Vec::new()) },
        Expr::Compare { field, op: CompareOp::Eq, value } if field == "type" => {
            Needs { types: Some(type_named(value).into_iter().collect()), path_prefixes: None }
        }
        Expr::In { field, values } if field == "type" => {
            Needs { types: Some(values.iter().filter_map(type_named).collect()), path_prefixes: None }
        }
        Expr::Compare { field, op: CompareOp::Eq, value } if field == "path" => {
            let names: Vec<&str> = earlier.iter().map(|(name, _)| *name).collect();
            match reference(value, &names) {
                Some((step, "path")) => {
                    Needs { types: None, path_prefixes: earlier[step].1.path_prefixes.clone() }
                }
                Some(_) => Needs::default(),
                None => Needs::prefixes(vec![text(value)]),
            }
        }
        Expr::In { field, values } if field == "path" => Needs::prefixes(values.iter().map(text).collect()),
        Expr::Text { field, op: TextOp::Prefix, pattern } if field == "path" => {
            Needs::prefixes(vec![pattern.as_bytes().to_vec()])
        }
        Expr::Text { field, op: TextOp::Glob, pattern } if field == "path" => {
            Needs::prefixes(vec![glob_prefix(pattern).as_bytes().to_vec()])
        }
        Expr::And(terms) => {
            let all: Vec<Needs> = terms.iter().map(|t| needs_in(t, macros, earlier, depth)).collect();
            let types = all
                .iter()
                .filter_map(|n| n.types.clone())
                .reduce(|a, b| a.intersection(&b).copied().collect());
            // Any one term's prefixes are necessary: the most selective (longest shortest prefix).
            let path_prefixes = all
                .into_iter()
                .filter_map(|n| n.path_prefixes)
                .max_by_key(|p| (p.iter().map(Vec::len).min().unwrap_or(usize::MAX), usize::MAX - p.len()));
            Needs { types, path_prefixes }
        }
        Expr::Or(terms) => {
            terms.iter().map(|t| needs_in(t, macros, earlier, depth)).reduce(Needs::or).unwrap_or_default()
        }
        Expr::Macro(name) if depth < MAX_DEPTH => {
            macros.get(name).map_or_else(Needs::default, |body| needs_in(body, macros, earlier, depth + 1))
        }
        _ => Needs::default(),
    }
}
