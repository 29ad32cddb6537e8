//! The expression language shared by every stage that selects events (the filter, routes, stream
//! subscriptions, rules; a rule's later steps may compare fields with an earlier step's, see
//! `steps`; what an expression needs of an event, for indexes, see `needs`): parsed once (see
//! `parse` for the grammar), compiled once into a matcher over [`SemanticEvent`] fields, with
//! named macros (`@name`); filters chain (all, any, first match).
//!
//! ```
//! use std::collections::BTreeMap;
//! use vexevent::expr::Filter;
//! let writes = Filter::new("writes", r#"type == FilesystemWrite and path prefix "/srv""#, &BTreeMap::new())
//!     .unwrap();
//! assert_eq!(writes.name, "writes");
//! ```

mod compile;
mod needs;
mod parse;
mod steps;

use std::collections::BTreeMap;

pub use compile::{CompileError, Matcher};
pub use needs::{Needs, needs};
pub use parse::{CompareOp, Expr, ParseError, TextOp, Value, parse};
pub use steps::{Captured, Captures, Kept, StepMatcher, compile_steps};

use crate::event::SemanticEvent;

/// Parsed macros: name -> expression, expanded where `@name` appears.
pub type Macros = BTreeMap<String, Expr>;

/// Why an expression is not usable.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter {name:?} does not parse")]
    Parse {
        name: String,
        #[source]
        source: ParseError,
    },
    #[error("filter {name:?} is not valid")]
    Compile {
        name: String,
        #[source]
        source: CompileError,
    },
}

/// A named filter expression, parsed and compiled.
pub struct Filter {
    pub name: String,
    pub expr: Expr,
    matcher: Matcher,
}

impl Filter {
    /// Parses and compiles `source` with the given macros.
    ///
    /// # Errors
    /// A parse error with its line and column, or a compile error.
    pub fn new(name: &str, source: &str, macros: &Macros) -> Result<Self, FilterError> {
        let expr = parse(source).map_err(|source| FilterError::Parse { name: name.to_owned(), source })?;
        let matcher = compile::compile(&expr, macros)
            .map_err(|source| FilterError::Compile { name: name.to_owned(), source })?;
        Ok(Self { name: name.to_owned(), expr, matcher })
    }

    #[must_use]
    pub fn matches(&self, event: &SemanticEvent) -> bool {
        (self.matcher)(event)
    }
}

/// Parses macro definitions (name -> expression text).
///
/// # Errors
/// The first macro that does not parse.
pub fn parse_macros(definitions: &BTreeMap<String, String>) -> Result<Macros, FilterError> {
    definitions
        .iter()
        .map(|(name, text)| {
            parse(text)
                .map(|expr| (name.clone(), expr))
                .map_err(|source| FilterError::Parse { name: format!("@{name}"), source })
        })
        .collect()
}

/// How a chain combines its filters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainMode {
    /// An event passes when every filter matches.
    #[default]
    All,
    /// An event passes when any filter matches.
    Any,
    /// An event passes when a filter matches; the first one that does names it.
    FirstMatch,
}

/// Filters applied together.
#[derive(Default)]
pub struct FilterChain {
    pub mode: ChainMode,
    pub filters: Vec<Filter>,
}

impl FilterChain {
    /// The filter an event passes by: `Some("")` for an empty chain or `All`/`Any`, the name of
    /// the first matching filter for `FirstMatch`, `None` when it does not pass.
    #[must_use]
    pub fn check(&self, event: &SemanticEvent) -> Option<&str> {
        if self.filters.is_empty() {
            return Some("");
        }
        match self.mode {
            ChainMode::All => self.filters.iter().all(|f| f.matches(event)).then_some(""),
            ChainMode::Any => self.filters.iter().any(|f| f.matches(event)).then_some(""),
            ChainMode::FirstMatch => self.filters.iter().find(|f| f.matches(event)).map(|f| f.name.as_str()),
        }
    }

    /// Whether the chain passes everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[cfg(test)]
mod tests;
