//! vexevent's eBPF programs. Thin on purpose: filter first, fill a record, submit, count failures.
//! `syscalls` holds the syscall tracepoint pair, `process` the fork tracepoint, `fuse` the FUSE
//! request pair, `daemon_functions` the uprobes on FUSE daemon functions, `kernel` the
//! tracepoints and kernel functions attached by name; `maps` declares
//! every map, `scope` answers "is this path or fd watched?", `record` fills record headers,
//! `ring` submits records. Diagnostics go through aya-log; the loader leaves them off (the
//! verifier then removes them) unless asked (`vexevent run --debug-probes`).
#![no_std]
#![no_main]
// Helpers are inlined into each program: the verifier checks a program with its helpers in place
// (bpf-to-bpf calls lose what it knows of pointer arguments), and calls cost stack frames.
#![expect(clippy::inline_always, reason = "eBPF programs inline their helpers")]
// Kernel ABI values change width on purpose: syscall registers are u64 carrying C ints and fds,
// ids come packed in pairs, lengths are bounded by masks the verifier can follow (a checked
// conversion would add branches it must explore).
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "kernel ABI conversions, bounded by masks the verifier follows"
)]

mod daemon_functions;
mod fuse;
mod kernel;
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
