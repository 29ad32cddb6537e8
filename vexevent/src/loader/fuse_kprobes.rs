//! The FUSE kprobe fallback for kernels without the FUSE tracepoints (before Linux 6.12): which
//! kernel functions queue and end a request on this kernel, and where `struct fuse_req` and the
//! structs it points to keep the fields the probes read, from the running kernel's BTF.

use vexevent_common::FuseKprobeLayout;

use super::kernel_btf::{BtfError, Field, KernelBtf};

/// The functions every request goes through when it is queued, with the request as second
/// argument (the send kprobe reads it there). Up to Linux 6.10 `queue_request_and_unlock(fiq,
/// req)` is the one place that sets `in.h.len` and puts a request on the pending list (the unique
/// is already set); 6.11 replaced it by `fuse_dev_queue_req`, which assigns the unique itself, and
/// 6.12 added the tracepoints.
const SEND_FUNCTIONS: [&str; 1] = ["queue_request_and_unlock"];

/// Ends every request with its reply (or an error) in every kernel since FUSE exists; exported,
/// so never inlined.
pub const END_FUNCTION: &str = "fuse_request_end";

/// The module whose BTF describes `struct fuse_req` when FUSE is not built in.
const FUSE_MODULE: &str = "fuse";

/// Why the FUSE kprobes cannot be used here. Each message says what is missing.
#[derive(Debug, thiserror::Error)]
pub enum FuseKprobeError {
    #[error(
        "cannot find the FUSE request layout in the kernel BTF (is the fuse module loaded? run: modprobe fuse): {0}"
    )]
    Layout(#[source] BtfError),
    #[error("{field} is {size} bytes, the probes read {expected}")]
    FieldSize { field: &'static str, size: u32, expected: &'static str },
    #[error("none of the functions that queue FUSE requests ({candidates}) is in /proc/kallsyms")]
    NoSendFunction { candidates: String },
}

/// Where the probes attach, and what they read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseKprobePlan {
    pub send_function: &'static str,
    pub layout: FuseKprobeLayout,
}

/// The plan for the running kernel.
///
/// # Errors
/// When the kernel has no BTF for FUSE (module not loaded) or no known queueing function.
pub fn plan() -> Result<FuseKprobePlan, FuseKprobeError> {
    // The layout first: without the fuse module neither its BTF nor its functions exist, and
    // "load the module" is the useful thing to say.
    let btf = KernelBtf::running_kernel(FUSE_MODULE).map_err(FuseKprobeError::Layout)?;
    let layout = layout(&btf)?;
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let send_function = SEND_FUNCTIONS
        .into_iter()
        .find(|name| kallsyms_has(&kallsyms, name))
        .ok_or_else(|| FuseKprobeError::NoSendFunction { candidates: SEND_FUNCTIONS.join(", ") })?;
    Ok(FuseKprobePlan { send_function, layout })
}

/// Whether kallsyms text lists a function (`addr t name` or `addr t name [module]`).
fn kallsyms_has(kallsyms: &str, name: &str) -> bool {
    kallsyms.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        matches!(fields.next(), Some("t" | "T")) && fields.next() == Some(name)
    })
}

/// Checks a field has the size the probe reads it with.
fn sized(
    field: Field,
    name: &'static str,
    sizes: &[u32],
    expected: &'static str,
) -> Result<u32, FuseKprobeError> {
    if sizes.contains(&field.size) {
        Ok(field.offset)
    } else {
        Err(FuseKprobeError::FieldSize { field: name, size: field.size, expected })
    }
}

/// The field offsets of `struct fuse_req` and its neighbours in this BTF.
///
/// # Errors
/// When a struct or member is missing, or has a size the probes do not read.
pub fn layout(btf: &KernelBtf) -> Result<FuseKprobeLayout, FuseKprobeError> {
    let field = |ty: &str, path: &[&str]| btf.field(ty, path).map_err(FuseKprobeError::Layout);
    Ok(FuseKprobeLayout {
        req_fm: sized(field("fuse_req", &["fm"])?, "fuse_req.fm", &[8], "a pointer")?,
        req_in_unique: sized(field("fuse_req", &["in", "h", "unique"])?, "fuse_req.in.h.unique", &[8], "8")?,
        req_in_opcode: sized(field("fuse_req", &["in", "h", "opcode"])?, "fuse_req.in.h.opcode", &[4], "4")?,
        req_out_error: sized(field("fuse_req", &["out", "h", "error"])?, "fuse_req.out.h.error", &[4], "4")?,
        mount_fc: sized(field("fuse_mount", &["fc"])?, "fuse_mount.fc", &[8], "a pointer")?,
        conn_dev: sized(field("fuse_conn", &["dev"])?, "fuse_conn.dev", &[4], "4")?,
        padding: [0; 2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_in_kallsyms() {
        let kallsyms = "ffffffffc0a008d0 t queue_request_and_unlock\t[fuse]\n\
                        ffffffffc0a00ba0 T fuse_request_end\t[fuse]\n\
                        ffffffff81000000 D queue_request_and_unlock_data\n";
        assert!(kallsyms_has(kallsyms, "queue_request_and_unlock"));
        assert!(kallsyms_has(kallsyms, "fuse_request_end"));
        assert!(!kallsyms_has(kallsyms, "queue_request_and_unlock_data"));
        assert!(!kallsyms_has(kallsyms, "fuse_dev_queue_req"));
    }

    /// The layout from the running kernel's BTF (FUSE built in, or its module loaded): offsets
    /// that agree with the uapi header and with each other.
    #[test]
    fn reads_the_running_kernels_fuse_request_layout() {
        let btf = match KernelBtf::running_kernel(FUSE_MODULE) {
            Ok(btf) => btf,
            Err(error) => {
                eprintln!("skipped: no readable kernel BTF ({error})");
                return;
            }
        };
        if btf.struct_id("fuse_req").is_err() {
            eprintln!("skipped: this kernel's BTF has no struct fuse_req (fuse module not loaded)");
            return;
        }
        let layout = layout(&btf).unwrap();
        // `struct fuse_in_header` and `fuse_out_header` are uapi: their layout is fixed (the
        // out header's `len` sits between the in header's `unique` and its own `error`).
        assert_eq!(layout.req_in_opcode + 4, layout.req_in_unique);
        assert!(layout.req_in_unique + 8 < layout.req_out_error);
        assert!(layout.req_fm > layout.req_out_error, "fm follows the headers: {layout:?}");
    }
}
