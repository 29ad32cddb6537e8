//! The `vexevent` command line: `run` captures, `stats` reports a running instance's counters,
//! `tail` follows its stream, `reload` reloads its filters and routes, `check-config` validates a
//! configuration file, `explain` shows where a filter runs; `replay`, `audit verify` and
//! `rollback` serve rules.

mod commands;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use commands::remote::Remote;
use vexevent::{
    app,
    config::{Config, ConfigError, DEFAULT_STATS_FILE},
    http::{self, AuthError, Token},
    loader::SyscallHooks,
};

const RUN_EXAMPLES: &str = "\
Examples:
  vexevent run                                  watch the whole system, JSON Lines on stdout
  vexevent run --watch /srv/data --output ev.jsonl
  vexevent run --watch /mnt/vexfs --ops write,rename,unlink --comm vexfs_fuse
  vexevent run --config /etc/vexevent.toml --stats-interval 5

Stop with Ctrl-C (SIGINT) or SIGTERM: vexevent drains every captured event, prints final stats
to stderr and exits 0. SIGUSR1 prints the current stats. SIGHUP (or POST
/api/v1/control/reload with --control-addr) reloads [filter], [[routes]] and [routing] from the
config file between two batches: no event is lost or delivered twice.";

/// Capture file-system events with eBPF and emit them as `VexFS` semantic events (JSON Lines).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Capture events until interrupted (needs root).
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// Print the counters of the running (or last) instance, from its stats file.
    Stats {
        /// Stats file the instance writes.
        #[arg(long, default_value = DEFAULT_STATS_FILE)]
        stats_file: PathBuf,
        /// Print the raw JSON snapshot instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Follow a running instance's live event stream (it must run with --stream-addr).
    Tail {
        /// The instance's stream address.
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: String,
        /// Only events matching this filter expression (see README, "Filters").
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
        /// Token to present (when the stream has one of its own); default: the token file's.
        #[arg(long, env = "VEXEVENT_STREAM_TOKEN")]
        token: Option<String>,
        /// The instance's token file (beside its stats file), read when no --token is given.
        #[arg(long, value_name = "FILE", default_value_os_t = default_token_file())]
        token_file: PathBuf,
        /// Print each event as JSON instead of one readable line.
        #[arg(long)]
        json: bool,
        /// The instance serves TLS ([stream.tls] / [control.tls]): connect with TLS and trust only
        /// the certificates in this PEM file (its certificate, or the authority that signed it).
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
    },
    /// Show a running instance's busiest files, processes and cgroups, slowest operations and anomalies,
    /// redrawn once per window (it must run with --control-addr and [analyse] enabled).
    Top {
        #[command(flatten)]
        control: ControlArgs,
        /// Rows per table.
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Reload a running instance's filters and routes from its configuration file: through its
    /// control API when given its address (and print the outcome), else with SIGHUP.
    Reload {
        /// The instance's control API address (`vexevent run --control-addr`).
        #[arg(long, value_name = "ADDR")]
        control_addr: Option<std::net::SocketAddr>,
        /// Token to present (when the control API has one of its own); default: the token
        /// file's.
        #[arg(long, env = "VEXEVENT_CONTROL_TOKEN")]
        token: Option<String>,
        /// The instance's token file (beside its stats file), read when no --token is given.
        #[arg(long, value_name = "FILE", default_value_os_t = default_token_file())]
        token_file: PathBuf,
        /// Without --control-addr: the stats file naming the instance's pid.
        #[arg(long, default_value = DEFAULT_STATS_FILE)]
        stats_file: PathBuf,
        /// The instance serves TLS ([stream.tls] / [control.tls]): connect with TLS and trust only
        /// the certificates in this PEM file (its certificate, or the authority that signed it).
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
    },
    /// Validate a configuration file and print the settings it yields.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Run rules over a recorded JSON Lines log (vexevent's output) and print their detections,
    /// one JSON line each (no root, no kernel; nothing acts).
    Replay {
        /// A rules file (`[[rules]]`, as `react.rules_file`).
        #[arg(long, value_name = "FILE")]
        rules: PathBuf,
        /// The recorded events.
        events: PathBuf,
    },
    /// Trying rules: what they decide over recorded events.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The replicated cluster this instance is a member of (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Print the cluster's committed events from a log index, in commit order (JSON Lines), up
    /// to the commit index; an index already compacted is refused with the first retained one.
    /// Says on stderr the index to resume from and the session to carry to another member.
    /// With --follow, goes on printing each entry as it commits, every event as
    /// {"index":N,"offset":K,"event":{..}}; resume on any member with --from N --skip K+1.
    Log {
        /// The first log index to print.
        #[arg(long, value_name = "INDEX")]
        from: u64,
        /// Events of entry --from already read (the offset after the last one printed).
        #[arg(long, value_name = "EVENTS", default_value_t = 0)]
        skip: u64,
        /// Keep printing entries as they commit (the log as a live, resumable stream).
        #[arg(long)]
        follow: bool,
        /// The session a previous `vexevent log` printed (on any member): this member answers
        /// only once it applied that index, so the reader never sees less than it saw.
        #[arg(long, value_name = "INDEX")]
        session: Option<u64>,
        /// How long the member may wait to apply the session's index before refusing.
        #[arg(long, value_name = "MS", default_value_t = vexevent::http::SESSION_WAIT_DEFAULT_MS)]
        wait_ms: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// The audit log of what rules decided and did.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Undo a rule's action recorded in the audit log (SIGCONT a process it stopped, move a
    /// quarantined file back, restore a mode), and record the rollback there.
    Rollback {
        /// The audit log (`react.audit_log`).
        #[arg(long, value_name = "FILE", default_value = "/var/log/vexevent/audit.log")]
        audit_log: PathBuf,
        /// The audit line of the action's outcome (its `seq`, also `audit_seq` on its event).
        id: u64,
    },
    /// Kernel functions for `[[kernel_functions]]`: which exist, which can be attached here,
    /// which are inlined or missing.
    Functions {
        /// A function name or glob (`vfs_*`).
        #[arg(long, value_name = "GLOB")]
        list: String,
    },
    /// Show which part of a filter the kernel evaluates and which part userspace does.
    Explain {
        /// TOML configuration file whose [filter] to explain.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Filter expression (repeatable: all must match); see README, "Filters".
        #[arg(long)]
        filter: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Run a rules file over recorded events (JSON Lines, vexevent's output) and print, per rule,
    /// its detections with their verdicts and what its actions would do (nothing acts), or
    /// `uncertain` when records were lost (no root, no kernel).
    Test {
        /// A rules file (`[[rules]]`, as `react.rules_file`).
        file: PathBuf,
        /// The recorded events.
        #[arg(long, value_name = "EVENTS.jsonl")]
        events: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Members, leader, term, commit index and each member's lag, as the instance sees them.
    Status {
        #[command(flatten)]
        control: ControlArgs,
        /// Print the JSON the instance answers.
        #[arg(long)]
        json: bool,
    },
    /// Add a member at runtime: the instance at ADDR (started with `join = true`) becomes a
    /// learner, catches up (by snapshot when the log it needs is compacted), then a voter.
    /// Asked of any member: a follower forwards it to the leader.
    Add {
        /// Its raft id (`cluster.node_id` there).
        id: u64,
        /// The address its peer protocol listens at (`cluster.listen` there).
        addr: std::net::SocketAddr,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Remove a member at runtime (through a joint configuration); it stops taking part and
    /// refuses to start again with its data. Asked of any member.
    Remove {
        /// Its raft id.
        id: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Where a running instance's control API is and how to prove the right to use it.
#[derive(Args, Debug)]
struct ControlArgs {
    /// The instance's control API address (`vexevent run --control-addr`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7879")]
    control_addr: std::net::SocketAddr,
    /// Token to present (when the control API has one of its own); default: the token file's.
    #[arg(long, env = "VEXEVENT_CONTROL_TOKEN")]
    token: Option<String>,
    /// The instance's token file (beside its stats file), read when no --token is given.
    #[arg(long, value_name = "FILE", default_value_os_t = default_token_file())]
    token_file: PathBuf,
    /// The instance serves TLS ([control.tls]): connect with TLS and trust only the
    /// certificates in this PEM file (its certificate, or the authority that signed it).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain: an edited or removed line is reported with its number.
    Verify {
        /// The audit log.
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration file (see vexevent.example.toml); command-line options override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Directory or mount to watch (repeatable). Default: the whole system (/).
    #[arg(long, short, value_name = "PATH")]
    watch: Vec<PathBuf>,
    /// Append JSON Lines to FILE instead of stdout ("-" is stdout).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Comma-separated operation types to report: open, read, write, close, rename, unlink,
    /// rmdir, mkdir, symlink, link, chmod, chown, truncate, fsync, setxattr, removexattr, ioctl,
    /// mount, umount. Default: all.
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    ops: Vec<String>,
    /// Filter expression (repeatable: all must match), e.g.
    /// `type == FilesystemWrite and path glob "/srv/**/*.vec"`. See README, "Filters".
    #[arg(long, value_name = "EXPR")]
    filter: Vec<String>,
    /// Only this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Only this user id.
    #[arg(long)]
    uid: Option<u32>,
    /// Only tasks with this name (at most 15 bytes).
    #[arg(long)]
    comm: Option<String>,
    /// Size of each shard's ring buffer in bytes (power of two).
    #[arg(long, value_name = "BYTES")]
    ring_bytes: Option<u32>,
    /// Hook type of the syscall probes: BTF raw tracepoints where available (auto), only those
    /// (btf), or classic tracepoints (tracepoint).
    #[arg(long, value_enum, value_name = "TYPE")]
    syscall_hooks: Option<SyscallHooks>,
    /// Turn the probes' own diagnostics on (FUSE daemons learned, forks inheriting a watched cwd,
    /// path read faults, full rings) and print them on stderr.
    #[arg(long)]
    debug_probes: bool,
    /// Ring buffers (shards): 0 is one per CPU (at most 8).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// While records come, the rings are drained this often (on a timer: the probes do not wake
    /// the drainer then); after a wakeup, the time before the first drain. In microseconds.
    #[arg(long, value_name = "US")]
    batch_window_us: Option<u64>,
    /// How late a record may arrive relative to other shards' before order is given up, in
    /// microseconds.
    #[arg(long, value_name = "US")]
    reorder_window_us: Option<u64>,
    /// Report FUSE lookups, attribute reads and flushes that no syscall claims.
    #[arg(long)]
    fuse_metadata: bool,
    /// Also report every FUSE request as an event of its own (joined or not).
    #[arg(long)]
    fuse_raw: bool,
    /// Unstripped FUSE daemon binary whose functions --fuse-daemon-function times.
    #[arg(long, value_name = "PATH")]
    fuse_daemon_binary: Option<PathBuf>,
    /// Daemon function to time inside the requests it serves (repeatable): a symbol or a demangled
    /// Rust path such as `vexfs::fuse_impl::VexFSFuse::search_vectors`.
    #[arg(long = "fuse-daemon-function", value_name = "NAME")]
    fuse_daemon_functions: Vec<String>,
    /// Seconds between stats reports on stderr (0: only the final report).
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// Serve the live event stream (WebSocket, /api/v1/semantic/events/stream) on this address,
    /// e.g. 127.0.0.1:7878 (port 0: any free port); `vexevent tail` follows it.
    #[arg(long, value_name = "ADDR")]
    stream_addr: Option<std::net::SocketAddr>,
    /// Token stream subscribers must present (required for a non-loopback --stream-addr).
    #[arg(long, env = "VEXEVENT_STREAM_TOKEN", value_name = "TOKEN", value_parser = stream_token)]
    stream_token: Option<Token>,
    /// Serve the control API (reload, stats, Prometheus /metrics) on this address, e.g.
    /// 127.0.0.1:7879.
    #[arg(long, value_name = "ADDR")]
    control_addr: Option<std::net::SocketAddr>,
    /// Token control API requests must present (required for a non-loopback --control-addr).
    #[arg(long, env = "VEXEVENT_CONTROL_TOKEN", value_name = "TOKEN", value_parser = control_token)]
    control_token: Option<Token>,
    /// File to keep current stats in, for `vexevent stats`.
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
}

/// Where `vexevent run` writes its token unless given another stats file: beside it.
fn default_token_file() -> PathBuf {
    std::path::Path::new(DEFAULT_STATS_FILE).with_file_name(http::TOKEN_FILE)
}

/// The token a client presents: the one given, else the token file's.
fn client_token(token: Option<String>, token_file: &std::path::Path) -> anyhow::Result<String> {
    match token {
        Some(token) => Ok(token),
        None => Ok(http::read_token_file(token_file)?.expose().to_owned()),
    }
}

fn stream_token(text: &str) -> Result<Token, AuthError> {
    Token::new(http::STREAM_SERVER, http::STREAM_TOKEN_FLAG, text.to_owned())
}

fn control_token(text: &str) -> Result<Token, AuthError> {
    Token::new(http::CONTROL_SERVER, http::CONTROL_TOKEN_FLAG, text.to_owned())
}

impl RunArgs {
    /// The configuration file (read again on every reload) with the options applied over it.
    fn config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let capture = &mut config.capture;
        if !self.watch.is_empty() {
            capture.watch.clone_from(&self.watch);
        }
        if !self.ops.is_empty() {
            capture.ops.clone_from(&self.ops);
        }
        if !self.pids.is_empty() {
            capture.pids.clone_from(&self.pids);
        }
        config.filter.expressions.extend(self.filter.iter().cloned());
        capture.uid = self.uid.or(capture.uid);
        capture.comm = self.comm.clone().or(capture.comm.take());
        capture.ring_bytes = self.ring_bytes.unwrap_or(capture.ring_bytes);
        capture.syscall_hooks = self.syscall_hooks.unwrap_or(capture.syscall_hooks);
        capture.debug_probes |= self.debug_probes;
        capture.shards = self.shards.unwrap_or(capture.shards);
        capture.batch_window_us = self.batch_window_us.unwrap_or(capture.batch_window_us);
        capture.reorder_window_us = self.reorder_window_us.unwrap_or(capture.reorder_window_us);
        config.fuse.include_metadata |= self.fuse_metadata;
        config.fuse.raw_boundaries |= self.fuse_raw;
        config.fuse.daemon_binary = self.fuse_daemon_binary.clone().or(config.fuse.daemon_binary);
        if !self.fuse_daemon_functions.is_empty() {
            config.fuse.daemon_functions.clone_from(&self.fuse_daemon_functions);
        }
        config.output.path = self.output.clone().or(config.output.path);
        config.stream.addr = self.stream_addr.or(config.stream.addr);
        config.stream.token = self.stream_token.clone().or(config.stream.token.take());
        config.control.addr = self.control_addr.or(config.control.addr);
        config.control.token = self.control_token.clone().or(config.control.token.take());
        config.stats.interval_secs = self.stats_interval.unwrap_or(config.stats.interval_secs);
        config.stats.file = self.stats_file.clone().unwrap_or(config.stats.file);
        Ok(config)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Every accepted and refused HTTP request is logged (`vexevent::http`).
            tracing_subscriber::EnvFilter::try_from_env("VEXEVENT_LOG")
                .unwrap_or_else(|_| "warn,vexevent::http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Commands that print, like any Unix filter, end quietly when their reader goes away
        // (`vexevent tail | head`) instead of panicking on a broken pipe. `run` keeps SIGPIPE
        // ignored: a sink whose reader goes away is counted and retried, not fatal.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vexevent: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vexevent check-config FILE`: every problem with its place, or the stage graph and settings.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::from_file(file)?;
    let problems = config.problems();
    if !problems.is_empty() {
        for problem in &problems {
            // Causes the message does not already quote (a filter's line and column).
            let message = problem.to_string();
            let cause = std::error::Error::source(problem)
                .map(ToString::to_string)
                .filter(|cause| !message.contains(cause.as_str()))
                .map(|cause| format!(": {cause}"))
                .unwrap_or_default();
            println!("{}: {message}{cause}", file.display());
        }
        anyhow::bail!("{}: {} problem(s)", file.display(), problems.len());
    }
    let settings = config.validate()?;
    println!("{}: valid", file.display());
    println!("stages: {}", app::stage_graph("kernel", &settings).join(" -> "));
    println!("{settings:#?}");
    Ok(())
}

/// `vexevent cluster ...`: through a member's control API.
fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { control, json } => commands::cluster::status(
            &Remote::new(control.tls_ca.as_deref())?,
            control.control_addr,
            &client_token(control.token, &control.token_file)?,
            json,
        ),
        ClusterCommand::Add { id, addr, control } => commands::cluster::change(
            &Remote::new(control.tls_ca.as_deref())?,
            control.control_addr,
            &client_token(control.token, &control.token_file)?,
            Some(addr),
            id,
        ),
        ClusterCommand::Remove { id, control } => commands::cluster::change(
            &Remote::new(control.tls_ca.as_deref())?,
            control.control_addr,
            &client_token(control.token, &control.token_file)?,
            None,
            id,
        ),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = args.config()?;
            let (settings, compiled) = config.build()?;
            let reread = Box::new(move || args.config());
            let last = app::run(&settings, compiled, config, reread, &commands::run::print_notice)?;
            eprint!("{last}");
            Ok(())
        }
        Command::Stats { stats_file, json } => {
            let snapshot = app::read_stats_file(&stats_file).with_context(|| {
                format!(
                    "cannot read stats file {} (is `vexevent run` running, or was it given --stats-file?)",
                    stats_file.display()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                let running = std::path::Path::new(&format!("/proc/{}", snapshot.pid)).exists();
                if !snapshot.final_snapshot && !running {
                    println!("(vexevent pid {} is no longer running; last stats it wrote)", snapshot.pid);
                }
                print!("{snapshot}");
            }
            Ok(())
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Reload { control_addr, token, token_file, stats_file, tls_ca } => match control_addr {
            Some(addr) => commands::reload::through_api(
                &Remote::new(tls_ca.as_deref())?,
                addr,
                &client_token(token, &token_file)?,
            ),
            None => commands::reload::with_signal(&stats_file),
        },
        Command::Tail { addr, filter, token, token_file, json, tls_ca } => commands::tail::follow(
            &Remote::new(tls_ca.as_deref())?,
            &addr,
            filter.as_deref(),
            &client_token(token, &token_file)?,
            json,
        ),
        Command::Top { control, rows } => commands::top::follow(
            &Remote::new(control.tls_ca.as_deref())?,
            control.control_addr,
            &client_token(control.token, &control.token_file)?,
            rows,
        ),
        Command::Replay { rules, events } => commands::rules::replay_log(&rules, &events),
        Command::Rules { command: RulesCommand::Test { file, events } } => {
            commands::rules::test_rules(&file, &events)
        }
        Command::Cluster { command } => cluster(command),
        Command::Log { from, skip, follow, session, wait_ms, control } => {
            let (remote, token) =
                (Remote::new(control.tls_ca.as_deref())?, client_token(control.token, &control.token_file)?);
            let session = session.map(|index| (index, wait_ms));
            if follow {
                commands::cluster::follow(&remote, control.control_addr, &token, (from, skip), session)
            } else {
                commands::cluster::log(&remote, control.control_addr, &token, (from, skip), session)
            }
        }
        Command::Audit { command: AuditCommand::Verify { file } } => commands::rules::verify_log(&file),
        Command::Rollback { audit_log, id } => commands::rules::rollback_action(&audit_log, id),
        Command::Functions { list } => commands::functions::list(&list),
        Command::Explain { config, filter } => {
            let mut config = match &config {
                Some(path) => Config::from_file(path)?,
                None => Config::default(),
            };
            config.filter.expressions.extend(filter);
            let settings = config.validate()?;
            if settings.filter.expressions.is_empty() {
                println!("no filter: every event passes");
                return Ok(());
            }
            println!("filter ({:?} of):", settings.filter.mode);
            for expression in &settings.filter.expressions {
                println!("  userspace: {expression}");
            }
            print!("{}", settings.kernel_filter);
            Ok(())
        }
    }
}
