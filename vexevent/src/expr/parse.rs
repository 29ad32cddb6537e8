//! The filter language's lexer and recursive-descent parser. Errors carry the line and column of
//! the offending token and what was expected there.
//!
//! ```text
//! expr       := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" expr ")" | "@" name | "true" | "false" | comparison
//! comparison := field ("==" | "!=" | "<" | "<=" | ">" | ">=" | "has") value
//!             | field "in" "[" value ("," value)* "]"
//!             | field ("glob" | "prefix" | "matches" | "contains") string
//! value      := string | number | word
//! ```

use std::fmt;

/// Longest filter text accepted, in bytes: far beyond any written by hand, small enough that
/// parsing and compiling it stays cheap (the stream's `filter=` comes from any local client).
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Deepest nesting of parentheses and `not` accepted: the parser and the compiler recurse once
/// per level, and a thread's stack must not be what limits them.
pub const MAX_NESTING: usize = 64;

/// A parsed filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Const(bool),
    Macro(String),
    Compare { field: String, op: CompareOp, value: Value },
    In { field: String, values: Vec<Value> },
    Text { field: String, op: TextOp, pattern: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// All bits of the value are set (flags).
    Has,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextOp {
    Glob,
    Prefix,
    Matches,
    Contains,
}

/// A literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(i64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Where a filter is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(i64),
    Op(&'static str),
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "`{w}`"),
            Token::Str(s) => write!(f, "string {s:?}"),
            Token::Num(n) => write!(f, "number {n}"),
            Token::Op(o) => write!(f, "`{o}`"),
            Token::End => write!(f, "the end of the filter"),
        }
    }
}

/// A token and where it starts (line, column, both from 1).
type Spanned = (Token, usize, usize);

const OPERATORS: [&str; 12] = ["==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", "@"];

fn lex(source: &str) -> Result<Vec<Spanned>, ParseError> {
    let mut tokens = Vec::new();
    let (mut line, mut column) = (1, 1);
    let mut chars = source.char_indices().peekable();
    while let Some(&(index, c)) = chars.peek() {
        let (start_line, start_column) = (line, column);
        let error = |message: String| ParseError { line: start_line, column: start_column, message };
        if c == '\n' {
            chars.next();
            line += 1;
            column = 1;
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            column += 1;
            continue;
        }
        if c == '"' {
            chars.next();
            column += 1;
            let mut text = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => {
                        column += 1;
                        break;
                    }
                    Some((_, '\\')) => {
                        let escaped = chars.next().ok_or_else(|| error("unterminated string".into()))?.1;
                        text.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        column += 2;
                    }
                    Some((_, ch)) => {
                        text.push(ch);
                        column += 1;
                    }
                    None => return Err(error("unterminated string: expected a closing `\"`".into())),
                }
            }
            tokens.push((Token::Str(text), start_line, start_column));
            continue;
        }
        if let Some(op) = OPERATORS.iter().find(|op| source[index..].starts_with(**op)) {
            for _ in 0..op.len() {
                chars.next();
            }
            column += op.len();
            tokens.push((Token::Op(op), start_line, start_column));
            continue;
        }
        if c.is_ascii_digit() || c == '-' {
            let mut text = String::new();
            while let Some(&(_, ch)) = chars.peek() {
                if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                    text.push(ch);
                    chars.next();
                    column += 1;
                } else {
                    break;
                }
            }
            let number = match text.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .map_err(|_| error(format!("`{text}` is not a number")))?;
            tokens.push((Token::Num(number), start_line, start_column));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(&(_, ch)) = chars.peek() {
                if ch.is_alphanumeric() || ch == '_' || ch == '.' {
                    word.push(ch);
                    chars.next();
                    column += 1;
                } else {
                    break;
                }
            }
            tokens.push((Token::Word(word), start_line, start_column));
            continue;
        }
        if c == '=' {
            return Err(error("unexpected `=`: expected a comparison (did you mean `==`?)".into()));
        }
        return Err(error(format!("unexpected character `{c}`")));
    }
    tokens.push((Token::End, line, column));
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Spanned>,
    position: usize,
    /// Parentheses and `not`s open around the current token.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.position.min(self.tokens.len() - 1)].0
    }

    fn next(&mut self) -> Spanned {
        let token = self.tokens[self.position.min(self.tokens.len() - 1)].clone();
        self.position += 1;
        token
    }

    fn error_here(&self, expected: &str) -> ParseError {
        let (token, line, column) = &self.tokens[self.position.min(self.tokens.len() - 1)];
        ParseError { line: *line, column: *column, message: format!("expected {expected}, found {token}") }
    }

    /// Parses one level deeper (inside `(` or after `not`), refusing to go past `MAX_NESTING`.
    fn nested(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<Expr, ParseError>,
    ) -> Result<Expr, ParseError> {
        if self.depth == MAX_NESTING {
            let (_, line, column) = &self.tokens[self.position.min(self.tokens.len() - 1)];
            return Err(ParseError {
                line: *line,
                column: *column,
                message: format!(
                    "parentheses and `not` nest more than {MAX_NESTING} deep; at most {MAX_NESTING} levels are allowed"
                ),
            });
        }
        self.depth += 1;
        let parsed = parse(self);
        self.depth -= 1;
        parsed
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Token::Word(w) if w == word)
    }

    fn expect_op(&mut self, op: &'static str, expected: &str) -> Result<(), ParseError> {
        if *self.peek() == Token::Op(op) {
            self.next();
            Ok(())
        } else {
            Err(self.error_here(expected))
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.and()?];
        while self.is_word("or") {
            self.next();
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expr::Or(terms) })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.unary()?];
        while self.is_word("and") {
            self.next();
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expr::And(terms) })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek().clone() {
            Token::Word(w) if w == "not" => self.nested(|parser| {
                parser.next();
                Ok(Expr::Not(Box::new(parser.unary()?)))
            }),
            Token::Word(w) if w == "true" || w == "false" => {
                self.next();
                Ok(Expr::Const(w == "true"))
            }
            Token::Op("(") => self.nested(|parser| {
                parser.next();
                let inner = parser.expr()?;
                parser.expect_op(")", "`)`")?;
                Ok(inner)
            }),
            Token::Op("@") => {
                self.next();
                if let Token::Word(name) = self.next().0 {
                    Ok(Expr::Macro(name))
                } else {
                    self.position -= 1;
                    Err(self.error_here("a macro name after `@`"))
                }
            }
            Token::Word(field) => {
                self.next();
                self.comparison(field)
            }
            _ => Err(self.error_here("a field, `not`, `(` or `@macro`")),
        }
    }

    fn comparison(&mut self, field: String) -> Result<Expr, ParseError> {
        let op = match self.peek().clone() {
            Token::Op("==") => CompareOp::Eq,
            Token::Op("!=") => CompareOp::Ne,
            Token::Op("<") => CompareOp::Lt,
            Token::Op("<=") => CompareOp::Le,
            Token::Op(">") => CompareOp::Gt,
            Token::Op(">=") => CompareOp::Ge,
            Token::Word(w) if w == "has" => CompareOp::Has,
            Token::Word(w) if w == "in" => {
                self.next();
                return self.in_list(field);
            }
            Token::Word(w) if matches!(w.as_str(), "glob" | "prefix" | "matches" | "contains") => {
                self.next();
                let op = match w.as_str() {
                    "glob" => TextOp::Glob,
                    "prefix" => TextOp::Prefix,
                    "matches" => TextOp::Matches,
                    _ => TextOp::Contains,
                };
                return if let Token::Str(pattern) = self.next().0 {
                    Ok(Expr::Text { field, op, pattern })
                } else {
                    self.position -= 1;
                    Err(self.error_here(&format!("a quoted pattern after `{w}`")))
                };
            }
            _ => {
                return Err(self.error_here(
                    "a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`, `has`, `in`, `glob`, `prefix`, `matches`, `contains`)",
                ));
            }
        };
        self.next();
        Ok(Expr::Compare { field, op, value: self.value()? })
    }

    fn in_list(&mut self, field: String) -> Result<Expr, ParseError> {
        self.expect_op("[", "`[` after `in`")?;
        let mut values = vec![self.value()?];
        while *self.peek() == Token::Op(",") {
            self.next();
            values.push(self.value()?);
        }
        self.expect_op("]", "`,` or `]`")?;
        Ok(Expr::In { field, values })
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.next().0 {
            Token::Str(s) | Token::Word(s) => Ok(Value::Text(s)),
            Token::Num(n) => Ok(Value::Number(n)),
            _ => {
                self.position -= 1;
                Err(self.error_here("a value (a string, a number or a name)"))
            }
        }
    }
}

/// Parses a filter expression.
///
/// # Errors
/// Where the text stops being a filter, and what was expected there; a text longer than
/// `MAX_FILTER_BYTES` or nested deeper than `MAX_NESTING`.
pub fn parse(source: &str) -> Result<Expr, ParseError> {
    if source.len() > MAX_FILTER_BYTES {
        return Err(ParseError {
            line: 1,
            column: 1,
            message: format!(
                "the filter is {} bytes long; at most {MAX_FILTER_BYTES} are allowed",
                source.len()
            ),
        });
    }
    let mut parser = Parser { tokens: lex(source)?, position: 0, depth: 0 };
    let expr = parser.expr()?;
    if *parser.peek() != Token::End {
        return Err(parser.error_here("`and`, `or` or the end of the filter"));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_precedence_lists_and_text_operators() {
        let expr =
            parse(r#"type in [FilesystemCreate, FilesystemDelete] and not pid == 1 or path glob "/w/**""#)
                .unwrap();
        let Expr::Or(terms) = expr else { panic!("or at the top") };
        assert!(matches!(&terms[0], Expr::And(parts) if parts.len() == 2));
        assert!(matches!(&terms[1], Expr::Text { op: TextOp::Glob, .. }));
        assert_eq!(
            parse("flags has 0x04").unwrap(),
            Expr::Compare { field: "flags".into(), op: CompareOp::Has, value: Value::Number(4) }
        );
        assert_eq!(parse("@writes").unwrap(), Expr::Macro("writes".into()));
    }

    #[test]
    fn errors_point_at_the_line_and_column() {
        let error = parse("pid == 1 and\n  comm = \"x\"").unwrap_err();
        assert_eq!((error.line, error.column), (2, 8));
        assert!(error.message.contains("expected a comparison"), "{error}");
        let error = parse("type in [A, B").unwrap_err();
        assert_eq!((error.line, error.column), (1, 14));
        assert!(error.message.contains("`,` or `]`"), "{error}");
        let error = parse("path glob /w").unwrap_err();
        assert_eq!(error.column, 11);
        assert!(parse("(pid == 1").unwrap_err().message.contains("`)`"));
        assert!(parse("pid == 1 pid").unwrap_err().message.contains("`and`, `or`"));
        assert!(parse("comm == \"x").unwrap_err().message.contains("unterminated"));
    }

    #[test]
    fn nesting_and_length_are_bounded_with_the_limit_named() {
        let nested = |levels: usize| format!("{}true{}", "(".repeat(levels), ")".repeat(levels));
        assert_eq!(parse(&nested(MAX_NESTING)).unwrap(), Expr::Const(true));
        let error = parse(&nested(MAX_NESTING + 1)).unwrap_err();
        assert_eq!((error.line, error.column), (1, MAX_NESTING + 1), "{error}");
        assert!(error.message.contains("at most 64 levels"), "{error}");
        // What used to overflow the stack (issue 11): 20,000 parentheses, 5,000 `not`s.
        assert!(parse(&nested(20_000)).is_err());
        assert!(
            parse(&format!("{}true", "not ".repeat(5_000))).unwrap_err().message.contains("nest more than")
        );
        assert!(parse(&"not ".repeat(MAX_NESTING)).unwrap_err().message.contains("expected a field"));
        let long = format!("comm == \"{}\"", "x".repeat(MAX_FILTER_BYTES));
        let error = parse(&long).unwrap_err();
        assert!(error.message.contains(&format!("at most {MAX_FILTER_BYTES}")), "{error}");
    }
}
