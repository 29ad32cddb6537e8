//! The expression language on synthetic events.

use std::collections::BTreeMap;

use super::*;
use crate::event::EventType;

fn event(event_type: EventType, path: &str, pid: u32, comm: &str, ok: bool) -> SemanticEvent {
    let mut event = SemanticEvent::sample(event_type, path, pid, comm, ok);
    event.context.filesystem.as_mut().unwrap().bytes = Some(10);
    let process = event.process.as_mut().unwrap();
    (process.uid, process.gid, process.cgroup_id) = (1000, 1000, 4242);
    event.duration_ns = 5_000;
    event
}

fn filter(text: &str) -> Filter {
    Filter::new("test", text, &BTreeMap::new()).unwrap()
}

#[test]
fn evaluates_every_kind_of_condition() {
    let create = event(EventType::FilesystemCreate, "/srv/data/a.txt", 42, "writer", true);
    for (text, expected) in [
        ("type == FilesystemCreate", true),
        ("category == filesystem and code == 257", true),
        (r#"path glob "/srv/data/*.txt""#, true),
        (r#"path glob "/srv/*.txt""#, false),
        (r#"path glob "/srv/**/*.txt""#, true),
        (r#"path prefix "/srv/" and not path matches "\.log$""#, true),
        (r#"comm in ["writer", "reader"] and pid >= 40 and pid < 50"#, true),
        ("ok == false or error == ENOENT", false),
        ("flags has 0x04 and priority <= 3 and bytes > 9 and duration_ns < 10000", true),
        ("source == syscall and uid != 0", true),
        ("cgroup_id == 4242", true),
        (r#"path contains "data/a""#, true),
    ] {
        assert_eq!(filter(text).matches(&create), expected, "{text}");
    }
    let failed = event(EventType::FilesystemDelete, "/srv/x", 1, "rm", false);
    assert!(filter("ok == false and error == ENOENT").matches(&failed));
    let mut unknown_cgroup = failed;
    unknown_cgroup.process.as_mut().unwrap().cgroup_id = 0;
    assert!(!filter("cgroup_id == 0").matches(&unknown_cgroup), "0 is no cgroup: the field is absent");
}

#[test]
fn macros_expand_and_bad_filters_say_why() {
    let mut definitions = BTreeMap::new();
    definitions.insert("writes".to_owned(), "type in [FilesystemWrite, FilesystemCreate]".to_owned());
    definitions.insert("loop".to_owned(), "@loop".to_owned());
    let macros = parse_macros(&definitions).unwrap();
    let writes = Filter::new("w", "@writes and pid == 42", &macros).unwrap();
    assert!(writes.matches(&event(EventType::FilesystemCreate, "/x", 42, "c", true)));
    let error = |text: &str| {
        let error = Filter::new("f", text, &macros).err().unwrap();
        format!("{error}: {}", std::error::Error::source(&error).unwrap())
    };
    assert!(error("@loop").contains("refers to itself"));
    assert!(error("@nope").contains("unknown macro"));
    assert!(error("size == 3").contains("unknown field `size`"));
    assert!(error("type == FilesystemCreat").contains("not an event type"));
    assert!(error("pid == abc").contains("is a number"));
    assert!(error(r#"path matches "(""#).contains("invalid pattern"));
    // Within the regex crate's own limits, over ours.
    assert!(regex::bytes::Regex::new(r"\w{100}").is_ok());
    assert!(error(r#"path matches "\\w{100}""#).contains("size limit"), "a regex is bounded");
    assert!(error("pid glob \"1*\"").contains("applies to text fields"));
    assert!(error("pid ==").contains("line 1, column 7"));
}

#[test]
fn globs_without_a_regex_match_as_globset_does() {
    for pattern in ["**/*.locked", "/etc/shadow", "**/*.tmp.x", "*.locked", "/srv/*/a", "**/*"] {
        let glob =
            globset::GlobBuilder::new(pattern).literal_separator(true).build().unwrap().compile_matcher();
        let compiled = filter(&format!("path glob {pattern:?}"));
        for path in [
            "/srv/a.locked",
            "a.locked",
            ".locked",
            "/srv/x/.locked",
            "/srv/a.lockedx",
            "/etc/shadow",
            "/etc/shadow2",
            "/srv/q/a",
            "/a.tmp.x",
            "",
        ] {
            let event = event(EventType::FilesystemWrite, path, 1, "c", true);
            assert_eq!(compiled.matches(&event), glob.is_match(path), "{pattern} on {path:?}");
        }
    }
    let rename = event(EventType::FilesystemRename, "/a", 1, "c", true);
    assert!(filter("type == FilesystemRename and type != FilesystemWrite").matches(&rename));
    assert!(filter("type in [FilesystemWrite, FilesystemRename]").matches(&rename));
    assert!(!filter("type in [FilesystemWrite]").matches(&rename));
}

#[test]
fn macros_nest_a_bounded_number_of_levels() {
    // m0 = pid == 1, m1 = @m0, ..., each level one more macro deep.
    let chain = |levels: usize| -> BTreeMap<String, String> {
        (0..=levels)
            .map(|i| (format!("m{i}"), if i == 0 { "pid == 1".to_owned() } else { format!("@m{}", i - 1) }))
            .collect()
    };
    let limit = 16;
    let macros = parse_macros(&chain(limit)).unwrap();
    assert!(Filter::new("f", &format!("@m{}", limit - 1), &macros).is_ok());
    let error = Filter::new("f", &format!("@m{limit}"), &macros).err().unwrap();
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("at most 16 may nest"), "{cause}");
}

#[test]
fn a_step_keeps_only_the_fields_later_steps_name() {
    let macros = BTreeMap::new();
    let mut captures = Captures::default();
    let steps = [
        ("create", r#"type == FilesystemCreate and path glob "**/*.tmp""#),
        ("write", "type == FilesystemWrite and path == create.path and pid == create.pid"),
        ("rename", "type == FilesystemRename and path == write.path and comm != create.comm"),
    ];
    let mut names = Vec::new();
    let mut matchers = Vec::new();
    for (name, text) in steps {
        matchers.push(compile_steps(&parse(text).unwrap(), &names, &macros, &mut captures).unwrap());
        names.push(name);
    }
    let create = event(EventType::FilesystemCreate, "/d/a.tmp", 7, "writer", true);
    let kept_create = captures.keep(0, &create);
    assert_eq!(
        &kept_create[..],
        [
            Captured::Bytes(Some(b"/d/a.tmp"[..].into())),
            Captured::Number(Some(7)),
            Captured::Bytes(Some(b"writer"[..].into()))
        ],
        "path, pid and comm, each once, in the order later steps name them"
    );
    let write = event(EventType::FilesystemWrite, "/d/a.tmp", 7, "writer", true);
    let kept_write = captures.keep(1, &write);
    assert_eq!(&kept_write[..], [Captured::Bytes(Some(b"/d/a.tmp"[..].into()))]);
    assert!(captures.keep(2, &write).is_empty(), "the last step keeps nothing");
    assert!(matchers[1](&write, std::slice::from_ref(&kept_create)));
    let other = event(EventType::FilesystemWrite, "/d/a.tmp", 8, "writer", true);
    assert!(!matchers[1](&other, std::slice::from_ref(&kept_create)), "another pid");
    let rename = event(EventType::FilesystemRename, "/d/a.tmp", 7, "mv", true);
    assert!(matchers[2](&rename, &[kept_create.clone(), kept_write.clone()]));
    let same_comm = event(EventType::FilesystemRename, "/d/a.tmp", 7, "writer", true);
    assert!(!matchers[2](&same_comm, &[kept_create, kept_write]));
}

proptest::proptest! {
    #![proptest_config(crate::fuzz::config())]

    /// Any text: parsed and compiled, or refused with an error; never a panic or a stack
    /// overflow; what compiles can be evaluated.
    #[test]
    fn fuzz_filter_parser(text in crate::fuzz::text_of(crate::fuzz::FILTER_TOKENS, 48)) {
        let macros = parse_macros(&BTreeMap::from([("m".to_owned(), "pid == 1 or @n".to_owned()), ("n".to_owned(), "ok == true".to_owned())])).unwrap();
        if let Ok(filter) = Filter::new("fuzz", &text, &macros) {
            let _ = filter.matches(&event(EventType::FilesystemWrite, "/w/a", 1, "c", true));
        }
    }
}
