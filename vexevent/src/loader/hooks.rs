//! Attaching the probes, with fallbacks: the syscall pair as BTF raw tracepoints (`tp_btf`, the
//! cheapest hook: no perf buffer per event) where the kernel has BTF, else as classic
//! `raw_syscalls` tracepoints; plus `sched_process_fork`; the FUSE request pair as tracepoints
//! (Linux 6.12+), else as kprobes on the kernel's FUSE request functions. Records what attached,
//! and why something did not, for the start-up report.

use std::path::Path;

use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint, UProbe,
        fentry::FEntryLinkId,
        fexit::FExitLinkId,
        kprobe::KProbeLinkId,
        tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use vexevent_common::{FuseKprobeLayout, map_names, program_names};

use super::{LoaderError, fuse_kprobes, program_error};

/// Which hook type carries the syscall enter/exit pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyscallHooks {
    /// BTF raw tracepoints where the kernel has BTF, else classic tracepoints.
    #[default]
    Auto,
    /// BTF raw tracepoints only (fail when unavailable).
    Btf,
    /// Classic `raw_syscalls` tracepoints only.
    Tracepoint,
}

/// A program of the object, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(load_error(name))
}

/// Programs that load without arguments: loaded when first attached.
trait LoadOnce {
    fn load_once(&mut self) -> Result<(), ProgramError>;
}

macro_rules! load_once {
    ($($program:ty),*) => {$(
        impl LoadOnce for $program {
            fn load_once(&mut self) -> Result<(), ProgramError> {
                if self.fd().is_err() {
                    self.load()?;
                }
                Ok(())
            }
        }
    )*};
}

load_once!(KProbe, UProbe, TracePoint);

/// A program of the object, as its type, loaded.
fn loaded<'a, P: LoadOnce>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog: &mut P = program(ebpf, name)?;
    prog.load_once().map_err(load_error(name))?;
    Ok(prog)
}

/// A program error, as the start-up report says it.
fn load_error(name: &'static str) -> impl FnOnce(ProgramError) -> String {
    move |error| program_error(name)(error).to_string()
}

/// A program error in one line, as the start-up report says it: a refused load as the
/// syscall's error and the verifier's last line (its whole log can run to many lines).
fn one_line_error(name: &'static str) -> impl FnOnce(ProgramError) -> String {
    move |error| match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            match log.lines().rev().map(str::trim).find(|line| !line.is_empty()) {
                Some(last) => format!("program {name} failed to load: {io_error} (verifier: {last})"),
                None => format!("program {name} failed to load: {io_error}"),
            }
        }
        other => load_error(name)(other),
    }
}

/// A hook and whether it attached.
#[derive(Clone, Debug)]
pub struct HookReport {
    /// The hook (`tp_btf/sys_enter`, `raw_syscalls/sys_enter`, `syscall umount`, ...).
    pub hook: String,
    /// `None` when attached, else why not.
    pub missing: Option<String>,
}

enum Link {
    TracePoint(&'static str, TracePointLinkId),
    Btf(&'static str, BtfTracePointLinkId),
    UProbe(&'static str, UProbeLinkId),
    KProbe(&'static str, KProbeLinkId),
    FEntry(&'static str, FEntryLinkId),
    FExit(&'static str, FExitLinkId),
}

/// The attached hooks.
#[derive(Default)]
pub struct Hooks {
    links: Vec<Link>,
    reports: Vec<HookReport>,
}

impl Hooks {
    pub fn reports(&self) -> &[HookReport] {
        &self.reports
    }

    pub fn report(&mut self, hook: String, missing: Option<String>) {
        self.reports.push(HookReport { hook, missing });
    }

    /// Attaches the syscall enter/exit pair: BTF raw tracepoints, else classic tracepoints.
    pub fn attach_syscalls(&mut self, ebpf: &mut Ebpf, mode: SyscallHooks) -> Result<(), LoaderError> {
        let btf_error = match Btf::from_sys_fs() {
            _ if mode == SyscallHooks::Tracepoint => "not selected".to_owned(),
            Ok(btf) => {
                let enter = self.attach_btf(ebpf, program_names::BTF_SYS_ENTER, "sys_enter", &btf);
                let exit =
                    enter.and_then(|()| self.attach_btf(ebpf, program_names::BTF_SYS_EXIT, "sys_exit", &btf));
                match exit {
                    Ok(()) => return Ok(()),
                    Err(error) => error,
                }
            }
            Err(error) => format!("no kernel BTF: {error}"),
        };
        if mode == SyscallHooks::Btf {
            return Err(LoaderError::NoHooks { detail: btf_error });
        }
        // Undo a half attach before falling back, so no syscall is seen twice.
        self.detach(ebpf);
        self.report(
            "tp_btf/sys_enter, tp_btf/sys_exit".to_owned(),
            Some(format!("{btf_error}; using raw_syscalls tracepoints")),
        );
        for (program, name) in
            [(program_names::SYS_ENTER, "sys_enter"), (program_names::SYS_EXIT, "sys_exit")]
        {
            self.attach_tracepoint(ebpf, program, "raw_syscalls", name)
                .map_err(|detail| LoaderError::NoHooks { detail })?;
        }
        Ok(())
    }

    /// Attaches the fork tracepoint (cwd scope inheritance), unless its format lacks the field
    /// the probe reads; its absence is reported, not fatal.
    pub fn attach_fork(&mut self, ebpf: &mut Ebpf, format_error: Option<&super::tracefs::MissingField>) {
        if let Some(error) = format_error {
            self.report(
                "sched/sched_process_fork".to_owned(),
                Some(format!("{error}: not attached, children do not inherit a watched cwd")),
            );
            return;
        }
        let _ = self.attach_tracepoint(ebpf, program_names::PROCESS_FORK, "sched", "sched_process_fork");
    }

    /// Attaches the exit tracepoint that frees exiting threads' and processes' table slots
    /// (without it the tables fill up, and full tables refuse inserts, counted).
    pub fn attach_exit(&mut self, ebpf: &mut Ebpf) {
        let _ = self.attach_tracepoint(ebpf, program_names::PROCESS_EXIT, "sched", "sched_process_exit");
    }

    /// Attaches the FUSE request pair: the tracepoints where the kernel has them (Linux 6.12+),
    /// else kprobes on the functions that queue and end a request; reports what attached, or why
    /// nothing did.
    pub fn attach_fuse(&mut self, ebpf: &mut Ebpf, format_error: Option<&super::tracefs::MissingField>) {
        if let Some(error) = format_error {
            self.report(
                "fuse/fuse_request_send, fuse/fuse_request_end".to_owned(),
                Some(format!("{error}: not attached, FUSE requests are not seen")),
            );
            return;
        }
        if super::tracefs::event_exists("fuse", "fuse_request_send") {
            for (program, name) in [
                (program_names::FUSE_SEND, "fuse_request_send"),
                (program_names::FUSE_END, "fuse_request_end"),
            ] {
                let _ = self.attach_tracepoint(ebpf, program, "fuse", name);
            }
            return;
        }
        self.report(
            "fuse/fuse_request_send, fuse/fuse_request_end".to_owned(),
            Some("no FUSE tracepoints in this kernel (Linux < 6.12); trying kprobes".to_owned()),
        );
        let plan = match fuse_kprobes::plan() {
            Ok(plan) => plan,
            Err(error) => {
                self.report(
                    "kprobe FUSE request pair".to_owned(),
                    Some(format!("{error}: FUSE requests are not seen")),
                );
                return;
            }
        };
        if let Err(error) = write_kprobe_layout(ebpf, plan.layout) {
            self.report(
                "kprobe FUSE request pair".to_owned(),
                Some(format!("{error}: FUSE requests are not seen")),
            );
            return;
        }
        // Both or neither: a send without its end fills the in-flight table, an end without its
        // send counts every request as unmatched.
        let before = self.links.len();
        let attached =
            self.attach_kprobe(ebpf, program_names::FUSE_KPROBE_SEND, plan.send_function).and_then(|()| {
                self.attach_kprobe(ebpf, program_names::FUSE_KPROBE_END, fuse_kprobes::END_FUNCTION)
            });
        if attached.is_err() {
            let partial: Vec<Link> = self.links.drain(before..).collect();
            Self::detach_links(ebpf, partial);
            self.reports.retain(|r| !(r.hook.starts_with("kprobe/") && r.missing.is_none()));
            self.report(
                format!("kprobe/{}, kprobe/{}", plan.send_function, fuse_kprobes::END_FUNCTION),
                Some("not both attached: FUSE requests are not seen".to_owned()),
            );
        }
    }

    fn attach_kprobe(
        &mut self,
        ebpf: &mut Ebpf,
        program_name: &'static str,
        function: &str,
    ) -> Result<(), String> {
        let hook = format!("kprobe/{function}");
        let result = (|| {
            let prog: &mut KProbe = loaded(ebpf, program_name)?;
            prog.attach(function, 0)
                .map_err(|e| format!("{hook}: {e} (does this kernel have CONFIG_KPROBES?)"))
        })();
        self.keep(hook, result.map(|link| Link::KProbe(program_name, link)))
    }

    /// Attaches the generic function probes to `function`: the kprobe, and the kretprobe when
    /// it is timed; both or neither. Reported under the function's name when it fails.
    pub(super) fn attach_function(
        &mut self,
        ebpf: &mut Ebpf,
        function: &str,
        timed: bool,
    ) -> Result<(), String> {
        let before = self.links.len();
        let mut programs = vec![(program_names::FUNCTION_ENTRY, "kprobe")];
        if timed {
            programs.push((program_names::FUNCTION_RETURN, "kretprobe"));
        }
        for (program_name, kind) in programs {
            let attached = (|| {
                let prog: &mut KProbe = loaded(ebpf, program_name)?;
                prog.attach(function, 0).map_err(|e| format!("{kind}: {e}"))
            })();
            match attached {
                Ok(link) => self.links.push(Link::KProbe(program_name, link)),
                Err(error) => {
                    let partial: Vec<Link> = self.links.drain(before..).collect();
                    Self::detach_links(ebpf, partial);
                    self.report(function.to_owned(), Some(error.clone()));
                    return Err(error);
                }
            }
        }
        self.report(format!("kprobe/{function}"), None);
        Ok(())
    }

    /// Attaches fentry slot `slot`'s programs to the vmlinux function `function`: the fentry, and
    /// the fexit when it is timed; both or neither (a program that loaded is unloaded again, so
    /// the slot can serve another function). Reported only when attached: the caller falls back
    /// to the kprobe pair and reports why.
    pub(super) fn attach_fentry(
        &mut self,
        ebpf: &mut Ebpf,
        slot: usize,
        function: &str,
        timed: bool,
        btf: &Btf,
    ) -> Result<(), String> {
        let (entry, exit) = (program_names::FENTRY[slot], program_names::FEXIT[slot]);
        let before = self.links.len();
        let attached = (|| {
            let prog: &mut FEntry = program(ebpf, entry)?;
            prog.load(function, btf).map_err(one_line_error(entry))?;
            let link = prog.attach().map_err(|e| format!("fentry: {e}"))?;
            self.links.push(Link::FEntry(entry, link));
            if timed {
                let prog: &mut FExit = program(ebpf, exit)?;
                prog.load(function, btf).map_err(one_line_error(exit))?;
                let link = prog.attach().map_err(|e| format!("fexit: {e}"))?;
                self.links.push(Link::FExit(exit, link));
            }
            Ok(())
        })();
        if let Err(error) = attached {
            let partial: Vec<Link> = self.links.drain(before..).collect();
            Self::detach_links(ebpf, partial);
            for name in [entry, exit] {
                let unloaded = match ebpf.program_mut(name) {
                    Some(Program::FEntry(prog)) if prog.fd().is_ok() => prog.unload(),
                    Some(Program::FExit(prog)) if prog.fd().is_ok() => prog.unload(),
                    _ => Ok(()),
                };
                if let Err(error) = unloaded {
                    tracing::warn!(%error, program = name, "failed to unload a program");
                }
            }
            return Err(error);
        }
        self.report(format!("fentry/{function}"), None);
        Ok(())
    }

    /// Attaches the entry and return uprobes to each configured daemon function; a function that
    /// cannot be found or attached is reported, not fatal.
    pub fn attach_daemon_functions(&mut self, ebpf: &mut Ebpf, binary: &Path, functions: &[String]) {
        if functions.is_empty() {
            return;
        }
        let resolved = match super::symbols::resolve(binary, functions) {
            Ok(resolved) => resolved,
            Err(error) => {
                self.report(format!("uprobes on {}", binary.display()), Some(error));
                return;
            }
        };
        for (wanted, symbol) in resolved {
            let hook = format!("uprobe {wanted}");
            let attached = symbol.and_then(|symbol| {
                for program_name in [program_names::DAEMON_FN_ENTRY, program_names::DAEMON_FN_RETURN] {
                    let prog: &mut UProbe = loaded(ebpf, program_name)?;
                    let link = prog
                        .attach(symbol.as_str(), binary, UProbeScope::AllProcesses)
                        .map_err(|e| format!("{symbol} in {}: {e}", binary.display()))?;
                    self.links.push(Link::UProbe(program_name, link));
                }
                Ok(())
            });
            self.report(hook, attached.err());
        }
    }

    fn attach_btf(
        &mut self,
        ebpf: &mut Ebpf,
        program_name: &'static str,
        tracepoint: &str,
        btf: &Btf,
    ) -> Result<(), String> {
        let hook = format!("tp_btf/{tracepoint}");
        let prog: &mut BtfTracePoint = program(ebpf, program_name)?;
        prog.load(tracepoint, btf).map_err(load_error(program_name))?;
        let link = prog.attach().map_err(|e| format!("{hook}: {e}"))?;
        self.links.push(Link::Btf(program_name, link));
        self.report(hook, None);
        Ok(())
    }

    pub(super) fn attach_tracepoint(
        &mut self,
        ebpf: &mut Ebpf,
        program_name: &'static str,
        category: &str,
        name: &str,
    ) -> Result<(), String> {
        let hook = format!("{category}/{name}");
        let result = (|| {
            let prog: &mut TracePoint = loaded(ebpf, program_name)?;
            prog.attach(category, name).map_err(|e| format!("{hook}: {e}"))
        })();
        self.keep(hook, result.map(|link| Link::TracePoint(program_name, link)))
    }

    /// Keeps an attached hook's link, and reports the hook either way.
    fn keep(&mut self, hook: String, attached: Result<Link, String>) -> Result<(), String> {
        match attached {
            Ok(link) => {
                self.links.push(link);
                self.report(hook, None);
                Ok(())
            }
            Err(error) => {
                self.report(hook, Some(error.clone()));
                Err(error)
            }
        }
    }

    /// Detaches every hook.
    pub fn detach(&mut self, ebpf: &mut Ebpf) {
        let links: Vec<Link> = self.links.drain(..).collect();
        Self::detach_links(ebpf, links);
        self.reports.retain(|r| r.missing.is_some());
    }

    fn detach_links(ebpf: &mut Ebpf, links: Vec<Link>) {
        for link in links {
            let result = match link {
                Link::TracePoint(program, link) => ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut TracePoint>::try_from(p).ok())
                    .map(|p| p.detach(link)),
                Link::Btf(program, link) => ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
                    .map(|p| p.detach(link)),
                Link::UProbe(program, link) => ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut UProbe>::try_from(p).ok())
                    .map(|p| p.detach(link)),
                Link::KProbe(program, link) => ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut KProbe>::try_from(p).ok())
                    .map(|p| p.detach(link)),
                Link::FEntry(program, link) => ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut FEntry>::try_from(p).ok())
                    .map(|p| p.detach(link)),
                Link::FExit(program, link) => ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut FExit>::try_from(p).ok())
                    .map(|p| p.detach(link)),
            };
            if let Some(Err(error)) = result {
                tracing::warn!(%error, "failed to detach a hook");
            }
        }
    }
}

/// Hands the FUSE kprobes the `struct fuse_req` layout of this kernel.
fn write_kprobe_layout(ebpf: &mut Ebpf, layout: FuseKprobeLayout) -> Result<(), String> {
    let name = map_names::FUSE_KPROBE_LAYOUT;
    let map = ebpf.map_mut(name).ok_or_else(|| format!("map {name} missing from the object"))?;
    let mut array: Array<_, FuseKprobeLayout> =
        Array::try_from(map).map_err(|e| format!("map {name}: {e}"))?;
    array.set(0, layout, 0).map_err(|e| format!("map {name}: {e}"))
}
