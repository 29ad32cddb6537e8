//! `cargo xtask vm-test`: runs the real `vexevent` binary on an older kernel, Debian's 6.1 (no
//! FUSE tracepoints, kprobes allowed), under QEMU, and checks that FUSE requests on a bindfs
//! mount are captured through the kprobe fallback with the right opcodes, paths, requesters and
//! timelines, and that the start-up report names the kprobe hooks; then that kernel functions
//! attached by name (`vfs_mkdir`, `vfs_rename`, `vfs_unlink`, `vfs_rmdir`) give their events,
//! and so do the functions of a small `vexfs` kernel module (`xtask/vexfs-module`) built here
//! against that kernel's headers, typed by signatures declared in the configuration.
//!
//! Everything it needs is fetched with apt into `target/vm-test/` once (idempotent): the kernel
//! package (vmlinuz and fuse.ko), its headers and a static busybox. The initramfs holds busybox,
//! fuse.ko, vexfs.ko, the host's bindfs and vexevent with their shared libraries, and `/init`
//! (the test script). The VM
//! writes its console to stdout and its results to a second serial port (a file), which this
//! task checks.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::{run, workspace_root};

/// The Debian 6.1 kernel: `CONFIG_KPROBES=y`, BTF for vmlinux and modules, FUSE as a module.
/// When the mirror has moved on to a newer ABI, the newest `linux-image-6.1.0-N-cloud-amd64-unsigned`
/// it has is used instead.
const KERNEL_PACKAGE: &str = "linux-image-6.1.0-47-cloud-amd64-unsigned";
const KERNEL_PACKAGE_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$";
/// A static busybox: the VM's shell and tools.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The whole VM run, boot to power-off; software emulation, so generous.
const VM_DEADLINE: Duration = Duration::from_mins(10);
/// Markers the VM prints on the console.
const PASS_LINE: &str = "VEXEVENT-VM-TEST: PASS";
const FAIL_LINE: &str = "VEXEVENT-VM-TEST: FAIL";

/// The VM's /init: mounts, loads fuse.ko, mounts bindfs, runs vexevent watching it, performs file
/// operations, stops vexevent and writes its report and events to the second serial port.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
fail() { echo "VEXEVENT-VM-TEST: FAIL $*"; poweroff -f; sleep 10; }
out() { echo "$*" >/dev/ttyS1; }
# Starts `vexevent run --config /tmp/$1.toml` watching $2 (output /tmp/$1.jsonl, stats
# /tmp/$1.json, stderr /tmp/$1.err) in the background, as $VX, and waits until it is ready.
traced_start() {
  vexevent run --config /tmp/$1.toml --watch $2 --output /tmp/$1.jsonl --stats-file /tmp/$1.json \
    --stats-interval 0 </dev/null >/dev/null 2>/tmp/$1.err &
  VX=$!
  ready /tmp/$1.err $VX
  cat /tmp/$1.err
}
# Stops the run traced_start began ($2 names it in a failure).
traced_stop() {
  kill -INT $VX
  wait $VX || fail "vexevent ($2) exited with $?"
  cat /tmp/$1.err
}
# Sends the files of one run (/tmp/$2.list, .err, .json, .jsonl) as sections @@$1-list ... @@$1-end.
report() {
  out "@@$1-list"; cat /tmp/$2.list >/dev/ttyS1
  out "@@$1-stderr"; cat /tmp/$2.err >/dev/ttyS1
  out "@@$1-stats"; cat /tmp/$2.json >/dev/ttyS1; out ""
  out "@@$1-events"; cat /tmp/$2.jsonl >/dev/ttyS1
  out "@@$1-end"
}
echo "vm: kernel $(uname -r)"
# Waits until the vexevent with pid $2 writing stderr to $1 is capturing.
ready() {
  i=0
  until grep -q "vexevent: ready" "$1"; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 "$2" 2>/dev/null; then cat "$1"; fail "vexevent did not become ready"; fi
    sleep 0.2
  done
}
# Waits (at most 60 s) until file $2 holds a line matching $1; status 1 when it never does.
seen() {
  i=0
  until grep -q "$1" "$2" 2>/dev/null; do
    i=$((i + 1))
    [ $i -gt 300 ] && return 1
    sleep 0.2
  done
  return 0
}
# Before fuse.ko is loaded: the start-up report must say why no FUSE hook attached. This run also
# has the probes' diagnostics on (this kernel's verifier must accept the probes with their log
# statements): a fork in a watched cwd must be reported by the probe.
vexevent run --watch /tmp --output /tmp/before.jsonl --stats-file /tmp/before.json --stats-interval 0 \
  --debug-probes </dev/null >/dev/null 2>/tmp/before.err &
VX=$!
ready /tmp/before.err $VX
(cd /tmp && { sleep 0 & wait; })
seen "vexevent::probes.*inherits the watched cwd" /tmp/before.err ||
  { cat /tmp/before.err; fail "no probe diagnostics with --debug-probes"; }
kill -INT $VX
wait $VX
cat /tmp/before.err
out "@@before"
cat /tmp/before.err >/dev/ttyS1
insmod /lib/modules/fuse.ko || fail "insmod fuse.ko"
[ -d /sys/kernel/btf/fuse ] || [ -f /sys/kernel/btf/fuse ] || fail "no BTF for the fuse module"
[ -d /sys/kernel/tracing/events/fuse ] && echo "vm: this kernel has FUSE tracepoints"
mkdir -p /tmp/src /tmp/mnt
bindfs /tmp/src /tmp/mnt || fail "bindfs mount"
DAEMON=$(pidof bindfs)
echo "vm: bindfs pid $DAEMON"
# The default 20 ms join window: under software emulation the (debug) consumer runs tens of ms
# behind the kernel, and the window runs from a request's arrival in userspace, so joins hold.
vexevent run --watch /tmp/mnt --output /tmp/events.jsonl --stats-file /tmp/stats.json \
  --stats-interval 0 </dev/null >/tmp/vexevent.out 2>/tmp/vexevent.err &
VX=$!
ready /tmp/vexevent.err $VX
cat /tmp/vexevent.err
# The operations; each FUSE request must carry the pid of the process whose syscall caused it.
sh -c 'echo hello >/tmp/mnt/file.txt; cat /tmp/mnt/file.txt >/dev/null;
  mkdir /tmp/mnt/dir; mv /tmp/mnt/file.txt /tmp/mnt/moved.txt; rm /tmp/mnt/moved.txt;
  rm /tmp/mnt/missing 2>/dev/null; rmdir /tmp/mnt/nodir 2>/dev/null; rmdir /tmp/mnt/dir'
# The host checks the events; a missing one shows there.
seen '"FilesystemRmdir"' /tmp/events.jsonl || :
kill -INT $VX
wait $VX || fail "vexevent exited with $?"
echo "vm: vexevent exited with 0"
cat /tmp/vexevent.err
out "@@daemon $DAEMON"
out "@@stderr"
cat /tmp/vexevent.err >/dev/ttyS1
out "@@stats"
cat /tmp/stats.json >/dev/ttyS1
out ""
out "@@events"
cat /tmp/events.jsonl >/dev/ttyS1
out "@@end"
grep -q "attached.*kprobe/queue_request_and_unlock" /tmp/vexevent.err || fail "no kprobe hooks in the start-up report"
grep -q '"opcode_name":"CREATE"' /tmp/events.jsonl || fail "no FUSE CREATE request in the events"
umount /tmp/mnt
# Kernel functions by name: the VFS calls behind mkdir, rename, unlink and rmdir (the last one
# refused: the directory is not empty), timed, with their dentries as paths.
mkdir -p /tmp/kf
cat >/tmp/kf.toml <<'TOML'
[[kernel_functions]]
name = "vfs_mkdir"
[[kernel_functions]]
name = "vfs_rename"
[[kernel_functions]]
name = "vfs_unlink"
[[kernel_functions]]
name = "vfs_rmdir"
TOML
vexevent functions --list 'vfs_[mru]*' >/tmp/kf.list 2>&1 || fail "vexevent functions --list failed"
traced_start kf /tmp/kf
sh -c 'mkdir /tmp/kf/d; echo x >/tmp/kf/d/a; mv /tmp/kf/d/a /tmp/kf/d/b; rmdir /tmp/kf/d 2>/dev/null; rm /tmp/kf/d/b'
seen '"vfs_unlink"' /tmp/kf.jsonl || :
traced_stop kf "kernel functions"
report kfunc kf
# VexFS's kernel module: its functions by name, typed by the signatures declared here (the module
# is built without BTF), on a vexfs mount: file operations and two vector operations.
insmod /lib/modules/vexfs.ko || fail "insmod vexfs.ko"
mkdir -p /tmp/vexfs
mount -t vexfs vexfs /tmp/vexfs || fail "mount -t vexfs"
cat >/tmp/vexfs.toml <<'TOML'
[[kernel_functions]]
name = "vexfs_create"
signature = ["struct user_namespace *userns", "struct inode *dir", "struct dentry *dentry", "umode_t mode", "bool excl"]
args = ["dentry", "mode"]
[[kernel_functions]]
name = "vexfs_mkdir"
signature = ["struct user_namespace *userns", "struct inode *dir", "struct dentry *dentry", "umode_t mode"]
args = ["dentry", "mode"]
[[kernel_functions]]
name = "vexfs_unlink"
signature = ["struct inode *dir", "struct dentry *dentry"]
args = ["dentry"]
[[kernel_functions]]
name = "vexfs_rmdir"
signature = ["struct inode *dir", "struct dentry *dentry"]
args = ["dentry"]
[[kernel_functions]]
name = "vexfs_rename"
signature = ["struct user_namespace *userns", "struct inode *old_dir", "struct dentry *old_dentry", "struct inode *new_dir", "struct dentry *new_dentry", "unsigned int flags"]
args = ["old_dentry", "new_dentry", "flags"]
[[kernel_functions]]
name = "vexfs_file_write"
signature = ["struct file *file", "const char *buf", "size_t count", "loff_t *pos"]
args = ["file", "count"]
[[kernel_functions]]
name = "vexfs_vector_insert"
signature = ["struct file *file", "u32 dimensions"]
event_type = "VectorCreate"
[[kernel_functions]]
name = "vexfs_knn_search"
signature = ["struct file *file", "u32 dimensions"]
event_type = "VectorSearch"
TOML
vexevent functions --list 'vexfs_*' >/tmp/vexfs.list 2>&1 || fail "vexevent functions --list vexfs_* failed"
traced_start vexfs /tmp/vexfs
sh -c 'mkdir /tmp/vexfs/docs; echo hello >/tmp/vexfs/docs/a.txt; mv /tmp/vexfs/docs/a.txt /tmp/vexfs/docs/b.txt;
  echo 0.5,0.25,1 >/tmp/vexfs/docs/q.vec; echo 1,2,3 >/tmp/vexfs/docs/q.search; rm /tmp/vexfs/docs/b.txt;
  rmdir /tmp/vexfs/docs 2>/dev/null'
seen '"vexfs_rmdir"' /tmp/vexfs.jsonl || :
traced_stop vexfs "vexfs module"
report vexfs vexfs
# What the function probes cost, measured under emulation: one process (rm -r) unlinking 3000
# files, without vexevent, with vexevent (syscall probes), and with vfs_unlink attached as well,
# by fentry/fexit and by kprobe/kretprobe; the best of two runs each, in centiseconds
# (/proc/uptime).
now() { read up rest </proc/uptime; echo "${up%.*}${up#*.}"; }
cost() {
  best=
  for run in 1 2; do
    mkdir -p /tmp/cost && (cd /tmp/cost && seq 1 3000 | xargs touch)
    s=$(now); rm -r /tmp/cost; e=$(now)
    t=$((e - s)); { [ -z "$best" ] || [ $t -lt $best ]; } && best=$t
  done
  echo $best
}
# cost() under a vexevent run named $1 with the further arguments.
under() {
  name=$1
  shift
  vexevent run "$@" --watch /tmp --output /tmp/cost-$name.jsonl --stats-file /tmp/cost-$name.json \
    --stats-interval 0 </dev/null >/dev/null 2>/tmp/cost-$name.err &
  VX=$!
  ready /tmp/cost-$name.err $VX
  cost
  kill -INT $VX
  wait $VX
}
printf '[[kernel_functions]]\nname = "vfs_unlink"\n' >/tmp/cost-fentry.toml
printf '[[kernel_functions]]\nname = "vfs_unlink"\nhook = "kprobe"\n' >/tmp/cost-kprobe.toml
bare=$(cost)
syscalls=$(under syscalls)
fentry=$(under fentry --config /tmp/cost-fentry.toml)
kprobe=$(under kprobe --config /tmp/cost-kprobe.toml)
grep -q "attached.*fentry/vfs_unlink" /tmp/cost-fentry.err || { cat /tmp/cost-fentry.err; fail "vfs_unlink not by fentry"; }
grep -q "attached.*kprobe/vfs_unlink" /tmp/cost-kprobe.err || { cat /tmp/cost-kprobe.err; fail "vfs_unlink not by kprobe"; }
echo "vm: rm -r of 3000 files (cs): bare $bare, syscall probes $syscalls, plus vfs_unlink by fentry $fentry, by kprobe $kprobe"
out "@@cost $bare $syscalls $fentry $kprobe $(grep -c '"event_subtype":"vfs_unlink"' /tmp/cost-fentry.jsonl) $(grep -c '"event_subtype":"vfs_unlink"' /tmp/cost-kprobe.jsonl)"
echo "VEXEVENT-VM-TEST: PASS"
poweroff -f
"#;

/// Runs the VM test on the pinned 6.1 kernel, or on `kernel_package`.
pub fn vm_test(kernel_package: Option<&str>) -> anyhow::Result<()> {
    let root = workspace_root();
    let cache = root.join("target/vm-test");
    std::fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let qemu = which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is missing: run scripts/setup.sh (installs qemu-system-x86)")?;
    let (kernel_root, release) = fetch_kernel(&cache, kernel_package)?;
    let busybox_root = fetch_package(&cache, BUSYBOX_PACKAGE)?;
    let vmlinuz = kernel_root.join(format!("boot/vmlinuz-{release}"));
    let fuse_ko = kernel_root.join(format!("lib/modules/{release}/kernel/fs/fuse/fuse.ko"));
    ensure!(vmlinuz.is_file() && fuse_ko.is_file(), "the {release} kernel package lacks vmlinuz or fuse.ko");
    let vexfs_ko = build_vexfs_module(&root, &cache, &release)?;

    eprintln!("vm-test: building vexevent");
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--package",
        "vexevent",
        "--bin",
        "vexevent",
    ]))?;
    let vexevent = cache.join("vexevent");
    // Stripped: the debug binary's debug info would make the initramfs ten times larger.
    run(Command::new("objcopy").arg("--strip-debug").arg(root.join("target/debug/vexevent")).arg(&vexevent))?;

    let initramfs = cache.join("initramfs.cpio");
    let mut archive = Cpio::default();
    archive.file("init", INIT.as_bytes(), 0o755);
    archive.file("bin/busybox", &read(&busybox_root.join("bin/busybox"))?, 0o755);
    archive.file("lib/modules/fuse.ko", &read(&fuse_ko)?, 0o644);
    archive.file("lib/modules/vexfs.ko", &read(&vexfs_ko)?, 0o644);
    archive.symlink("etc/mtab", "/proc/mounts");
    for dir in ["proc", "sys", "dev", "tmp"] {
        archive.dir(dir);
    }
    let bindfs = which("bindfs").context("bindfs is missing: run scripts/setup.sh")?;
    let mut libraries = BTreeSet::new();
    for (binary, name) in [(&bindfs, "bin/bindfs"), (&vexevent, "bin/vexevent")] {
        archive.file(name, &read(binary)?, 0o755);
        libraries.extend(shared_libraries(binary)?);
    }
    for library in libraries {
        let inside = library.strip_prefix("/").unwrap_or(&library).to_string_lossy().into_owned();
        archive.file(&inside, &read(&library)?, 0o755);
    }
    std::fs::write(&initramfs, archive.finish()).context("cannot write the initramfs")?;

    let results = cache.join("results.txt");
    let _ = std::fs::remove_file(&results);
    eprintln!("vm-test: booting Linux {release} under QEMU (software emulation)");
    let started = Instant::now();
    let console = boot(&qemu, &vmlinuz, &initramfs, &results)?;
    eprintln!("vm-test: VM finished in {:.1} s", started.elapsed().as_secs_f64());
    let results = std::fs::read_to_string(&results).unwrap_or_default().replace('\r', "");
    if let Some(line) = console.lines().find(|l| l.contains(FAIL_LINE)) {
        bail!("the VM test failed: {line}");
    }
    ensure!(
        console.lines().any(|l| l.trim() == PASS_LINE),
        "the VM never printed {PASS_LINE} (see the console above)"
    );
    check_results(&results)?;
    println!(
        "vm-test: PASS (Linux {release}: FUSE requests through kprobes, VFS functions through fentry, vexfs module functions through kprobes)"
    );
    Ok(())
}

/// Boots the VM, echoing and returning its console; the results land in `results`.
fn boot(qemu: &Path, vmlinuz: &Path, initramfs: &Path, results: &Path) -> anyhow::Result<String> {
    let console_log = results.with_file_name("console.txt");
    let console_file = std::fs::File::create(&console_log)?;
    let mut child = Command::new(qemu)
        .args(["-cpu", "max", "-m", "1G", "-smp", "1", "-display", "none", "-no-reboot", "-monitor", "none"])
        // No network: the test needs none, and the VM must not reach anything.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(console_file)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let deadline = Instant::now() + VM_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            // Our own child, by pid.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = std::fs::read_to_string(&console_log).unwrap_or_default().replace('\r', "");
    eprintln!("----- VM console -----\n{}\n----- end of VM console -----", console.trim_end());
    match status {
        None => bail!("the VM did not finish within {} s", VM_DEADLINE.as_secs()),
        Some(status) if !status.success() => bail!("qemu failed ({status})"),
        Some(_) => Ok(console),
    }
}

/// The sections the VM wrote to its second serial port.
fn section<'a>(results: &'a str, name: &str) -> &'a str {
    let marker = format!("@@{name}\n");
    let Some(start) = results.find(&marker) else { return "" };
    let rest = &results[start + marker.len()..];
    rest.find("\n@@").map_or(rest, |end| &rest[..=end])
}

/// What the test requires of the captured events.
fn check_results(results: &str) -> anyhow::Result<()> {
    let daemon: u64 = results
        .lines()
        .find_map(|l| l.strip_prefix("@@daemon "))
        .and_then(|pid| pid.trim().parse().ok())
        .context("the VM did not report the bindfs pid")?;
    let before = section(results, "before");
    ensure!(
        before.contains("not attached: kprobe FUSE request pair")
            && before.contains("is the fuse module loaded?"),
        "without fuse.ko the start-up report does not say why no FUSE hook attached:\n{before}"
    );
    let stderr = section(results, "stderr");
    let attached = stderr.lines().find(|l| l.contains("vexevent: attached")).context("no start-up report")?;
    for hook in ["kprobe/queue_request_and_unlock", "kprobe/fuse_request_end", "tp_btf/sys_enter"] {
        ensure!(attached.contains(hook), "the start-up report does not name {hook} as attached: {attached}");
    }
    ensure!(
        stderr.contains("not attached: fuse/fuse_request_send"),
        "the start-up report does not say the FUSE tracepoints are missing:\n{stderr}"
    );
    let events: Vec<Value> = section(results, "events")
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("an event line is not JSON")?;
    eprintln!("vm-test: {} events from the VM", events.len());
    for (event_type, path, opcode) in [
        ("FilesystemCreate", "/tmp/mnt/file.txt", "CREATE"),
        ("FilesystemWrite", "/tmp/mnt/file.txt", "WRITE"),
        ("FilesystemMkdir", "/tmp/mnt/dir", "MKDIR"),
        ("FilesystemRename", "/tmp/mnt/file.txt", "RENAME"),
        ("FilesystemDelete", "/tmp/mnt/moved.txt", "UNLINK"),
        ("FilesystemRmdir", "/tmp/mnt/dir", "RMDIR"),
    ] {
        let event = events
            .iter()
            .find(|e| e["event_type"] == event_type && e["context"]["filesystem"]["path"] == path)
            .with_context(|| format!("no {event_type} event for {path}"))?;
        check_event(event, opcode, daemon).with_context(|| format!("{event_type} {path}: {event}"))?;
    }
    // The daemon's error reaches the caller's event: the reply's `out.h.error` offset is right.
    let refused = events
        .iter()
        .find(|e| {
            e["event_type"] == "FilesystemRmdir" && e["context"]["filesystem"]["path"] == "/tmp/mnt/nodir"
        })
        .context("no FilesystemRmdir event for /tmp/mnt/nodir")?;
    ensure!(
        refused["context"]["fuse"].as_array().is_some_and(|r| r.iter().any(|r| r["error"] == -2)),
        "the daemon's ENOENT is not in the event (wrong out.h.error offset?): {refused}"
    );
    // The daemon side joins the kernel's requests by `unique`: the `in.h.unique` offset is right.
    let joined = events
        .iter()
        .filter_map(|e| e["context"]["fuse"].as_array())
        .flatten()
        .filter(|r| r["daemon_received_ns"].is_u64())
        .count();
    ensure!(joined >= 5, "only {joined} requests joined to the daemon's reads (wrong in.h.unique offset?)");
    let stats: Value =
        serde_json::from_str(section(results, "stats").trim()).context("the stats are not JSON")?;
    eprintln!("vm-test: final stats: {stats}");
    let kernel =
        |name: &str| stats["kernel"][name].as_u64().with_context(|| format!("no kernel.{name} in the stats"));
    ensure!(kernel("fuse_read_faults")? == 0, "the kprobes failed to read struct fuse_req fields: {stats}");
    ensure!(kernel("fuse_requests")? >= 6, "fewer FUSE requests than operations: {stats}");
    ensure!(stats["loss"]["unaccounted"].as_u64() == Some(0), "events lost without account: {stats}");
    check_kernel_functions(results)
}

/// The kernel-function run: each VFS call's event names its function, its path (its dentry,
/// joined with the tmpfs mount), its inode where the dentry had one, its duration and return
/// value, and the syscall it ran in.
fn check_kernel_functions(results: &str) -> anyhow::Result<()> {
    let list = section(results, "kfunc-list");
    ensure!(
        list.lines().any(|l| l.starts_with("vfs_mkdir\t") && l.contains("attachable (fentry or kprobe)")),
        "vexevent functions --list does not say vfs_mkdir is attachable:\n{list}"
    );
    let expected = [
        Call::new("vfs_mkdir", "FilesystemMkdir", "/tmp/kf/d", 0, "mkdir").without_inode(),
        Call::new("vfs_rename", "FilesystemRename", "/tmp/kf/d/a", 0, "rename").target("/tmp/kf/d/b"),
        Call::new("vfs_rmdir", "FilesystemRmdir", "/tmp/kf/d", -39, "rmdir"),
        Call::new("vfs_unlink", "FilesystemDelete", "/tmp/kf/d/b", 0, "unlink"),
    ];
    check_function_run(results, "kfunc", "fentry", &expected)?;
    check_vexfs_module(results)?;
    report_cost(results);
    Ok(())
}

/// The vexfs module's run: its functions are listed as attachable without BTF, and each call's
/// event has the type it means (file operations by name, vector operations as configured), the
/// path within the vexfs mount, and the vector's dimensions.
fn check_vexfs_module(results: &str) -> anyhow::Result<()> {
    let list = section(results, "vexfs-list");
    for function in ["vexfs_create", "vexfs_knn_search"] {
        ensure!(
            list.lines().any(|l| l.starts_with(&format!("{function}\t"))
                && l.contains("vexfs")
                && l.contains("attachable (kprobe)")),
            "vexevent functions --list does not say the module's {function} is attachable:\n{list}"
        );
    }
    let expected = [
        Call::new("vexfs_mkdir", "FilesystemMkdir", "/tmp/vexfs/docs", 0, "mkdir").without_inode(),
        Call::new("vexfs_create", "FilesystemCreate", "/tmp/vexfs/docs/a.txt", 0, "open").without_inode(),
        Call::new("vexfs_file_write", "FilesystemWrite", "/tmp/vexfs/docs/a.txt", 6, "write"),
        Call::new("vexfs_rename", "FilesystemRename", "/tmp/vexfs/docs/a.txt", 0, "rename")
            .target("/tmp/vexfs/docs/b.txt"),
        Call::new("vexfs_vector_insert", "VectorCreate", "/tmp/vexfs/docs/q.vec", 0, "write").dimensions(3),
        // One vector stored: the search finds it.
        Call::new("vexfs_knn_search", "VectorSearch", "/tmp/vexfs/docs/q.search", 1, "write").dimensions(3),
        Call::new("vexfs_unlink", "FilesystemDelete", "/tmp/vexfs/docs/b.txt", 0, "unlink"),
        Call::new("vexfs_rmdir", "FilesystemRmdir", "/tmp/vexfs/docs", -39, "rmdir"),
    ];
    check_function_run(results, "vexfs", "kprobe", &expected)
}

/// One expected kernel-function call.
struct Call {
    function: &'static str,
    event_type: &'static str,
    path: &'static str,
    target: Option<&'static str>,
    ret: i64,
    /// What the enclosing syscall's name starts with.
    syscall: &'static str,
    /// Whether the dentry had its inode at the probe (a new one has none at entry).
    inode: bool,
    dimensions: Option<u64>,
}

impl Call {
    fn new(
        function: &'static str,
        event_type: &'static str,
        path: &'static str,
        ret: i64,
        syscall: &'static str,
    ) -> Self {
        Self { function, event_type, path, target: None, ret, syscall, inode: true, dimensions: None }
    }

    fn without_inode(self) -> Self {
        Self { inode: false, ..self }
    }

    fn target(self, target: &'static str) -> Self {
        Self { target: Some(target), ..self }
    }

    fn dimensions(self, dimensions: u64) -> Self {
        Self { dimensions: Some(dimensions), ..self }
    }

    /// Whether `event` is this call as expected, through `hook` (else what differs).
    fn check(&self, event: &Value, hook: &str) -> anyhow::Result<()> {
        ensure!(event["event_type"] == self.event_type, "not {}", self.event_type);
        ensure!(event["context"]["kernel"]["hook"] == hook, "not from a {hook}");
        let fs = &event["context"]["filesystem"];
        ensure!(fs["path"] == self.path, "path is not {}", self.path);
        if let Some(target) = self.target {
            ensure!(fs["target_path"] == target, "target is not {target}");
        }
        ensure!(!self.inode || fs["inode_number"].as_u64().is_some_and(|i| i > 0), "no inode number");
        if let Some(dimensions) = self.dimensions {
            ensure!(
                event["context"]["vector"]["dimensions"] == dimensions,
                "dimensions are not {dimensions}"
            );
        }
        ensure!(event["result"]["ret"] == self.ret, "return value is not {}", self.ret);
        ensure!(event["duration_ns"].as_u64().is_some_and(|d| d > 0), "no duration");
        let within = event["context"]["kernel"]["syscall"].as_str().unwrap_or_default();
        ensure!(within.starts_with(self.syscall), "not joined to its {} syscall", self.syscall);
        let enter =
            event["context"]["kernel"]["syscall_enter_ns"].as_u64().context("no syscall enter time")?;
        let exit = event["timestamp"]["monotonic_ns"].as_u64().context("no timestamp")?;
        let duration = event["duration_ns"].as_u64().unwrap_or_default();
        ensure!(enter <= exit - duration, "the call started before its syscall");
        Ok(())
    }
}

/// A kernel-function run of the VM (sections `NAME-stderr`, `NAME-events`, `NAME-stats`): every
/// function attached through `hook`, each call's event as expected and listed in its syscall's
/// event, no read fault, no unaccounted loss.
fn check_function_run(results: &str, name: &str, hook: &str, expected: &[Call]) -> anyhow::Result<()> {
    let stderr = section(results, &format!("{name}-stderr"));
    let attached = stderr.lines().find(|l| l.contains("vexevent: attached")).context("no start-up report")?;
    for call in expected {
        let hook = format!("{hook}/{}", call.function);
        ensure!(attached.contains(&hook), "the start-up report does not name {hook} as attached: {attached}");
    }
    let events: Vec<Value> = section(results, &format!("{name}-events"))
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("an event line is not JSON")?;
    eprintln!("vm-test: {} events from the {name} run", events.len());
    for call in expected {
        let event = events
            .iter()
            .find(|e| e["context"]["kernel"]["name"] == call.function)
            .with_context(|| format!("no {} event", call.function))?;
        call.check(event, hook).with_context(|| format!("{}: {event}", call.function))?;
        // The syscall's own event lists the call (the correlate stage's join).
        let listed = events.iter().any(|e| {
            e["process"]["tid"] == event["process"]["tid"]
                && e["context"]["kernel_calls"].as_array().is_some_and(|calls| {
                    calls.iter().any(|c| {
                        c["name"] == call.function
                            && c["hook"] == hook
                            && c["exit_ns"] == event["timestamp"]["monotonic_ns"]
                    })
                })
        });
        ensure!(listed, "no syscall event lists the {} call: {event}", call.function);
    }
    let stats: Value = serde_json::from_str(section(results, &format!("{name}-stats")).trim())
        .context("the stats are not JSON")?;
    eprintln!("vm-test: {name} run stats: {stats}");
    ensure!(stats["kernel"]["kernel_read_faults"] == 0, "the probes failed to read a struct field: {stats}");
    ensure!(stats["loss"]["unaccounted"].as_u64() == Some(0), "events lost without account: {stats}");
    Ok(())
}

/// Prints what the function probes cost (measured under emulation: a figure to compare runs
/// with, not a pass/fail check).
fn report_cost(results: &str) {
    let Some(line) = results.lines().find_map(|l| l.strip_prefix("@@cost ")) else {
        eprintln!("vm-test: no cost measurement");
        return;
    };
    let figures: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    if let [bare, syscalls, fentry, kprobe, fentry_events, kprobe_events] = figures[..] {
        eprintln!(
            "vm-test: rm -r of 3000 files under emulation: bare {bare} cs, syscall probes {syscalls} cs ({:.2}x); \
             plus vfs_unlink by fentry/fexit {fentry} cs ({:.2}x syscall probes, {fentry_events} events), \
             by kprobe/kretprobe {kprobe} cs ({:.2}x syscall probes, {kprobe_events} events)",
            syscalls / bare.max(1.0),
            fentry / syscalls.max(1.0),
            kprobe / syscalls.max(1.0)
        );
    }
}

/// One operation's event carries its FUSE request, made by the operation's process and served by
/// the daemon, inside the syscall's time.
fn check_event(event: &Value, opcode: &str, daemon: u64) -> anyhow::Result<()> {
    let requests = event["context"]["fuse"].as_array().context("no FUSE requests")?;
    ensure!(requests.iter().any(|r| r["opcode_name"] == opcode), "no {opcode} request");
    let pid = event["process"]["pid"].as_u64().context("no pid")?;
    for request in requests {
        ensure!(request["requester_pid"].as_u64() == Some(pid), "requester is not the caller: {request}");
        ensure!(request["daemon_pid"].as_u64() == Some(daemon), "daemon is not bindfs: {request}");
        ensure!(request["connection"].as_u64().is_some_and(|c| c > 0), "no connection: {request}");
    }
    let at = |key: &str| event["timeline"][key].as_u64().with_context(|| format!("no timeline {key}"));
    ensure!(at("syscall_enter_ns")? <= at("request_queued_ns")?, "request queued before the syscall");
    ensure!(at("request_queued_ns")? <= at("request_ended_ns")?, "request ended before it was queued");
    ensure!(at("request_ended_ns")? <= at("syscall_exit_ns")?, "request ended after the syscall");
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} not found in PATH"))
}

/// The 6.1 kernel package, unpacked, and its release (`6.1.0-47-cloud-amd64`).
fn fetch_kernel(cache: &Path, package: Option<&str>) -> anyhow::Result<(PathBuf, String)> {
    let fetched = match package {
        Some(package) => return fetch_package(cache, package).and_then(with_release),
        None => fetch_package(cache, KERNEL_PACKAGE),
    };
    let unpacked = match fetched {
        Ok(unpacked) => unpacked,
        Err(error) => {
            eprintln!("vm-test: {error:#}; looking for another 6.1 cloud kernel package");
            let output = Command::new("apt-cache")
                .args(["search", "--names-only", KERNEL_PACKAGE_PATTERN])
                .output()
                .context("cannot run apt-cache")?;
            let newest = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.split_whitespace().next())
                .filter_map(|name| {
                    let abi =
                        name.strip_prefix("linux-image-6.1.0-")?.split('-').next()?.parse::<u32>().ok()?;
                    Some((abi, name.to_owned()))
                })
                .max()
                .with_context(|| {
                    format!("apt knows no package matching {KERNEL_PACKAGE_PATTERN}: {error:#}")
                })?;
            fetch_package(cache, &newest.1)?
        }
    };
    with_release(unpacked)
}

/// An unpacked kernel package and the release of its kernel.
fn with_release(unpacked: PathBuf) -> anyhow::Result<(PathBuf, String)> {
    let release = std::fs::read_dir(unpacked.join("boot"))?
        .filter_map(Result::ok)
        .find_map(|entry| entry.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_owned))
        .context("the kernel package has no boot/vmlinuz-*")?;
    Ok((unpacked, release))
}

/// Builds the small `vexfs` module (`xtask/vexfs-module`) against the headers of the kernel the
/// VM boots: Debian's `linux-headers-RELEASE`, its `-common` part and `linux-kbuild-6.1`, fetched
/// with apt and unpacked together (the headers reach the build scripts by relative links). The
/// sources are copied into the cache, where kbuild writes its outputs; returns the `.ko`.
fn build_vexfs_module(root: &Path, cache: &Path, release: &str) -> anyhow::Result<PathBuf> {
    let abi = release.strip_suffix("-cloud-amd64").context("not a cloud-amd64 kernel release")?;
    let common = format!("linux-headers-{abi}-common");
    let headers = fetch_packages(
        cache,
        &format!("linux-headers-{release}"),
        &[&format!("linux-headers-{release}"), &common, "linux-kbuild-6.1"],
    )?;
    let build = cache.join("vexfs-module");
    std::fs::create_dir_all(&build)?;
    for file in ["Kbuild", "vexfs.c"] {
        std::fs::copy(root.join("xtask/vexfs-module").join(file), build.join(file))
            .with_context(|| format!("cannot copy xtask/vexfs-module/{file}"))?;
    }
    eprintln!("vm-test: building the vexfs module against the {release} headers");
    // The release's Makefile includes the common one by its installed path (/usr/src/...): call
    // the common Makefile directly, from the release's directory (its .config and variables).
    run(Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(headers.join(format!("usr/src/linux-headers-{release}")))
        .arg("-f")
        .arg(headers.join(format!("usr/src/{common}/Makefile")))
        .arg(format!("M={}", build.display()))
        .arg("modules"))
    .context("cannot build the vexfs module (needs make and gcc-12: run scripts/setup.sh)")?;
    let module = build.join("vexfs.ko");
    ensure!(module.is_file(), "the module build left no {}", module.display());
    Ok(module)
}

/// Downloads (once) and unpacks (once) a Debian package into the cache; returns where.
fn fetch_package(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    fetch_packages(cache, package, &[package])
}

/// Downloads (once) Debian packages and unpacks them (once) together into `cache/name`; returns
/// where.
fn fetch_packages(cache: &Path, name: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let unpacked = cache.join(name);
    let done = unpacked.join(".unpacked");
    if done.exists() {
        return Ok(unpacked);
    }
    let debs = packages.iter().map(|package| download(cache, package)).collect::<anyhow::Result<Vec<_>>>()?;
    let _ = std::fs::remove_dir_all(&unpacked);
    for deb in debs {
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    std::fs::write(&done, b"")?;
    Ok(unpacked)
}

/// Downloads (once) a Debian package into `cache/debs`; returns the `.deb`.
fn download(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(&debs).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")))
        })
    };
    if find_deb().is_none() {
        eprintln!("vm-test: downloading {package} with apt");
        let download =
            || Command::new("apt-get").current_dir(&debs).args(["download", "-q", package]).status();
        if !download().is_ok_and(|s| s.success()) {
            // A clean machine may not have package lists yet.
            run(Command::new("apt-get").args(["update", "-q"]))?;
            ensure!(
                download().is_ok_and(|s| s.success()),
                "cannot download {package} with apt-get: the VM test needs it (is the Debian mirror reachable?)"
            );
        }
    }
    find_deb().with_context(|| format!("apt-get download {package} left no .deb in {}", debs.display()))
}

/// The shared libraries a binary loads (and the dynamic loader), from `ldd`.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("cannot run ldd")?;
    ensure!(output.status.success(), "ldd {} failed", binary.display());
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A `newc` cpio archive (what the kernel unpacks as an initramfs), built in memory.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.inode += 1;
        let size = u32::try_from(body.len()).expect("initramfs files are under 4 GiB");
        let name_size = u32::try_from(name.len() + 1).expect("short names");
        let fields = [self.inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, name_size, 0];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// A directory and its parents (each once).
    fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                self.entry(&prefix.clone(), 0o040_755, &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn file(&mut self, path: &str, body: &[u8], permissions: u32) {
        self.parent(path);
        self.entry(path, 0o100_000 | permissions, body);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120_777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut archive = Cpio::default();
        archive.file("a/b/init", b"hello", 0o755);
        archive.symlink("etc/mtab", "/proc/mounts");
        let data = archive.finish();
        // Directories a, a/b, then the file, then etc and the symlink, then the trailer.
        let names: Vec<&str> = data
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == b"070701")
            .map(|(at, _)| {
                let header = &data[at..at + 110];
                let name_size =
                    usize::from_str_radix(std::str::from_utf8(&header[94..102]).unwrap(), 16).unwrap();
                std::str::from_utf8(&data[at + 110..at + 110 + name_size - 1]).unwrap()
            })
            .collect();
        assert_eq!(names, ["a", "a/b", "a/b/init", "etc", "etc/mtab", "TRAILER!!!"]);
        assert_eq!(data.len() % 4, 0);
        let file = data.windows(8).position(|w| w == b"a/b/init").unwrap();
        let mode =
            u32::from_str_radix(std::str::from_utf8(&data[file - 110 + 14..file - 110 + 22]).unwrap(), 16);
        assert_eq!(mode.unwrap(), 0o100_755);
    }

    #[test]
    fn finds_the_sections_the_vm_wrote() {
        let results = "@@daemon 88\n@@stderr\nline 1\nline 2\n@@stats\n{}\n@@events\n{\"a\":1}\n@@end\n";
        assert_eq!(section(results, "stderr"), "line 1\nline 2\n");
        assert_eq!(section(results, "events"), "{\"a\":1}\n");
        assert_eq!(section(results, "missing"), "");
    }
}
