//! The part of a filter the kernel can evaluate: conditions on pid, uid, comm, operation type and
//! path prefix that every passing event must meet (top-level `and` terms of every filter of an
//! `all` chain). The probes drop what fails them; userspace still evaluates the whole filter, so
//! pushing down only ever saves work.

use std::{collections::HashSet, fmt, path::PathBuf};

use vexevent_common::OpKind;

use super::{ChainMode, FilterChain};
use crate::{
    event::{EventType, ops_yielding},
    expr::{CompareOp, Expr, TextOp, Value},
};

/// Conditions the probes can apply (`None`: no condition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelPart {
    pub pids: Option<Vec<u32>>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub ops: Option<HashSet<OpKind>>,
    /// Directories every matching path lies in.
    pub dirs: Option<Vec<PathBuf>>,
}

fn numbers(values: &[Value]) -> Option<Vec<i64>> {
    values.iter().map(|v| if let Value::Number(n) = v { Some(*n) } else { None }).collect()
}

fn texts(values: &[Value]) -> Option<Vec<String>> {
    values.iter().map(|v| if let Value::Text(t) = v { Some(t.clone()) } else { None }).collect()
}

/// The directory a path prefix or glob pins every match to, when it names an existing one.
fn literal_dir(op: TextOp, pattern: &str) -> Option<PathBuf> {
    let literal = match op {
        TextOp::Prefix => pattern,
        TextOp::Glob => &pattern[..pattern.find(['*', '?', '[', '{']).unwrap_or(pattern.len())],
        _ => return None,
    };
    let dir = &literal[..=literal.rfind('/')?];
    let dir = PathBuf::from(dir);
    (dir.is_absolute() && dir.is_dir()).then_some(dir)
}

fn apply(term: &Expr, part: &mut KernelPart) {
    match term {
        Expr::Compare { field, op: CompareOp::Eq, value } => {
            apply(&Expr::In { field: field.clone(), values: vec![value.clone()] }, part);
        }
        Expr::In { field, values } => match field.as_str() {
            "pid" => {
                part.pids =
                    numbers(values).map(|n| n.into_iter().filter_map(|p| u32::try_from(p).ok()).collect());
            }
            "uid" if values.len() == 1 => part.uid = numbers(values).and_then(|n| u32::try_from(n[0]).ok()),
            "comm" if values.len() == 1 => {
                part.comm = texts(values).map(|mut t| t.remove(0)).filter(|c| c.len() <= 15);
            }
            "type" => {
                let ops: Option<HashSet<OpKind>> = texts(values).and_then(|names| {
                    names.iter().map(|name| EventType::from_name(name).and_then(ops_yielding)).try_fold(
                        HashSet::new(),
                        |mut set, ops| {
                            set.extend(ops?);
                            Some(set)
                        },
                    )
                });
                part.ops = ops;
            }
            _ => {}
        },
        Expr::Text { field, op, pattern } if field == "path" => {
            part.dirs = literal_dir(*op, pattern).map(|dir| vec![dir]);
        }
        Expr::And(terms) => terms.iter().for_each(|t| apply(t, part)),
        _ => {}
    }
}

/// What the kernel can do of a chain.
#[must_use]
pub fn pushdown(chain: &FilterChain) -> KernelPart {
    let mut part = KernelPart::default();
    // With `any` or `first-match` an event may pass by any one filter: only a single filter's
    // conditions are certain.
    if chain.mode == ChainMode::All || chain.filters.len() == 1 {
        for filter in &chain.filters {
            apply(&filter.expr, &mut part);
        }
    }
    part
}

impl fmt::Display for KernelPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        if let Some(pids) = &self.pids {
            writeln!(f, "  kernel: pid in {pids:?}")?;
            any = true;
        }
        if let Some(uid) = self.uid {
            writeln!(f, "  kernel: uid == {uid}")?;
            any = true;
        }
        if let Some(comm) = &self.comm {
            writeln!(f, "  kernel: comm == {comm:?}")?;
            any = true;
        }
        if let Some(ops) = &self.ops {
            let mut names: Vec<&str> = ops.iter().map(|op| op.name()).collect();
            names.sort_unstable();
            writeln!(
                f,
                "  kernel: operation types {} (plus open/close/chdir/dup for path tracking)",
                names.join(", ")
            )?;
            any = true;
        }
        if let Some(dirs) = &self.dirs {
            writeln!(
                f,
                "  kernel: paths under {}",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            )?;
            any = true;
        }
        if !any {
            writeln!(f, "  kernel: nothing of the filter (it runs in userspace only)")?;
        }
        Ok(())
    }
}
