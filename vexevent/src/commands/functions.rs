//! `vexevent functions --list GLOB`: one line per kernel function the glob names, saying whether
//! it exists (its address and module), whether its arguments can be typed (BTF), and whether it
//! can be attached here, or why not (inlined, missing, no kprobes in this kernel).

use vexevent::loader::list_functions;

/// Prints the functions `pattern` names.
///
/// # Errors
/// When the glob is malformed or /proc/kallsyms cannot be read.
pub fn list(pattern: &str) -> anyhow::Result<()> {
    let functions = list_functions(pattern).map_err(anyhow::Error::msg)?;
    if functions.is_empty() {
        println!("no function matches {pattern}");
    }
    for function in functions {
        let place = match &function.symbol {
            Some(symbol) => format!(
                "{:#x} {}",
                symbol.address,
                symbol.module.as_deref().map_or("vmlinux".to_owned(), |m| format!("[{m}]"))
            ),
            None => "-".to_owned(),
        };
        let btf = if function.btf { "btf" } else { "no-btf" };
        let attach = match &function.attachable {
            Ok(how) => format!("attachable ({how})"),
            Err(why) => format!("not attachable: {why}"),
        };
        println!("{}\t{place}\t{btf}\t{attach}", function.name);
    }
    Ok(())
}
