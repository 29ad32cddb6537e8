//! Parses a tracefs `format` file into the fields a tracepoint record carries. The file comes
//! from the kernel but is treated as hostile: its size, its number of fields and every number in
//! it are bounded, and a line that does not parse is refused with the line.

/// Most bytes of a format file read (the largest in Linux 6.x is a few KiB).
pub const MAX_FORMAT_BYTES: usize = 64 * 1024;
/// Most fields a format may declare.
pub const MAX_FIELDS: usize = 128;
/// Largest record offset accepted (records are at most a page).
const MAX_OFFSET: u32 = 4096;

/// How a field is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// An integer of `size` bytes (1, 2, 4 or 8).
    Int { signed: bool },
    /// `__data_loc char[]`: a string stored after the fixed fields.
    DataLocString,
    /// `char name[N]`: a fixed array holding a string.
    CharArray,
    /// Anything else (arrays of integers, structs): not captured.
    Other,
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    pub offset: u16,
    pub size: u16,
    pub ty: FieldType,
}

/// Why a format file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("format file is {len} bytes; at most {MAX_FORMAT_BYTES} are read")]
    TooLarge { len: usize },
    #[error("format file declares more than {MAX_FIELDS} fields")]
    TooManyFields,
    #[error("format line {line:?} does not parse ({why})")]
    BadLine { line: String, why: &'static str },
}

/// The fields (without the `common_*` ones every record starts with, which a BPF program
/// cannot read: the kernel overwrites them before it runs).
///
/// # Errors
/// A [`FormatError`] when the file is too large or a field line is malformed.
pub fn parse(text: &str) -> Result<Vec<FormatField>, FormatError> {
    if text.len() > MAX_FORMAT_BYTES {
        return Err(FormatError::TooLarge { len: text.len() });
    }
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let field = parse_field(rest).map_err(|why| FormatError::BadLine { line: bounded(line), why })?;
        if field.name.starts_with("common_") {
            continue;
        }
        if fields.len() == MAX_FIELDS {
            return Err(FormatError::TooManyFields);
        }
        fields.push(field);
    }
    Ok(fields)
}

/// A line as an error message shows it: at most 120 characters.
fn bounded(line: &str) -> String {
    line.chars().take(120).collect()
}

/// `TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;` (after `field:`).
fn parse_field(rest: &str) -> Result<FormatField, &'static str> {
    let mut parts = rest.split(';').map(str::trim);
    let declaration = parts.next().ok_or("no declaration")?;
    let mut number = |key: &str| -> Result<u32, &'static str> {
        let part = parts.next().ok_or("missing offset/size/signed")?;
        let value = part.strip_prefix(key).ok_or("offset/size/signed out of order")?;
        value.trim().parse::<u32>().map_err(|_| "not a number")
    };
    let offset = number("offset:")?;
    let size = number("size:")?;
    let signed = number("signed:")? != 0;
    if offset >= MAX_OFFSET || size > MAX_OFFSET || offset + size > MAX_OFFSET {
        return Err("offset or size beyond a page");
    }
    let (ty_text, name) = declaration.rsplit_once([' ', '*']).ok_or("no field name")?;
    let (name, array) = match name.split_once('[') {
        Some((name, _)) => (name, true),
        None => (name, false),
    };
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("field name is not an identifier");
    }
    let ty_text = ty_text.trim();
    let ty = if ty_text.starts_with("__data_loc") && ty_text.contains("char") {
        FieldType::DataLocString
    } else if array && (ty_text == "char" || ty_text == "const char" || ty_text == "unsigned char") {
        FieldType::CharArray
    } else if !array && !ty_text.starts_with("__data_loc") && matches!(size, 1 | 2 | 4 | 8) {
        FieldType::Int { signed }
    } else {
        FieldType::Other
    };
    Ok(FormatField {
        name: name.to_owned(),
        offset: u16::try_from(offset).map_err(|_| "offset too large")?,
        size: u16::try_from(size).map_err(|_| "size too large")?,
        ty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITEBACK: &str = "name: writeback_dirty_inode\nID: 1005\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:char name[32];\toffset:8;\tsize:32;\tsigned:0;\n\
        \tfield:ino_t ino;\toffset:40;\tsize:8;\tsigned:0;\n\
        \tfield:__data_loc char[] path;\toffset:48;\tsize:4;\tsigned:0;\n\
        \tfield:int ret;\toffset:52;\tsize:4;\tsigned:1;\n\
        \tfield:const char * ptr;\toffset:56;\tsize:8;\tsigned:0;\n\
        \tfield:u32 data[4];\toffset:64;\tsize:16;\tsigned:0;\n\n\
        print fmt: \"bdi %s: ino=%lu\", REC->name, REC->ino\n";

    #[test]
    fn reads_fields_and_their_types() {
        let fields = parse(WRITEBACK).unwrap();
        let summary: Vec<(&str, u16, u16, FieldType)> =
            fields.iter().map(|f| (f.name.as_str(), f.offset, f.size, f.ty)).collect();
        assert_eq!(
            summary,
            vec![
                ("name", 8, 32, FieldType::CharArray),
                ("ino", 40, 8, FieldType::Int { signed: false }),
                ("path", 48, 4, FieldType::DataLocString),
                ("ret", 52, 4, FieldType::Int { signed: true }),
                ("ptr", 56, 8, FieldType::Int { signed: false }),
                ("data", 64, 16, FieldType::Other),
            ]
        );
    }

    #[test]
    fn refuses_hostile_files() {
        assert_eq!(
            parse(&"x".repeat(MAX_FORMAT_BYTES + 1)),
            Err(FormatError::TooLarge { len: MAX_FORMAT_BYTES + 1 })
        );
        assert_eq!(parse("format:\n"), Ok(Vec::new()));
        for line in [
            "field:int x;\toffset:99999;\tsize:4;\tsigned:1;",
            "field:int x;\toffset:8;\tsize:4",
            "field:int x;\tsize:4;\toffset:8;\tsigned:1;",
            "field:int ../../x;\toffset:8;\tsize:4;\tsigned:1;",
            "field:int;\toffset:8;\tsize:-4;\tsigned:1;",
        ] {
            assert!(matches!(parse(&format!("ID: 1\n{line}\n")), Err(FormatError::BadLine { .. })), "{line}");
        }
        let many: Vec<String> =
            (0..=MAX_FIELDS).map(|i| format!("field:int f{i};\toffset:8;\tsize:4;\tsigned:1;")).collect();
        let many = many.join("\n");
        assert_eq!(parse(&format!("ID: 1\n{many}")), Err(FormatError::TooManyFields));
    }
}
