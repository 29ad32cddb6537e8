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

/// Offset of a field in a tracepoint's record, from its `format` file.
#[must_use]
pub fn field_offset(category: &str, name: &str, field: &str) -> Option<u32> {
    let format =
        std::fs::read_to_string(Path::new(TRACEFS).join("events").join(category).join(name).join("format"))
            .ok()?;
    parse_field_offset(&format, field)
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
    }
}
