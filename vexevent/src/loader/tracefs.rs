//! Reads tracefs: whether it is mounted, which events exist, and field offsets from `format`
//! files (so offsets come from the running kernel, not constants).

use std::path::Path;

/// Where tracefs is mounted.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Whether tracefs is mounted (its `events` directory is visible).
#[must_use]
pub fn mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Whether a tracepoint exists.
#[must_use]
pub fn event_exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS).join("events").join(category).join(name).is_dir()
}

/// A tracepoint's `format` file (empty when it cannot be read).
#[must_use]
pub fn format(category: &str, name: &str) -> String {
    std::fs::read_to_string(Path::new(TRACEFS).join("events").join(category).join(name).join("format"))
        .unwrap_or_default()
}

/// A field a probe reads is not in its tracepoint's format: the probe would read another field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "tracepoint {event} has no field {field} in its tracefs format; vexevent does not know this kernel's layout"
)]
pub struct MissingField {
    pub event: String,
    pub field: &'static str,
}

/// Offsets of `fields`, in order, in the format text of tracepoint `event`.
///
/// # Errors
/// The first field the format does not declare.
pub fn field_offsets<const N: usize>(
    event: &str,
    format: &str,
    fields: [&'static str; N],
) -> Result<[u32; N], MissingField> {
    let mut offsets = [0; N];
    for (offset, field) in offsets.iter_mut().zip(fields) {
        *offset = parse_field_offset(format, field)
            .ok_or_else(|| MissingField { event: event.to_owned(), field })?;
    }
    Ok(offsets)
}

/// Finds `offset:N` on the line declaring `field`.
#[must_use]
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let declaration = line.trim().strip_prefix("field:")?.split(';').next()?;
        let name = declaration.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        let offset = line.split(';').find_map(|part| part.trim().strip_prefix("offset:"))?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_offsets_in_a_format_file() {
        let format = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                      \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                      \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(format, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(format, "parent_pid"), Some(12));
        assert_eq!(parse_field_offset(format, "pid"), None);
        assert_eq!(
            field_offsets("sched/sched_process_fork", format, ["child_pid", "parent_pid"]),
            Ok([20, 12])
        );
        let missing = field_offsets("sched/sched_process_fork", format, ["parent_pid", "pid"]).unwrap_err();
        assert_eq!(missing, MissingField { event: "sched/sched_process_fork".to_owned(), field: "pid" });
        assert_eq!(
            missing.to_string(),
            "tracepoint sched/sched_process_fork has no field pid in its tracefs format; vexevent does not know this kernel's layout"
        );
    }
}
