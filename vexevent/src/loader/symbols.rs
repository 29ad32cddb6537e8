//! Finds functions in a daemon's binary by the name a user writes: the symbol itself (C, or a
//! `#[no_mangle]` Rust function) or its demangled Rust path without the hash
//! (`vexfs::fuse_impl::VexFSFuse::search_vectors`).

use std::path::Path;

use object::{Object as _, ObjectSymbol as _};

/// A requested name, and the symbol it resolved to (or why not).
pub type Resolved = (String, Result<String, String>);

/// The symbol names (as in the binary) of the requested functions; `Err` per name not found.
///
/// # Errors
/// When the binary cannot be read or parsed.
pub fn resolve(binary: &Path, names: &[String]) -> Result<Vec<Resolved>, String> {
    let data = std::fs::read(binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    let file =
        object::File::parse(&*data).map_err(|e| format!("{} is not an ELF binary: {e}", binary.display()))?;
    let symbols: Vec<String> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    Ok(names
        .iter()
        .map(|wanted| {
            let found = symbols.iter().find(|symbol| matches(symbol, wanted)).cloned();
            (
                wanted.clone(),
                found.ok_or_else(|| format!("symbol {wanted} not found in {}", binary.display())),
            )
        })
        .collect())
}

/// Whether a symbol is the function a user named.
#[must_use]
pub fn matches(symbol: &str, wanted: &str) -> bool {
    symbol == wanted || format!("{:#}", rustc_demangle::demangle(symbol)) == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_plain_and_demangled_rust_names() {
        assert!(matches("vexfs_search_vectors", "vexfs_search_vectors"));
        let mangled = "_ZN5vexfs9fuse_impl9VexFSFuse14search_vectors17h0123456789abcdefE";
        assert!(matches(mangled, "vexfs::fuse_impl::VexFSFuse::search_vectors"));
        assert!(!matches(mangled, "vexfs::fuse_impl::VexFSFuse::lookup"));
    }

    #[test]
    fn finds_functions_of_this_test_binary_and_reports_missing_ones() {
        let exe = std::env::current_exe().unwrap();
        let wanted = vec!["main".to_owned(), "no_such_function_anywhere".to_owned()];
        let found = resolve(&exe, &wanted).unwrap();
        assert!(found[0].1.is_ok(), "{found:?}");
        assert!(found[1].1.as_ref().unwrap_err().contains("not found"));
    }
}
