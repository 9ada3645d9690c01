//! `vhost-user-sriov-net`: the daemon ("firmware") serving one PF and N VF virtio-net partitions
//! over vhost-user, plus its `qemu-args` and `ctl` companions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use backend::device::Drive;
use backend::mac::MacAddr;
use backend::partition::Partition;
use backend::poller::Poller;
use backend::switch::Switch;
use clap::{Args, Parser, Subcommand};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use vhost_user_sriov_net::config::{self, Config, Settings};
use vhost_user_sriov_net::{control, ctl, lifecycle, qemu, server, uplinks};

#[derive(Parser)]
#[command(
    name = "vhost-user-sriov-net",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Write the daemon's PID to this file once every socket listens.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Serve the counters as Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9857).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The settings shared by the daemon and `qemu-args`; flags override the config file.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// Directory for pf.sock, vf<N>.sock and control.sock [default: /run/vhost-user-sriov-net]
    #[arg(long, value_name = "DIR")]
    socket_dir: Option<PathBuf>,
    /// Number of VF partitions (1..=255) [default: 4]
    #[arg(long)]
    vfs: Option<u16>,
    /// TOML config file (same keys as these flags, plus [pf] and [vf.N] overrides)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Locally administered base MAC: PF gets it, VF n gets base + n + 1 [default: 02:53:52:00:00:00]
    #[arg(long)]
    base_mac: Option<MacAddr>,
    /// Queue pairs per partition [default: 1]
    #[arg(long)]
    queue_pairs: Option<u16>,
    /// Queue size (power of two, 64..=1024) [default: 256]
    #[arg(long)]
    queue_size: Option<u16>,
    /// MTU offered to the drivers [default: 1500]
    #[arg(long)]
    mtu: Option<u16>,
    /// Busy-poll: one polling thread serves every TX queue with traffic and keeps polling a queue
    /// this many microseconds after it runs dry (0..=10000) [default: 0, event-driven: each
    /// kick wakes the partition's worker; idle partitions cost nothing either way]
    #[arg(long, value_name = "US")]
    poll_us: Option<u32>,
    /// Event-driven mode: how many microseconds a partition's worker keeps looking at a TX
    /// queue that ran dry before it sleeps and the driver must kick again (0..=1000; it yields
    /// the CPU every few microseconds meanwhile; 0 sleeps at once) [default: 20]
    #[arg(long, value_name = "US")]
    linger_us: Option<u32>,
    /// Mode of the PF and VF sockets, octal [default: 0660]
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,
    /// Group of the PF and VF sockets (name or number), e.g. the one QEMU runs as
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Mode of control.sock, octal [default: 0600, owner only]
    #[arg(long, value_name = "MODE")]
    control_mode: Option<String>,
    /// Group of control.sock (name or number)
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// An uplink port (repeatable; replaces the config file's [[uplink]] entries):
    /// tap:NAME, stream:PATH (QEMU -netdev stream framing; relative to the socket directory) or
    /// vxlan:VNI,local=ADDR[:PORT],remote=ADDR[:PORT][,remote=...]; each takes ,mtu=N and VXLAN
    /// ,underlay_mtu=N
    #[arg(long, value_name = "SPEC")]
    uplink: Vec<config::UplinkSettings>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the QEMU arguments for the PF and every VF, one per line.
    QemuArgs {
        #[command(flatten)]
        config: ConfigArgs,
        /// Guest memory (shared memfd backend), e.g. 512M or 2G.
        #[arg(long, default_value = "512M")]
        memory: String,
        /// Print one shell-quoted line instead of one argument per line.
        #[arg(long)]
        shell: bool,
        /// Only the NIC (root port, chardevs, netdevs, devices): shared guest memory, the q35
        /// machine and -smp are set up by the caller.
        #[arg(long, conflicts_with = "libvirt")]
        nic_only: bool,
        /// Print a minimal libvirt domain (XML) instead: shared memory of --memory, the vCPUs
        /// the NIC needs, and the NIC's arguments in <qemu:commandline>.
        #[arg(long, conflicts_with = "shell")]
        libvirt: bool,
        /// Give the guest a vIOMMU (intel-iommu, interrupt remapping, device IOTLB) and put the
        /// PF and every VF behind it (iommu_platform=on,ats=on): DMA isolation for vfio or DPDK
        /// in the guest. QEMU >= 10.1 with KVM needs the split irqchip this adds to -machine
        /// (with --libvirt: an <iommu> device and the ioapic in QEMU).
        #[arg(long)]
        iommu: bool,
    },
    /// Administer and query a running daemon, in `ip link`'s words.
    Ctl {
        /// The daemon's socket directory [default: the config file's, else /run/vhost-user-sriov-net]
        #[arg(long, value_name = "DIR", global = true)]
        socket_dir: Option<PathBuf>,
        /// The daemon's config file (for its socket directory)
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Partitions as `ip link show` prints VFs: MAC, VLAN, anti-spoof, link state, trust, rates.
    Show {
        /// Print JSON (every field and counter).
        #[arg(short = 'j', long)]
        json: bool,
        /// Add the counters, as `ip -s link` does.
        #[arg(short = 's', long)]
        stats: bool,
        /// Only this partition (pf, vf0, vf1, ...).
        partition: Option<String>,
    },
    /// Set VF N: [mac LLADDR] [vlan VLANID [qos QOS] [proto 802.1Q|802.1ad]] [max_tx_rate MBPS]
    /// [min_tx_rate MBPS] [spoofchk on|off] [trust on|off] [state auto|enable|disable]
    Vf {
        n: u16,
        #[arg(required = true, value_name = "SETTING VALUE")]
        settings: Vec<String>,
    },
    /// Set the PF's partition, with the same settings as `vf N`.
    Pf {
        #[arg(required = true, value_name = "SETTING VALUE")]
        settings: Vec<String>,
    },
    /// Print the running state as a config file (partitions with their admin settings).
    DumpConfig,
    /// Capture what a partition sends and receives as pcap (tcpdump -r reads it).
    Capture {
        /// pf, vf0, vf1, ...
        partition: String,
        /// Write the pcap here ("-": stdout).
        #[arg(short = 'w', value_name = "FILE")]
        file: PathBuf,
        /// Stop after this many frames [default: until interrupted]
        #[arg(short = 'c', value_name = "COUNT", default_value_t = 0)]
        count: u64,
    },
}

/// Exit status for bad input (config, CLI, socket paths), like clap's usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        None => run_daemon(
            &cli.config,
            cli.ready_file.as_deref(),
            cli.metrics.as_deref(),
        ),
        Some(Command::QemuArgs {
            config,
            memory,
            shell,
            nic_only,
            libvirt,
            iommu,
        }) => {
            let format = match (libvirt, shell) {
                (true, _) => QemuFormat::Libvirt,
                (false, true) => QemuFormat::Shell,
                (false, false) => QemuFormat::Lines,
            };
            run_qemu_args(&config, &memory, nic_only, iommu, format)
        }
        Some(Command::Ctl {
            socket_dir,
            config,
            command,
        }) => run_ctl(socket_dir, config, command),
    }
}

fn run_ctl(socket_dir: Option<PathBuf>, config: Option<PathBuf>, command: CtlCommand) -> ExitCode {
    // --socket-dir, else the config file's socket_dir, else the default.
    let dir = match (socket_dir, config) {
        (Some(d), _) => d,
        (None, Some(f)) => match Settings::from_file(&f) {
            Ok(s) => s
                .socket_dir
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET_DIR)),
            Err(e) => return fail(EXIT_BAD_INPUT, &e),
        },
        (None, None) => PathBuf::from(config::DEFAULT_SOCKET_DIR),
    };
    let out = match command {
        CtlCommand::Show {
            json,
            stats,
            partition,
        } => ctl::show(&dir, partition.as_deref(), json, stats).map(|mut o| {
            if json {
                o.push('\n');
            }
            o
        }),
        CtlCommand::Vf { n, settings } => ctl::set(&dir, &format!("vf{n}"), &settings),
        CtlCommand::Pf { settings } => ctl::set(&dir, "pf", &settings),
        CtlCommand::DumpConfig => ctl::dump_config(&dir),
        CtlCommand::Capture {
            partition,
            file,
            count,
        } => ctl::capture(&dir, &partition, &file, count).map(|summary| {
            // The summary goes to stderr, so `-w -` stays a clean pcap on stdout.
            eprint!("{summary}");
            String::new()
        }),
    };
    match out {
        Ok(o) => {
            print!("{o}");
            ExitCode::SUCCESS
        }
        Err(e @ ctl::CtlError::BadInput(_)) => fail(EXIT_BAD_INPUT, &e),
        Err(e) => fail(1, &e),
    }
}

/// `--help` and `--version` print as clap does; bad command-line input gets one line on stderr
/// and exit status 2, like bad config.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        // A subcommand given without its own subcommand (`ctl`): clap prints the whole help.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.render().to_string();
            let usage = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Usage:"))
                .unwrap_or("")
                .trim();
            eprintln!("error: a subcommand is missing; usage: {usage} (see --help)");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        _ => {
            eprintln!("{}", one_line(&e.render().to_string()));
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// clap's message on one line: its lines joined with "; ", without the usage block and the
/// closing "For more information" line, which become a pointer to --help.
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut in_usage = false;
    for l in rendered.lines() {
        let t = l.trim();
        if t.is_empty() {
            in_usage = false;
        } else if t.starts_with("Usage:") {
            in_usage = true;
        } else if !in_usage && !t.starts_with("For more information") {
            parts.push(t);
        }
    }
    if parts.is_empty() {
        parts.push("error: bad command line");
    }
    format!("{} (see --help)", parts.join("; "))
}

fn fail(code: u8, msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

fn load_config(a: &ConfigArgs) -> Result<Config, config::ConfigError> {
    let file = match &a.config {
        Some(p) => Settings::from_file(p)?,
        None => Settings::default(),
    };
    let flags = Settings {
        socket_dir: a.socket_dir.clone(),
        vfs: a.vfs,
        base_mac: a.base_mac,
        queue_pairs: a.queue_pairs,
        queue_size: a.queue_size,
        mtu: a.mtu,
        poll_us: a.poll_us,
        linger_us: a.linger_us,
        socket_mode: a.socket_mode.clone(),
        socket_group: a.socket_group.clone(),
        control_mode: a.control_mode.clone(),
        control_group: a.control_group.clone(),
        pf: None,
        vf: None,
        uplink: (!a.uplink.is_empty()).then(|| a.uplink.clone()),
    };
    Config::resolve(file.overlay(flags))
}

enum QemuFormat {
    Lines,
    Shell,
    Libvirt,
}

fn run_qemu_args(
    a: &ConfigArgs,
    memory: &str,
    nic_only: bool,
    iommu: bool,
    format: QemuFormat,
) -> ExitCode {
    let cfg = match load_config(a) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    let mib = match qemu::parse_mib(memory) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    if let QemuFormat::Libvirt = format {
        return match qemu::libvirt_domain(&cfg, mib, iommu) {
            Ok(x) => {
                print!("{x}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_BAD_INPUT, &e),
        };
    }
    let args = match qemu::args_with(&cfg, (!nic_only).then_some(mib), iommu) {
        Ok(a) => a,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    if nic_only && iommu {
        eprintln!(
            "note: intel-iommu with intremap=on needs -machine ...,kernel-irqchip=split under KVM"
        );
    }
    let vcpus = qemu::min_vcpus(&cfg);
    if nic_only && vcpus > 1 {
        eprintln!(
            "note: with every VF enabled the guest needs at least {vcpus} vCPUs for the NIC's \
             interrupt vectors (-smp {vcpus})"
        );
    }
    if let QemuFormat::Shell = format {
        let line: Vec<String> = args.iter().map(|s| qemu::shell_quote(s)).collect();
        println!("{}", line.join(" "));
    } else {
        for s in args {
            println!("{s}");
        }
    }
    ExitCode::SUCCESS
}

fn run_daemon(a: &ConfigArgs, ready_file: Option<&Path>, metrics: Option<&str>) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cfg = match load_config(a) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    let partitions: Vec<Arc<Partition>> = cfg
        .partitions
        .iter()
        .enumerate()
        .map(|(i, (role, pc))| Arc::new(Partition::new(i, *role, pc.clone())))
        .collect();
    let switch = match Switch::with_uplinks(partitions, uplinks::ports(&cfg.uplinks)) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    for (id, change) in cfg.admin.iter().enumerate() {
        if change.is_empty() {
            continue;
        }
        if let Err(e) = switch.set_admin(id, change) {
            let name = switch.partitions()[id].name();
            return fail(EXIT_BAD_INPUT, &format!("{name}: {e}"));
        }
    }

    let dir = &cfg.socket_dir;
    if let Err(e) = server::prepare_dir(dir) {
        return fail(EXIT_BAD_INPUT, &e);
    }
    let mut paths: Vec<PathBuf> = switch
        .partitions()
        .iter()
        .map(|p| dir.join(format!("{}.sock", p.name())))
        .collect();
    let control_path = dir.join("control.sock");
    paths.push(control_path.clone());
    // Sockets are born owner-only (whatever the umask) and opened up as configured after.
    // SAFETY: umask has no memory effects; no other thread runs yet.
    let old_umask = unsafe { libc::umask(0o177) };
    let bound = server::bind_all(&paths, lifecycle::inherited_listeners());
    // SAFETY: as above.
    unsafe { libc::umask(old_umask) };
    let (mut listeners, owned) = match bound {
        Ok(l) => l,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    // Uplink stream sockets: claimed and bound as the partitions' are.
    let stream_paths = uplinks::socket_paths(&cfg.uplinks);
    // SAFETY: as above.
    let old_umask = unsafe { libc::umask(0o177) };
    let stream_bound = server::bind_all(&stream_paths, Default::default());
    // SAFETY: as above.
    unsafe { libc::umask(old_umask) };
    let (stream_listeners, stream_owned) = match stream_bound {
        Ok(l) => l,
        Err(e) => {
            server::remove_all(&owned);
            return fail(EXIT_BAD_INPUT, &e);
        }
    };
    let mut owned = owned;
    owned.extend(stream_owned);
    // From here on, a failed start takes its sockets with it (not systemd's: they stay).
    let abort = |code: u8, msg: &dyn std::fmt::Display| {
        server::remove_all(&owned);
        let _ = std::fs::remove_dir_all(server::internal_dir(dir));
        fail(code, msg)
    };
    for p in &owned {
        let access = if *p == control_path {
            cfg.control_access
        } else {
            cfg.data_access
        };
        if let Err(e) = server::apply_access(p, access) {
            return abort(EXIT_BAD_INPUT, &e);
        }
    }
    lifecycle::check_layout(dir, &switch);
    let Some(control) = listeners.pop() else {
        return abort(1, &"no control socket bound");
    };

    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => return abort(1, &format!("cannot install signal handlers: {e}")),
    };
    let drive = match cfg.poll_us {
        0 => Drive::Event {
            linger: std::time::Duration::from_micros(u64::from(cfg.linger_us)),
        },
        us => match Poller::spawn(std::time::Duration::from_micros(u64::from(us))) {
            Ok(p) => Drive::Poll(p),
            Err(e) => return abort(1, &format!("cannot start the polling thread: {e}")),
        },
    };
    let internal = match server::prepare_internal_dir(dir) {
        Ok(d) => d,
        Err(e) => return abort(EXIT_BAD_INPUT, &e),
    };
    let mut acceptor = match server::Acceptor::new() {
        Ok(a) => a,
        Err(e) => return abort(1, &format!("cannot start the acceptor: {e}")),
    };
    if let Err(e) = uplinks::start(&switch, &cfg.uplinks, stream_listeners) {
        return abort(EXIT_BAD_INPUT, &e);
    }
    for (p, l) in switch.partitions().iter().zip(listeners) {
        let started =
            acceptor.add_partition(p.clone(), switch.clone(), drive.clone(), l, &internal);
        if let Err(e) = started {
            return abort(1, &format!("cannot start thread for {}: {e}", p.name()));
        }
    }
    if let Err(e) = acceptor.spawn() {
        return abort(1, &format!("cannot start the acceptor: {e}"));
    }
    let info = control::DaemonInfo {
        socket_dir: cfg.socket_dir.clone(),
        poll_us: cfg.poll_us,
        linger_us: cfg.linger_us,
    };
    // QEMU's QMP socket, if QEMU offers one there (qemu-args adds it): link mirroring and the
    // guests' MACs. Optional: the thread waits quietly for it.
    if let Err(e) = vhost_user_sriov_net::qmp::spawn(dir, switch.clone()) {
        return abort(1, &format!("cannot start the QMP thread: {e}"));
    }
    if let Some(addr) = metrics {
        if let Err(e) = vhost_user_sriov_net::metrics::spawn(addr, switch.clone()) {
            return abort(EXIT_BAD_INPUT, &e);
        }
    }
    if let Err(e) = control::spawn(control, switch.clone(), info) {
        return abort(1, &format!("cannot start control server: {e}"));
    }
    if let Some(f) = ready_file {
        if let Err(e) = write_ready_file(f) {
            return abort(
                EXIT_BAD_INPUT,
                &format!("cannot write ready file {}: {e}", f.display()),
            );
        }
    }
    log::info!(
        "ready: PF and {} VF partitions listening in {} (control: {})",
        cfg.vfs(),
        dir.display(),
        control_path.display()
    );

    lifecycle::notify(&[NotifyState::Ready]);

    let mut last = None;
    for sig in signals.forever() {
        if sig != SIGHUP {
            last = Some(sig);
            break;
        }
        log::info!("SIGHUP: re-reading the configuration");
        lifecycle::notify(&[NotifyState::Reloading]);
        match load_config(a) {
            Ok(new) => lifecycle::reload(&cfg, &new, &switch),
            Err(e) => log::error!("SIGHUP: {e}; nothing changed"),
        }
        lifecycle::notify(&[NotifyState::Ready]);
    }
    let name = last.and_then(signal_hook::low_level::signal_name);
    log::info!("{}: shutting down", name.unwrap_or("signal handling ended"));
    lifecycle::notify(&[NotifyState::Stopping]);
    server::remove_all(&owned);
    let _ = std::fs::remove_dir_all(server::internal_dir(dir));
    if let Some(f) = ready_file {
        let _ = std::fs::remove_file(f);
    }
    ExitCode::SUCCESS
}

/// Written via rename so a watcher never reads a half-written PID.
fn write_ready_file(path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{}", std::process::id())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
