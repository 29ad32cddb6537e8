//! Reads the running kernel's BTF (`/sys/kernel/btf/vmlinux`, and a module's split BTF such as
//! `/sys/kernel/btf/fuse`) to find where kernel structs keep their fields. aya 0.14 has no CO-RE
//! for Rust programs, so probes that read kernel structs get their offsets from here, through a
//! map, instead of from constants that only fit one kernel build.

use std::path::Path;

/// Where the kernel publishes its BTF.
pub const SYSFS_BTF: &str = "/sys/kernel/btf";

/// `BTF_MAGIC` (`0xeB9F`), as the first two bytes of a little-endian blob.
const MAGIC: u16 = 0xeb9f;
/// Bytes of the fixed part of every type record (`name_off`, `info`, `size`/`type`).
const TYPE_HEADER: usize = 12;

/// Why a BTF lookup failed. Each message names the blob or the type.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a little-endian BTF blob (bad magic, header or section bounds)")]
    Malformed { what: String },
    #[error("BTF type record {id} has unknown kind {kind}; vexevent may be older than this kernel's BTF")]
    UnknownKind { id: u32, kind: u32 },
    #[error("the kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("struct {ty} has no member {member} in the kernel BTF")]
    NoMember { ty: String, member: String },
    #[error("{ty}.{member} is a bit field; only byte-aligned members can be read")]
    BitField { ty: String, member: String },
    #[error("type {id} is not a struct or union, so {member} cannot be looked up in it")]
    NotAggregate { id: u32, member: String },
    #[error("type {id} has no size in the kernel BTF")]
    NoSize { id: u32 },
}

/// BTF kinds (`BTF_KIND_*`) this reader distinguishes.
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// A struct or union member.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset in bits from the start of the enclosing type.
    bit_offset: u32,
    /// Non-zero for a bit field.
    bitfield_size: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: String,
    /// `size` for sized kinds, the referenced type for modifiers, typedefs and pointers.
    size_or_ref: u32,
    members: Vec<Member>,
    /// Element type and count of an array.
    array: Option<(u32, u32)>,
    /// An integer's `BTF_INT_*` encoding bits (`BTF_INT_SIGNED` is 1).
    int_encoding: u32,
}

/// The types of one BTF blob, with those of its base when it is split BTF (a module's).
#[derive(Clone, Debug, Default)]
pub struct KernelBtf {
    /// `types[i]` has id `i + 1`; ids continue across base and split BTF.
    types: Vec<Type>,
}

/// A member found by path: where it starts and how many bytes it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn c_string(strings: &[u8], offset: usize) -> Option<String> {
    let tail = strings.get(offset..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&tail[..end]).into_owned())
}

impl KernelBtf {
    /// The running kernel's own BTF (vmlinux, without any module's).
    ///
    /// # Errors
    /// When the BTF is missing or malformed.
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::parse(&read(&Path::new(SYSFS_BTF).join("vmlinux"))?, None, "vmlinux")
    }

    /// The running kernel's BTF: vmlinux, plus `module`'s split BTF when the module is loaded
    /// and has its own (a built-in driver's types are in vmlinux).
    ///
    /// # Errors
    /// When the BTF is missing or malformed.
    pub fn running_kernel(module: &str) -> Result<Self, BtfError> {
        let dir = Path::new(SYSFS_BTF);
        let vmlinux = read(&dir.join("vmlinux"))?;
        let base = Self::parse(&vmlinux, None, "vmlinux")?;
        let module_path = dir.join(module);
        if !module_path.exists() {
            return Ok(base);
        }
        let split = read(&module_path)?;
        Self::parse(&split, Some((&base, &vmlinux)), module)
    }

    /// Parses a BTF blob; split BTF (a module's) needs its base blob and parsed types, whose
    /// strings and type ids it continues.
    ///
    /// # Errors
    /// When the blob is malformed or uses a kind this reader does not know.
    pub fn parse(data: &[u8], base: Option<(&KernelBtf, &[u8])>, what: &str) -> Result<Self, BtfError> {
        let malformed = || BtfError::Malformed { what: what.to_owned() };
        let (types_bytes, own_strings) = sections(data).ok_or_else(malformed)?;
        let base_strings: &[u8] = match base {
            Some((_, blob)) => sections(blob).ok_or_else(malformed)?.1,
            None => &[],
        };
        let string = |offset: u32| -> Option<String> {
            let offset = offset as usize;
            if offset < base_strings.len() {
                c_string(base_strings, offset)
            } else {
                c_string(own_strings, offset - base_strings.len())
            }
        };
        let mut types = base.map(|(btf, _)| btf.types.clone()).unwrap_or_default();
        let mut at = 0;
        while at < types_bytes.len() {
            let id = u32::try_from(types.len() + 1).map_err(|_| malformed())?;
            let name_off = u32_at(types_bytes, at).ok_or_else(malformed)?;
            let info = u32_at(types_bytes, at + 4).ok_or_else(malformed)?;
            let size_or_ref = u32_at(types_bytes, at + 8).ok_or_else(malformed)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += TYPE_HEADER;
            let mut ty = Type {
                kind,
                name: string(name_off).ok_or_else(malformed)?,
                size_or_ref,
                members: Vec::new(),
                array: None,
                int_encoding: 0,
            };
            let extra = match kind {
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                kind::INT => {
                    ty.int_encoding = u32_at(types_bytes, at).ok_or_else(malformed)? >> 24;
                    4
                }
                kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => {
                    let element = u32_at(types_bytes, at).ok_or_else(malformed)?;
                    let count = u32_at(types_bytes, at + 8).ok_or_else(malformed)?;
                    ty.array = Some((element, count));
                    12
                }
                kind::STRUCT | kind::UNION => {
                    for i in 0..vlen {
                        let member = at + i * 12;
                        let raw_offset = u32_at(types_bytes, member + 8).ok_or_else(malformed)?;
                        // With kind_flag set, the top byte is the bit field size.
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (raw_offset & 0x00ff_ffff, raw_offset >> 24)
                        } else {
                            (raw_offset, 0)
                        };
                        ty.members.push(Member {
                            name: string(u32_at(types_bytes, member).ok_or_else(malformed)?)
                                .ok_or_else(malformed)?,
                            type_id: u32_at(types_bytes, member + 4).ok_or_else(malformed)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    vlen * 12
                }
                kind::FUNC_PROTO => {
                    // The parameters, as members without offsets.
                    for i in 0..vlen {
                        let param = at + i * 8;
                        ty.members.push(Member {
                            name: string(u32_at(types_bytes, param).ok_or_else(malformed)?)
                                .ok_or_else(malformed)?,
                            type_id: u32_at(types_bytes, param + 4).ok_or_else(malformed)?,
                            bit_offset: 0,
                            bitfield_size: 0,
                        });
                    }
                    vlen * 8
                }
                kind::ENUM => vlen * 8,
                kind::DATASEC | kind::ENUM64 => vlen * 12,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            at += extra;
            types.push(ty);
        }
        Ok(Self { types })
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> u32 {
        // A bound, so a malformed cycle cannot loop forever.
        for _ in 0..32 {
            match self.get(id) {
                Some(ty)
                    if matches!(
                        ty.kind,
                        kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG
                    ) =>
                {
                    id = ty.size_or_ref;
                }
                _ => break,
            }
        }
        id
    }

    /// Bytes of a type.
    ///
    /// # Errors
    /// When the type has no size (void, a function, a forward declaration).
    pub fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.resolve(id);
        let ty = self.get(id).ok_or(BtfError::NoSize { id })?;
        match ty.kind {
            kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT => {
                Ok(ty.size_or_ref)
            }
            // x86_64 and every other 64-bit target vexevent runs on.
            kind::PTR => Ok(8),
            kind::ARRAY => {
                let (element, count) = ty.array.ok_or(BtfError::NoSize { id })?;
                Ok(self.size_of(element)?.saturating_mul(count))
            }
            _ => Err(BtfError::NoSize { id }),
        }
    }

    /// The id of the struct called `name` that has members (not a forward declaration).
    ///
    /// # Errors
    /// When the BTF has no such struct.
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|ty| ty.kind == kind::STRUCT && ty.name == name && !ty.members.is_empty())
            .and_then(|index| u32::try_from(index + 1).ok())
            .ok_or_else(|| BtfError::NoStruct { name: name.to_owned() })
    }

    /// Finds `member` in a struct or union, looking through anonymous members; returns the
    /// member and the bit offset of the anonymous members it lies in.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(Member, u32)> {
        let ty = self.get(self.resolve(id))?;
        if depth > 8 || !matches!(ty.kind, kind::STRUCT | kind::UNION) {
            return None;
        }
        ty.members.iter().find_map(|m| {
            if m.name == member {
                Some((m.clone(), m.bit_offset))
            } else if m.name.is_empty() {
                let (found, inner) = self.find_member(m.type_id, member, depth + 1)?;
                Some((found, m.bit_offset + inner))
            } else {
                None
            }
        })
    }

    /// Offset and size of a member of struct `ty`, by path (`["in", "h", "unique"]` is
    /// `ty.in.h.unique`).
    ///
    /// # Errors
    /// When the struct or a member along the path is missing, or the member is a bit field.
    pub fn field(&self, ty: &str, path: &[&str]) -> Result<Field, BtfError> {
        let mut id = self.struct_id(ty)?;
        let mut bits = 0u32;
        let mut size = self.size_of(id)?;
        for &name in path {
            let resolved = self.resolve(id);
            if !self.get(resolved).is_some_and(|t| matches!(t.kind, kind::STRUCT | kind::UNION)) {
                return Err(BtfError::NotAggregate { id: resolved, member: name.to_owned() });
            }
            let (member, bit_offset) = self
                .find_member(id, name, 0)
                .ok_or_else(|| BtfError::NoMember { ty: ty.to_owned(), member: path.join(".") })?;
            if member.bitfield_size != 0 || bit_offset % 8 != 0 {
                return Err(BtfError::BitField { ty: ty.to_owned(), member: path.join(".") });
            }
            bits += bit_offset;
            id = member.type_id;
            size = self.size_of(id)?;
        }
        Ok(Field { offset: bits / 8, size })
    }
}

/// What a function parameter is, as far as the function probes care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// An integer (or enum, or bool) of `size` bytes.
    Int { size: u32, signed: bool },
    /// A pointer to `struct NAME`.
    StructPointer(String),
    /// A pointer to `char` (signed, unsigned or plain).
    CharPointer,
    /// Any other pointer.
    Pointer,
    /// Anything else (a struct by value, a float).
    Other,
}

impl KernelBtf {
    /// Ids of the functions (`BTF_KIND_FUNC`) by name.
    #[must_use]
    pub fn functions(&self) -> std::collections::HashMap<&str, u32> {
        self.types
            .iter()
            .enumerate()
            .filter(|(_, ty)| ty.kind == kind::FUNC)
            .filter_map(|(index, ty)| Some((ty.name.as_str(), u32::try_from(index + 1).ok()?)))
            .collect()
    }

    /// The parameters of the function with id `func` (from [`Self::functions`]), name and type,
    /// and its return type. `None` when the id is not a function with a prototype.
    #[must_use]
    pub fn signature(&self, func: u32) -> Option<(Vec<(String, ParamType)>, ParamType)> {
        let func = self.get(func).filter(|ty| ty.kind == kind::FUNC)?;
        let proto = self.get(func.size_or_ref).filter(|ty| ty.kind == kind::FUNC_PROTO)?;
        let params =
            proto.members.iter().map(|param| (param.name.clone(), self.param_type(param.type_id))).collect();
        Some((params, self.param_type(proto.size_or_ref)))
    }

    fn param_type(&self, id: u32) -> ParamType {
        let Some(ty) = self.get(self.resolve(id)) else { return ParamType::Other };
        match ty.kind {
            kind::INT => ParamType::Int { size: ty.size_or_ref, signed: ty.int_encoding & 1 != 0 },
            kind::ENUM | kind::ENUM64 => ParamType::Int { size: ty.size_or_ref, signed: false },
            kind::PTR => match self.get(self.resolve(ty.size_or_ref)) {
                Some(target)
                    if matches!(target.kind, kind::STRUCT | kind::FWD) && !target.name.is_empty() =>
                {
                    ParamType::StructPointer(target.name.clone())
                }
                Some(target)
                    if target.kind == kind::INT
                        && target.size_or_ref == 1
                        && target.name.contains("char") =>
                {
                    ParamType::CharPointer
                }
                _ => ParamType::Pointer,
            },
            _ => ParamType::Other,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    std::fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })
}

/// The type and string sections of a blob.
fn sections(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if data.get(..2)? != MAGIC.to_le_bytes() {
        return None;
    }
    let header_len = u32_at(data, 4)? as usize;
    let field = |at| u32_at(data, at).map(|v| v as usize);
    let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
    let types = data.get(header_len + type_off..header_len + type_off + type_len)?;
    let strings = data.get(header_len + str_off..header_len + str_off + str_len)?;
    Some((types, strings))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a little-endian BTF blob from type records and a string table.
    pub(crate) fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]); // version 1, no flags
        let header_len = 24u32;
        let types_len = u32::try_from(types.len()).unwrap();
        let strings_len = u32::try_from(strings.len()).unwrap();
        for value in [header_len, 0, types_len, types_len, strings_len] {
            data.extend_from_slice(&value.to_le_bytes());
        }
        data.extend_from_slice(types);
        data.extend_from_slice(strings);
        data
    }

    fn record(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | (kind << 24) | vlen
    }

    /// A base blob with `u32` (id 1) and `u8` (id 2), and a split blob in which
    /// `struct req { u32 a; struct { u32 len; u32 unique; } h; u8 flag:1; struct req *next; }`
    /// (id 5, its anonymous struct id 4, the pointer id 3) and `void f(void)` (id 6).
    fn base_and_split() -> (Vec<u8>, Vec<u8>) {
        // Strings: "\0u32\0u8\0" in the base; the split blob continues at offset 8.
        let base_strings = b"\0u32\0u8\0".to_vec();
        let mut base_types = record(&[1, info(kind::INT, 0, false), 4, 32]);
        base_types.extend(record(&[5, info(kind::INT, 0, false), 1, 8]));
        let base = blob(&base_types, &base_strings);
        // Split strings at offset 8: "req\0a\0h\0len\0unique\0flag\0next\0f\0".
        let split_strings = b"req\0a\0h\0len\0unique\0flag\0next\0f\0";
        let at = |s: &str| -> u32 {
            let needle = format!("{s}\0");
            let pos = split_strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap();
            8 + u32::try_from(pos).unwrap()
        };
        let mut types = record(&[0, info(kind::PTR, 0, false), 5]); // id 3: struct req *
        types.extend(record(&[0, info(kind::STRUCT, 2, false), 8])); // id 4: anonymous
        types.extend(record(&[at("len"), 1, 0, at("unique"), 1, 32]));
        types.extend(record(&[at("req"), info(kind::STRUCT, 4, true), 24])); // id 5
        types.extend(record(&[at("a"), 1, 0]));
        types.extend(record(&[at("h"), 4, 32]));
        types.extend(record(&[at("flag"), 2, (1 << 24) | 0x60]));
        types.extend(record(&[at("next"), 3, 128]));
        types.extend(record(&[at("f"), info(kind::FUNC, 0, false), 0])); // id 6
        (base, blob(&types, split_strings))
    }

    #[test]
    fn finds_nested_members_of_split_btf() {
        let (base_blob, split_blob) = base_and_split();
        let base = KernelBtf::parse(&base_blob, None, "base").unwrap();
        let btf = KernelBtf::parse(&split_blob, Some((&base, &base_blob)), "split").unwrap();
        assert_eq!(btf.field("req", &["a"]).unwrap(), Field { offset: 0, size: 4 });
        assert_eq!(btf.field("req", &["h", "unique"]).unwrap(), Field { offset: 8, size: 4 });
        assert_eq!(btf.field("req", &["next"]).unwrap(), Field { offset: 16, size: 8 });
        assert_eq!(btf.field("req", &[]).unwrap(), Field { offset: 0, size: 24 });
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let (base_blob, split_blob) = base_and_split();
        let base = KernelBtf::parse(&base_blob, None, "base").unwrap();
        let btf = KernelBtf::parse(&split_blob, Some((&base, &base_blob)), "split").unwrap();
        assert!(matches!(btf.field("req", &["flag"]), Err(BtfError::BitField { .. })));
        assert!(matches!(btf.field("req", &["h", "missing"]), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.field("req", &["a", "b"]), Err(BtfError::NotAggregate { .. })));
        assert!(matches!(btf.field("other", &[]), Err(BtfError::NoStruct { .. })));
        assert!(matches!(
            KernelBtf::parse(b"not btf at all, clearly", None, "junk"),
            Err(BtfError::Malformed { .. })
        ));
        // Split BTF without its base has string offsets it cannot resolve.
        assert!(KernelBtf::parse(&split_blob, None, "split").is_err());
    }
}
