//! vexevent's eBPF programs. Thin on purpose: filter first, fill a record, submit, count failures.
//! `syscalls` holds the syscall tracepoint pair, `process` the fork tracepoint, `fuse` the FUSE
//! request pair, `daemon_functions` the uprobes on FUSE daemon functions; `maps` declares
//! every map, `scope` answers "is this path or fd watched?", `record` fills record headers,
//! `ring` submits records. Diagnostics go through aya-log; the loader leaves them off (the
//! verifier then removes them) unless asked (`vexevent run --debug-probes`).
#![no_std]
#![no_main]

mod daemon_functions;
mod fuse;
mod maps;
mod process;
mod record;
mod ring;
mod scope;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
