//! Path arithmetic on raw bytes: joining a relative path to its base and lexical normalization.

/// Joins `path` to `base` (when relative) and normalizes the result lexically: repeated slashes
/// and `.` disappear, `..` removes the previous component (never above `/`).
#[must_use]
pub fn resolve(base: Option<&[u8]>, path: &[u8]) -> Vec<u8> {
    let mut joined;
    let full = if path.first() == Some(&b'/') {
        path
    } else if let Some(base) = base {
        joined = Vec::with_capacity(base.len() + 1 + path.len());
        joined.extend_from_slice(base);
        joined.push(b'/');
        joined.extend_from_slice(path);
        &joined[..]
    } else {
        // No base known: report the path as given (it stays visibly relative).
        return path.to_vec();
    };
    normalize(full)
}

/// Lexically normalizes an absolute path.
#[must_use]
pub fn normalize(path: &[u8]) -> Vec<u8> {
    if is_normal(path) {
        return path.to_vec();
    }
    let mut components: Vec<&[u8]> = Vec::new();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                components.pop();
            }
            other => components.push(other),
        }
    }
    if components.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::with_capacity(path.len());
    for component in components {
        out.push(b'/');
        out.extend_from_slice(component);
    }
    out
}

/// Whether `path` is already normal: absolute, with no empty, `.` or `..` component and no
/// trailing slash (`/` itself is normal). Most paths the kernel reports are.
fn is_normal(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    path.first() == Some(&b'/')
        && path[1..].split(|&b| b == b'/').all(|component| !matches!(component, b"" | b"." | b".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_normalizes() {
        assert_eq!(resolve(Some(b"/w"), b"a/./b//c"), b"/w/a/b/c");
        assert_eq!(resolve(Some(b"/w/sub"), b"../x"), b"/w/x");
        assert_eq!(resolve(Some(b"/w"), b"/abs/../y"), b"/y");
        assert_eq!(resolve(None, b"rel"), b"rel");
        assert_eq!(resolve(Some(b"/"), b"../../.."), b"/");
        assert_eq!(resolve(Some(b"/w"), b""), b"/w");
        assert_eq!(resolve(Some(b"/w"), b"bad\xff\nname"), b"/w/bad\xff\nname");
        for (raw, normal) in [
            (&b"/"[..], &b"/"[..]),
            (b"/a/b", b"/a/b"),
            (b"/a/b/", b"/a/b"),
            (b"/a/./b", b"/a/b"),
            (b"/a/../b", b"/b"),
            (b"/a/..", b"/"),
            (b"/a/.", b"/a"),
            (b"//a", b"/a"),
            (b"/..a/.b/c..", b"/..a/.b/c.."),
        ] {
            assert_eq!(normalize(raw), normal, "{:?}", String::from_utf8_lossy(raw));
        }
    }
}
