//! Loads the embedded eBPF object, configures its maps (syscall table, filters, watch prefixes),
//! seeds the scope maps with what processes already have open, attaches every hook this kernel
//! offers (with fallbacks: BTF or classic syscall tracepoints, FUSE tracepoints or kprobes) and
//! reports which attached. Reads the kernel counters back. Forwards the probes' diagnostics when
//! asked (`probe_log`).

mod config;
mod fuse_kprobes;
mod fuse_mounts;
mod hooks;
mod kernel_btf;
mod named;
mod open_files;
mod probe_log;
mod seed;
mod symbols;
mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
};
use vexevent_common::{
    COMM_LEN, FileLayout, FuseConfig, KernelStat, MAX_SHARDS, OpKind, PREFIX_KEY_BYTES, PendingLoss,
    PrefixKey, ProbeConfig, SYSCALLS, map_names,
};

pub use config::{CaptureConfig, CaptureConfigError, CaptureSettings};
pub use fuse_mounts::{DeviceMount, FuseMount, cgroup2_mount_point, parse_device_mounts, vexfs_mount_points};
pub use hooks::{HookReport, SyscallHooks};
pub use named::{
    FunctionConfig, FunctionStatus, NamedKind, NamedSource, NamedText, NamedValue, Symbol, TracepointConfig,
    list_functions,
};
pub use seed::Seeded;
pub use tracefs::TRACEFS;

use hooks::Hooks;

use crate::{event::WatchScope, telemetry::KernelCounters};

/// The eBPF object built by build.rs.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vexevent-probes"));

/// What the probes should capture.
#[derive(Clone, Debug, Default)]
pub struct ProbeSettings {
    pub scope: WatchScope,
    pub ops: Vec<OpKind>,
    pub pids: Vec<u32>,
    pub uid: Option<u32>,
    pub comm: Option<[u8; COMM_LEN]>,
    /// Bytes of each shard's ring.
    pub ring_bytes: u32,
    /// Ring buffers (0: one per CPU, at most `MAX_SHARDS`).
    pub shards: usize,
    /// A FUSE daemon binary and functions in it to time (uprobes).
    pub daemon_binary: Option<std::path::PathBuf>,
    pub daemon_functions: Vec<String>,
    pub syscall_hooks: SyscallHooks,
    /// Turn the probes' diagnostics on and forward them to the log (`--debug-probes`).
    pub debug_probes: bool,
    /// Tracepoints attached by name (`[[tracepoints]]`).
    pub tracepoints: Vec<TracepointConfig>,
    /// Kernel functions attached by name (`[[kernel_functions]]`).
    pub kernel_functions: Vec<FunctionConfig>,
}

/// Why the probes could not be set up. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); run vexevent as root")]
    NotRoot,
    #[error("tracefs is not mounted at {TRACEFS}; run: mount -t tracefs tracefs {TRACEFS}")]
    NoTracefs,
    #[error(
        "the kernel rejected the eBPF object: {0}; vexevent needs BPF ring buffers (Linux 5.8+) and syscall tracepoints"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name} failed to load: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot read the probes' diagnostics (--debug-probes): {0}")]
    ProbeLog(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("map {name} is missing or has the wrong type: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "the syscall tracepoints could not be attached ({detail}); vexevent needs a kernel with CONFIG_FTRACE_SYSCALLS"
    )]
    NoHooks { detail: String },
    #[error("the object lacks what named tracepoints and functions need ({detail}); rebuild vexevent")]
    Named { detail: String },
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoaderError {
    move |source| LoaderError::Map { name, source: Box::new(source) }
}

fn program_error(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> LoaderError {
    move |source| LoaderError::Program { name, source: Box::new(source) }
}

/// The loaded, attached probes.
pub struct Probes {
    ebpf: Ebpf,
    hooks: Hooks,
    traced_syscalls: usize,
    layout: ShardLayout,
    fuse_mounts: Vec<FuseMount>,
    /// Watched cwds and fds found in /proc at start.
    seeded: Seeded,
    /// Where `sched_process_fork` keeps the child's pid (read from tracefs once).
    fork_child_pid_offset: Result<u32, tracefs::MissingField>,
    /// A field the FUSE tracepoint probes read that this kernel's format lacks.
    fuse_format_error: Option<tracefs::MissingField>,
    /// Tracepoints and functions attached by name, by their records' source number (`None`:
    /// planned but not attached).
    named: Vec<Option<NamedSource>>,
    /// Forwards the probes' diagnostics (with `debug_probes`).
    _probe_log: Option<probe_log::ProbeLogReader>,
}

/// Size of a ring that is not in use (the kernel's minimum: one page).
const UNUSED_RING_BYTES: u32 = 4096;

/// How CPUs map to ring buffers: CPU `c` writes to ring `(c / cpus_per_shard) % shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub shard_count: usize,
    pub cpus_per_shard: usize,
}

impl ShardLayout {
    /// `requested` shards (0: one per CPU), at most `MAX_SHARDS`, CPUs spread evenly.
    #[must_use]
    pub fn new(requested: usize) -> Self {
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
        let wanted = if requested == 0 { cpus } else { requested };
        let shard_count = wanted.clamp(1, MAX_SHARDS).min(cpus);
        Self { shard_count, cpus_per_shard: cpus.div_ceil(shard_count) }
    }
}

impl Probes {
    /// Loads, configures and attaches the probes.
    ///
    /// # Errors
    /// When the process lacks privileges, tracefs is missing, or the kernel refuses the object.
    pub fn load(settings: &ProbeSettings) -> Result<Self, LoaderError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LoaderError::NotRoot);
        }
        if !tracefs::mounted() {
            return Err(LoaderError::NoTracefs);
        }
        let layout = ShardLayout::new(settings.shards);
        let mut loader = EbpfLoader::new();
        for (shard, name) in map_names::EVENTS.into_iter().enumerate() {
            // Rings beyond the shards in use shrink to the minimum (one page).
            let size = if shard < layout.shard_count { settings.ring_bytes } else { UNUSED_RING_BYTES };
            loader.map_max_entries(name, size);
        }
        let log_level = probe_log::level(settings.debug_probes);
        loader.override_global(aya_log::LEVEL, &log_level, true);
        let mut ebpf = loader.load(PROBES_OBJECT).map_err(|error| match &error {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                LoaderError::NotRoot
            }
            _ => LoaderError::Load(Box::new(error)),
        })?;
        let probe_log = if settings.debug_probes {
            Some(probe_log::ProbeLogReader::start(&mut ebpf).map_err(LoaderError::ProbeLog)?)
        } else {
            None
        };
        let mut probes = Self {
            ebpf,
            hooks: Hooks::default(),
            traced_syscalls: 0,
            layout,
            fuse_mounts: Vec::new(),
            seeded: Seeded::default(),
            fork_child_pid_offset: tracefs::field_offsets(
                "sched/sched_process_fork",
                &tracefs::format("sched", "sched_process_fork"),
                ["child_pid"],
            )
            .map(|[offset]| offset),
            fuse_format_error: None,
            named: Vec::new(),
            _probe_log: probe_log,
        };
        probes.configure(settings)?;
        let (file_layout, open_files_missing) = probes.configure_open_files()?;
        probes.configure_fuse(settings)?;
        probes.attach(settings.syscall_hooks)?;
        // Reported once the syscall hooks are attached (a fallback there starts the report over).
        probes
            .hooks
            .report("fd scope by open file (follows dup, F_DUPFD, fork)".to_owned(), open_files_missing);
        probes.attach_daemon_functions(settings);
        probes.named = named::attach(
            &mut probes.ebpf,
            &mut probes.hooks,
            &settings.tracepoints,
            &settings.kernel_functions,
        )
        .map_err(|detail| LoaderError::Named { detail })?;
        probes.seeded = seed::seed_scope(&mut probes.ebpf, settings)?;
        if !probes.seeded.fds.is_empty() {
            probes.set_file_layout(FileLayout { seeded_fds: 1, ..file_layout })?;
        }
        Ok(probes)
    }

    /// Sets the kernel's filters: operation types, pids, uid and comm (at start, and again when
    /// a reload changes what the filter pushes down). New pids are added before the switch and
    /// stale ones removed after it, so no process in both sets is filtered in between.
    ///
    /// # Errors
    /// When a map cannot be written.
    pub fn set_filters(&mut self, settings: &ProbeSettings) -> Result<(), LoaderError> {
        let mut op_mask = settings.ops.iter().fold(0u64, |mask, op| mask | op.mask_bit());
        // Opens, closes, chdir and dup keep the scope maps right: always captured.
        for op in OpKind::ALL.into_iter().filter(|op| op.is_bookkeeping()) {
            op_mask |= op.mask_bit();
        }
        let mut comm_filter = [0u8; COMM_LEN];
        if let Some(comm) = settings.comm {
            comm_filter = comm;
        }
        let config = ProbeConfig {
            op_mask,
            self_pid: std::process::id(),
            watch_all: u32::from(settings.scope.watches_all()),
            pid_filter_enabled: u32::from(!settings.pids.is_empty()),
            uid_filter_enabled: u32::from(settings.uid.is_some()),
            uid_filter: settings.uid.unwrap_or(0),
            comm_filter_enabled: u32::from(settings.comm.is_some()),
            comm_filter,
            fork_child_pid_offset: self.fork_child_pid_offset.as_ref().map_or(0, |offset| *offset),
            shard_count: u32::try_from(self.layout.shard_count).unwrap_or(1),
            cpus_per_shard: u32::try_from(self.layout.cpus_per_shard).unwrap_or(1),
            padding: 0,
        };
        let stale: Vec<u32> = {
            let mut pid_filter: HashMap<_, u32, u8> = HashMap::try_from(
                self.ebpf.map_mut(map_names::PID_FILTER).ok_or_else(missing(map_names::PID_FILTER))?,
            )
            .map_err(map_error(map_names::PID_FILTER))?;
            for pid in &settings.pids {
                pid_filter.insert(pid, 1, 0).map_err(map_error(map_names::PID_FILTER))?;
            }
            pid_filter.keys().filter_map(Result::ok).filter(|pid| !settings.pids.contains(pid)).collect()
        };
        let mut config_map: Array<_, ProbeConfig> =
            Array::try_from(self.ebpf.map_mut(map_names::CONFIG).ok_or_else(missing(map_names::CONFIG))?)
                .map_err(map_error(map_names::CONFIG))?;
        config_map.set(0, config, 0).map_err(map_error(map_names::CONFIG))?;
        let mut pid_filter: HashMap<_, u32, u8> = HashMap::try_from(
            self.ebpf.map_mut(map_names::PID_FILTER).ok_or_else(missing(map_names::PID_FILTER))?,
        )
        .map_err(map_error(map_names::PID_FILTER))?;
        for pid in stale {
            pid_filter.remove(&pid).map_err(map_error(map_names::PID_FILTER))?;
        }
        Ok(())
    }

    fn configure(&mut self, settings: &ProbeSettings) -> Result<(), LoaderError> {
        self.set_filters(settings)?;
        let mut prefixes: LpmTrie<_, PrefixKey, u8> = LpmTrie::try_from(
            self.ebpf.map_mut(map_names::WATCH_PREFIXES).ok_or_else(missing(map_names::WATCH_PREFIXES))?,
        )
        .map_err(map_error(map_names::WATCH_PREFIXES))?;
        for dir in settings.scope.dirs() {
            // "/dir/" matches everything below; "/dir\0" matches the directory itself.
            for terminator in [b'/', 0] {
                let mut data = [0u8; PREFIX_KEY_BYTES];
                data[..dir.len()].copy_from_slice(dir);
                data[dir.len()] = terminator;
                let bits = u32::try_from((dir.len() + 1) * 8).unwrap_or(u32::MAX);
                prefixes.insert(&Key::new(bits, data), 1, 0).map_err(map_error(map_names::WATCH_PREFIXES))?;
            }
        }
        Ok(())
    }

    /// Where the kernel keeps an fd's open file, from its BTF; without it the probes key fds by
    /// `(tgid, fd)`: returned with why, for the hook report.
    fn configure_open_files(&mut self) -> Result<(FileLayout, Option<String>), LoaderError> {
        let (layout, missing) = match open_files::running_kernel_layout() {
            Ok(layout) => (layout, None),
            Err(error) => (FileLayout::default(), Some(format!("{error}; fds are followed by (pid, fd)"))),
        };
        self.set_file_layout(layout)?;
        Ok((layout, missing))
    }

    fn set_file_layout(&mut self, layout: FileLayout) -> Result<(), LoaderError> {
        let name = map_names::FILE_LAYOUT;
        let mut map: Array<_, FileLayout> =
            Array::try_from(self.ebpf.map_mut(name).ok_or_else(missing(name))?).map_err(map_error(name))?;
        map.set(0, layout, 0).map_err(map_error(name))
    }

    /// FUSE tracepoint field offsets and the watched connections. A field missing from a
    /// tracepoint's format keeps the FUSE tracepoints detached (`attach` reports why).
    fn configure_fuse(&mut self, settings: &ProbeSettings) -> Result<(), LoaderError> {
        let mut config =
            FuseConfig { watch_all: u32::from(settings.scope.watches_all()), ..FuseConfig::default() };
        if tracefs::event_exists("fuse", "fuse_request_send") {
            let offsets = tracefs::field_offsets(
                "fuse/fuse_request_send",
                &tracefs::format("fuse", "fuse_request_send"),
                ["connection", "unique", "opcode"],
            )
            .and_then(|send| {
                let end = tracefs::field_offsets(
                    "fuse/fuse_request_end",
                    &tracefs::format("fuse", "fuse_request_end"),
                    ["connection", "unique", "error"],
                )?;
                Ok((send, end))
            });
            match offsets {
                Ok((
                    [send_connection, send_unique, send_opcode],
                    [end_connection, end_unique, end_error],
                )) => {
                    config = FuseConfig {
                        send_connection,
                        send_unique,
                        send_opcode,
                        end_connection,
                        end_unique,
                        end_error,
                        ..config
                    };
                }
                Err(missing) => self.fuse_format_error = Some(missing),
            }
        }
        let mut config_map: Array<_, FuseConfig> = Array::try_from(
            self.ebpf.map_mut(map_names::FUSE_CONFIG).ok_or_else(missing(map_names::FUSE_CONFIG))?,
        )
        .map_err(map_error(map_names::FUSE_CONFIG))?;
        config_map.set(0, config, 0).map_err(map_error(map_names::FUSE_CONFIG))?;
        self.fuse_mounts = fuse_mounts::watched_fuse_mounts(&settings.scope);
        let mut connections: HashMap<_, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut(map_names::FUSE_CONNECTIONS)
                .ok_or_else(missing(map_names::FUSE_CONNECTIONS))?,
        )
        .map_err(map_error(map_names::FUSE_CONNECTIONS))?;
        for mount in &self.fuse_mounts {
            connections.insert(mount.connection, 1, 0).map_err(map_error(map_names::FUSE_CONNECTIONS))?;
        }
        Ok(())
    }

    /// Watched cwds and open fds that processes had when the run started.
    #[must_use]
    pub fn seeded(&self) -> &Seeded {
        &self.seeded
    }

    /// The FUSE mounts watched at start (all FUSE traffic is watched when everything is).
    #[must_use]
    pub fn fuse_mounts(&self) -> &[FuseMount] {
        &self.fuse_mounts
    }

    fn attach(&mut self, syscall_hooks: SyscallHooks) -> Result<(), LoaderError> {
        let mut specs: Array<_, vexevent_common::SyscallSpec> = Array::try_from(
            self.ebpf.take_map(map_names::SYSCALL_SPECS).ok_or_else(missing(map_names::SYSCALL_SPECS))?,
        )
        .map_err(map_error(map_names::SYSCALL_SPECS))?;
        let mut traced = 0;
        for entry in SYSCALLS {
            // A syscall this kernel lacks has no `syscalls/sys_enter_<name>` event.
            if tracefs::event_exists("syscalls", &format!("sys_enter_{}", entry.name)) {
                specs.set(entry.nr, entry.spec, 0).map_err(map_error(map_names::SYSCALL_SPECS))?;
                traced += 1;
            } else {
                self.hooks.report(format!("syscall {}", entry.name), Some("not in this kernel".to_owned()));
            }
        }
        if traced == 0 {
            return Err(LoaderError::NoHooks { detail: "no traced syscall exists".to_owned() });
        }
        self.hooks.attach_syscalls(&mut self.ebpf, syscall_hooks)?;
        self.traced_syscalls = traced;
        self.hooks.attach_fork(&mut self.ebpf, self.fork_child_pid_offset.as_ref().err());
        self.hooks.attach_exit(&mut self.ebpf);
        self.hooks.attach_fuse(&mut self.ebpf, self.fuse_format_error.as_ref());
        Ok(())
    }

    /// Attaches the uprobes on the configured daemon functions.
    fn attach_daemon_functions(&mut self, settings: &ProbeSettings) {
        if let Some(binary) = &settings.daemon_binary {
            self.hooks.attach_daemon_functions(&mut self.ebpf, binary, &settings.daemon_functions);
        }
    }

    /// The tracepoints and functions attached by name, by their records' source number.
    #[must_use]
    pub fn named_sources(&self) -> &[Option<NamedSource>] {
        &self.named
    }

    /// Number of syscalls the probes trace.
    #[must_use]
    pub fn traced_syscalls(&self) -> usize {
        self.traced_syscalls
    }

    /// Which hooks attached and which did not.
    #[must_use]
    pub fn hooks(&self) -> &[HookReport] {
        self.hooks.reports()
    }

    /// How CPUs map to rings.
    #[must_use]
    pub fn layout(&self) -> ShardLayout {
        self.layout
    }

    /// Takes the per-CPU pending-loss map for the capture stage (once): after the last drain it
    /// reports the losses the probes had no later record to report with.
    ///
    /// # Errors
    /// When the map is missing (already taken).
    pub fn take_pending_loss(&mut self) -> Result<PerCpuArray<MapData, PendingLoss>, LoaderError> {
        let map = self.ebpf.take_map(map_names::PENDING_LOSS).ok_or_else(missing(map_names::PENDING_LOSS))?;
        PerCpuArray::try_from(map).map_err(map_error(map_names::PENDING_LOSS))
    }

    /// Takes the flag by which the capture stage tells the probes it drains on its own timer
    /// (once).
    ///
    /// # Errors
    /// When the map is missing (already taken).
    pub fn take_consumer_polling(&mut self) -> Result<Array<MapData, u32>, LoaderError> {
        let name = map_names::CONSUMER_POLLING;
        let map = self.ebpf.take_map(name).ok_or_else(missing(name))?;
        Array::try_from(map).map_err(map_error(name))
    }

    /// Takes the shards' ring buffers for the capture stage (once), in shard order.
    ///
    /// # Errors
    /// When a map is missing (already taken).
    pub fn take_rings(&mut self) -> Result<Vec<RingBuf<MapData>>, LoaderError> {
        map_names::EVENTS[..self.layout.shard_count]
            .iter()
            .map(|&name| {
                let map = self.ebpf.take_map(name).ok_or_else(missing(name))?;
                RingBuf::try_from(map).map_err(map_error(name))
            })
            .collect()
    }

    /// Detaches every hook: no new records after this returns.
    pub fn detach(&mut self) {
        self.hooks.detach(&mut self.ebpf);
    }

    /// The kernel counters summed over CPUs.
    #[must_use]
    pub fn kernel_counters(&self) -> KernelCounters {
        let per_cpu_sum = |name: &str, index: u32| -> u64 {
            self.ebpf
                .map(name)
                .and_then(|map| PerCpuArray::<_, u64>::try_from(map).ok())
                .and_then(|array| array.get(&index, 0).ok())
                .map_or(0, |values| values.iter().sum())
        };
        let stats = KernelStat::ALL
            .iter()
            .map(|&stat| (stat.name().to_owned(), per_cpu_sum(map_names::STATS, stat as u32)))
            .collect();
        let lost_by_kind = OpKind::ALL
            .iter()
            .map(|&op| (op.name().to_owned(), per_cpu_sum(map_names::LOST_BY_KIND, op as u32)))
            .filter(|(_, lost)| *lost > 0)
            .collect();
        KernelCounters { stats, records_sequenced: per_cpu_sum(map_names::SEQ, 0), lost_by_kind }
    }
}

fn missing(name: &'static str) -> impl FnOnce() -> LoaderError {
    move || LoaderError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName { name: name.to_owned() }),
    }
}
