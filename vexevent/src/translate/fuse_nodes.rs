//! FUSE node ids to paths, per connection: the root node (1) is the mount point; every entry
//! reply (LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK) names a child of a known node; a RENAME
//! moves a node and everything below it.

use std::collections::HashMap;

use super::paths::normalize;

/// `FUSE_ROOT_ID`.
const ROOT_NODE: u64 = 1;

#[derive(Debug, Default)]
pub struct FuseNodes {
    /// connection -> node id -> absolute path.
    connections: HashMap<u32, HashMap<u64, Vec<u8>>>,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = parent.to_vec();
    path.push(b'/');
    path.extend_from_slice(name);
    normalize(&path)
}

impl FuseNodes {
    /// Knows the mount point of a connection.
    pub fn add_mount(&mut self, connection: u32, mount_point: Vec<u8>) {
        self.connections.entry(connection).or_default().insert(ROOT_NODE, mount_point);
    }

    /// The path of a node, when known.
    #[must_use]
    pub fn path(&self, connection: u32, node: u64) -> Option<&[u8]> {
        self.connections.get(&connection)?.get(&node).map(Vec::as_slice)
    }

    /// The path of `name` inside directory `parent`, when the parent is known.
    #[must_use]
    pub fn child(&self, connection: u32, parent: u64, name: &[u8]) -> Option<Vec<u8>> {
        self.path(connection, parent).map(|dir| join(dir, name))
    }

    /// An entry reply: `node` is `path`.
    pub fn learn(&mut self, connection: u32, node: u64, path: Vec<u8>) {
        if let Some(nodes) = self.connections.get_mut(&connection) {
            nodes.insert(node, path);
        }
    }

    /// A rename of `from` to `to`: every node at or below `from` moves.
    pub fn rename(&mut self, connection: u32, from: &[u8], to: &[u8]) {
        let Some(nodes) = self.connections.get_mut(&connection) else { return };
        for path in nodes.values_mut() {
            if path.starts_with(from) && (path.len() == from.len() || path[from.len()] == b'/') {
                let mut moved = to.to_vec();
                moved.extend_from_slice(&path[from.len()..]);
                *path = moved;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_children_and_follows_renames() {
        let mut nodes = FuseNodes::default();
        nodes.add_mount(53, b"/mnt/f".to_vec());
        let dir = nodes.child(53, 1, b"d").unwrap();
        nodes.learn(53, 7, dir.clone());
        let file = nodes.child(53, 7, b"x").unwrap();
        nodes.learn(53, 8, file);
        assert_eq!(nodes.path(53, 8), Some(&b"/mnt/f/d/x"[..]));
        nodes.rename(53, &dir, b"/mnt/f/e");
        assert_eq!(nodes.path(53, 8), Some(&b"/mnt/f/e/x"[..]));
        assert_eq!(nodes.child(54, 1, b"y"), None, "unknown connection");
    }
}
