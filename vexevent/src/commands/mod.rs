//! The binary's own subcommands and output: what `run` prints while it runs, and the commands
//! that talk to a running instance (`reload`, `tail`, `top`), and the rule commands (`replay`,
//! `audit`, `rollback`), and `functions --list`.

pub mod cluster;
pub mod functions;
pub mod reload;
pub mod remote;
pub mod rules;
pub mod run;
pub mod tail;
pub mod top;
