//! What the property tests that fuzz outside input share (filter parser, stream query, record
//! decoder, config loader; their tests are named `fuzz_*`): how many inputs each runs, and
//! generators of text made of a language's own tokens mixed with arbitrary characters, so that
//! inputs reach past the first syntax error. `cargo xtask fuzz --inputs N` runs them long, in a
//! release build (`VEXEVENT_FUZZ_INPUTS`).

use proptest::{prelude::*, test_runner::Config};

/// Inputs per target in an ordinary test run: a few seconds each in a debug build.
const DEFAULT_INPUTS: u32 = 5_000;

/// Proptest's settings: `VEXEVENT_FUZZ_INPUTS` inputs (else the default), failures reported
/// (and shrunk) but not written next to the sources: a crash found becomes a named regression
/// test.
pub(crate) fn config() -> Config {
    let cases =
        std::env::var("VEXEVENT_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_INPUTS);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Text of up to `max_pieces` pieces, each one of `tokens` (mostly) or a short arbitrary string.
pub(crate) fn text_of(tokens: &'static [&'static str], max_pieces: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => prop::sample::select(tokens).prop_map(str::to_owned),
        1 => ".{0,6}",
    ];
    prop::collection::vec(piece, 0..max_pieces).prop_map(|pieces| pieces.concat())
}

/// The filter language's words, operators and awkward values.
pub(crate) const FILTER_TOKENS: &[&str] = &[
    "(",
    ")",
    "not ",
    " and ",
    " or ",
    "@m",
    "@",
    "true",
    "false",
    "type",
    "category",
    "path",
    "target",
    "pid",
    "comm",
    "flags",
    "ok",
    "ret",
    "bytes",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    " in ",
    "[",
    "]",
    ",",
    " glob ",
    " matches ",
    " prefix ",
    " contains ",
    " has ",
    "\"",
    "\"/w/**\"",
    "\"(\"",
    "\"[a-\"",
    "\\",
    "0x",
    "0x7f",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "FilesystemWrite",
    "filesystem",
    "*",
    "**",
    "{",
    "\n",
    " ",
    "=",
    "é",
    "\u{0}",
];
