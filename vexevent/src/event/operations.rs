//! Which event types a captured operation's record can become, and the inverse the filter's
//! kernel pushdown uses, from one table (translate's output is tied to it by a test). Events
//! derived from others (`VexFS` graph and vector events, error companions, FUSE requests no syscall
//! claimed) are not in it: a type only they yield cannot be narrowed to operations.

use vexevent_common::OpKind;

use super::EventType;

/// Operation types a user can select (the rest only keep path state right).
pub const USER_OPS: [OpKind; 19] = [
    OpKind::Open,
    OpKind::Read,
    OpKind::Write,
    OpKind::Close,
    OpKind::Rename,
    OpKind::Unlink,
    OpKind::Rmdir,
    OpKind::Mkdir,
    OpKind::Symlink,
    OpKind::Link,
    OpKind::Chmod,
    OpKind::Chown,
    OpKind::Truncate,
    OpKind::Fsync,
    OpKind::SetXattr,
    OpKind::RemoveXattr,
    OpKind::Ioctl,
    OpKind::Mount,
    OpKind::Umount,
];

/// Each operation type users select, and the event types its records become.
const OPERATION_TYPES: [(OpKind, &[EventType]); 18] = {
    use EventType as T;
    use OpKind as O;
    [
        (O::Open, &[T::FilesystemCreate, T::FilesystemRead]),
        (O::Read, &[T::FilesystemRead]),
        (O::Write, &[T::FilesystemWrite]),
        (O::Close, &[T::FilesystemRead]),
        (O::Rename, &[T::FilesystemRename]),
        // unlinkat(AT_REMOVEDIR) removes a directory.
        (O::Unlink, &[T::FilesystemDelete, T::FilesystemRmdir]),
        (O::Rmdir, &[T::FilesystemRmdir]),
        (O::Mkdir, &[T::FilesystemMkdir]),
        (O::Symlink, &[T::FilesystemSymlink]),
        (O::Link, &[T::FilesystemHardlink]),
        (O::Chmod, &[T::FilesystemChmod]),
        (O::Chown, &[T::FilesystemChown]),
        (O::Truncate, &[T::FilesystemTruncate]),
        (O::Fsync, &[T::SystemSync]),
        // `user.vexfs.graph.*` names are graph properties; other names write the file.
        (O::SetXattr, &[T::FilesystemWrite, T::GraphPropertySet]),
        (O::RemoveXattr, &[T::FilesystemWrite, T::GraphPropertyDelete]),
        (O::Mount, &[T::SystemMount]),
        (O::Umount, &[T::SystemUnmount]),
    ]
};

/// The event types a record of `op` can become (empty for operations not in the table: ioctls
/// map by `VexFS`'s ioctl table, bookkeeping records yield none).
#[must_use]
pub fn event_types_of(op: OpKind) -> &'static [EventType] {
    OPERATION_TYPES.iter().find(|(o, _)| *o == op).map_or(&[], |(_, types)| types)
}

/// The operations whose records can become an event of `event_type`; `None` when an event of
/// that type can also be derived from other events (or from ioctls), so no operation set covers it.
#[must_use]
pub fn ops_yielding(event_type: EventType) -> Option<Vec<OpKind>> {
    if matches!(event_type, EventType::GraphPropertySet | EventType::GraphPropertyDelete) {
        return None;
    }
    let ops: Vec<OpKind> =
        OPERATION_TYPES.iter().filter(|(_, types)| types.contains(&event_type)).map(|(op, _)| *op).collect();
    (!ops.is_empty()).then_some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inverse_holds_every_operation_that_yields_a_type() {
        assert_eq!(
            ops_yielding(EventType::FilesystemRead),
            Some(vec![OpKind::Open, OpKind::Read, OpKind::Close])
        );
        assert_eq!(
            ops_yielding(EventType::FilesystemWrite),
            Some(vec![OpKind::Write, OpKind::SetXattr, OpKind::RemoveXattr])
        );
        assert_eq!(ops_yielding(EventType::FilesystemRmdir), Some(vec![OpKind::Unlink, OpKind::Rmdir]));
        assert_eq!(ops_yielding(EventType::GraphNodeCreate), None, "derived from creates");
        assert_eq!(ops_yielding(EventType::VectorSearch), None, "ioctls and special files");
        for (op, types) in OPERATION_TYPES {
            for &event_type in types {
                if let Some(ops) = ops_yielding(event_type) {
                    assert!(ops.contains(&op), "{event_type:?} must list {op:?}");
                }
            }
        }
    }
}
