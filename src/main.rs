//! `vhost-user-sriov-net`: the daemon ("firmware") serving one PF and N VF virtio-net partitions
//! over vhost-user, plus its `qemu-args` and `ctl` companions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use backend::mac::MacAddr;
use backend::partition::Partition;
use backend::poller::Poller;
use backend::switch::Switch;
use clap::{Args, Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};

use vhost_user_sriov_net::config::{self, Config, Settings};
use vhost_user_sriov_net::{control, ctl, qemu, server, uplinks};

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
        /// Only the NIC (root port, chardevs, netdevs, devices): shared guest memory and the
        /// q35 machine are set up by the caller (e.g. libvirt's <memoryBacking>).
        #[arg(long)]
        nic_only: bool,
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
}

/// Exit status for bad input (config, CLI, socket paths), like clap's usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run_daemon(&cli.config, cli.ready_file.as_deref()),
        Some(Command::QemuArgs {
            config,
            memory,
            shell,
            nic_only,
        }) => run_qemu_args(&config, (!nic_only).then_some(memory.as_str()), shell),
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
        pf: None,
        vf: None,
        uplink: (!a.uplink.is_empty()).then(|| a.uplink.clone()),
    };
    Config::resolve(file.overlay(flags))
}

fn run_qemu_args(a: &ConfigArgs, memory: Option<&str>, shell: bool) -> ExitCode {
    let cfg = match load_config(a) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    let args = match memory
        .map(qemu::parse_mib)
        .transpose()
        .and_then(|m| qemu::args(&cfg, m))
    {
        Ok(a) => a,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    if shell {
        let line: Vec<String> = args.iter().map(|s| qemu::shell_quote(s)).collect();
        println!("{}", line.join(" "));
    } else {
        for s in args {
            println!("{s}");
        }
    }
    ExitCode::SUCCESS
}

fn run_daemon(a: &ConfigArgs, ready_file: Option<&Path>) -> ExitCode {
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
    let mut listeners = match server::bind_all(&paths) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_BAD_INPUT, &e),
    };
    // Uplink stream sockets: claimed and bound as the partitions' are.
    let stream_paths = uplinks::socket_paths(&cfg.uplinks);
    let stream_listeners = match server::bind_all(&stream_paths) {
        Ok(l) => l,
        Err(e) => {
            server::remove_all(&paths);
            return fail(EXIT_BAD_INPUT, &e);
        }
    };
    paths.extend(stream_paths);
    // From here on, a failed start takes its sockets with it.
    let abort = |code: u8, msg: &dyn std::fmt::Display| {
        server::remove_all(&paths);
        fail(code, msg)
    };
    let Some(control) = listeners.pop() else {
        return abort(1, &"no control socket bound");
    };

    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => return abort(1, &format!("cannot install signal handlers: {e}")),
    };
    let poller = match cfg.poll_us {
        0 => None,
        us => match Poller::spawn(std::time::Duration::from_micros(u64::from(us))) {
            Ok(p) => Some(p),
            Err(e) => return abort(1, &format!("cannot start the polling thread: {e}")),
        },
    };
    if let Err(e) = uplinks::start(&switch, &cfg.uplinks, stream_listeners) {
        return abort(EXIT_BAD_INPUT, &e);
    }
    for (p, l) in switch.partitions().iter().zip(listeners) {
        if let Err(e) = server::spawn_partition(p.clone(), switch.clone(), poller.clone(), l) {
            return abort(1, &format!("cannot start thread for {}: {e}", p.name()));
        }
    }
    let info = control::DaemonInfo {
        socket_dir: cfg.socket_dir.clone(),
        poll_us: cfg.poll_us,
    };
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

    let sig = signals.forever().next();
    log::info!("signal {sig:?}: shutting down");
    server::remove_all(&paths);
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
