//! The daemon binary's start-up contract: clear errors with exit status 2 for bad input, nothing
//! left half-started, stale sockets replaced, live ones refused.

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sriov-net-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin()
        .arg("--socket-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn assert_bad_input(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn bad_settings_exit_2_naming_the_field_and_leave_no_sockets() {
    let d = tmpdir("bad");
    assert_bad_input(&run(&["--vfs", "0"], &d), "vfs: 0 is out of range");
    assert_bad_input(&run(&["--vfs", "300"], &d), "vfs: 300 is out of range");
    assert_bad_input(&run(&["--base-mac", "01:00:00:00:00:00"], &d), "base_mac:");
    assert_bad_input(&run(&["--base-mac", "zz"], &d), "invalid MAC address");
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, "vfs = 2\n[vf.1]\nmac = \"02:53:52:00:00:00\"\n").unwrap();
    assert_bad_input(
        &run(&["--config", cfg.to_str().unwrap()], &d),
        "vf.1.mac: 02:53:52:00:00:00 is already used by pf",
    );
    std::fs::write(&cfg, "vfs = 2\nturbo = true\n").unwrap();
    assert_bad_input(
        &run(&["--config", cfg.to_str().unwrap()], &d),
        "unknown field `turbo`",
    );
    assert_bad_input(
        &run(&["--config", "/nonexistent/x.toml"], &d),
        "cannot read config file /nonexistent/x.toml",
    );
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(leftovers.is_empty(), "nothing half-started");
}

#[test]
fn unwritable_socket_dir_is_refused() {
    let out = run(&[], Path::new("/proc/sriov-net-no-such-dir"));
    assert_bad_input(&out, "socket directory /proc/sriov-net-no-such-dir");
}

#[test]
fn live_socket_is_refused_and_nothing_else_is_bound() {
    let d = tmpdir("live");
    let _held = UnixListener::bind(d.join("vf1.sock")).unwrap();
    let out = run(&["--vfs", "2"], &d);
    assert_bad_input(&out, "vf1.sock is in use by a live process");
    assert!(!d.join("pf.sock").exists() && !d.join("vf0.sock").exists());
}

#[test]
fn stale_sockets_from_a_dead_daemon_are_replaced() {
    let d = tmpdir("stale");
    let start = || {
        let _ = std::fs::remove_file(d.join("ready"));
        let child = bin()
            .arg("--socket-dir")
            .arg(&d)
            .args(["--vfs", "1", "--ready-file"])
            .arg(d.join("ready"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        common::wait_for(
            std::time::Duration::from_secs(10),
            || d.join("ready").exists(),
            "ready",
        );
        child
    };
    let mut first = start();
    // SIGKILL, like a crash: the socket files stay behind with nobody listening.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(d.join("pf.sock").exists() && d.join("vf0.sock").exists());
    let mut second = start();
    assert!(std::os::unix::net::UnixStream::connect(d.join("control.sock")).is_ok());
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn qemu_args_and_ctl_report_errors_clearly() {
    let out = bin()
        .args(["qemu-args", "--memory", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory \"lots\""));
    let out = bin()
        .args(["ctl", "--socket-dir", "/nonexistent", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot connect to /nonexistent/control.sock"));
}

fn one_line_exit_2(args: &[&str], needle: &str) {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_command_lines_get_one_error_line_and_exit_2() {
    one_line_exit_2(&["--frobnicate"], "unexpected argument '--frobnicate'");
    one_line_exit_2(&["--vfs", "many"], "invalid value 'many' for '--vfs");
    one_line_exit_2(&["--base-mac", "zz"], "invalid MAC address");
    one_line_exit_2(
        &["ctl"],
        "a subcommand is missing; usage: vhost-user-sriov-net ctl",
    );
    one_line_exit_2(
        &["qemu-args", "--libvirt", "--shell"],
        "cannot be used with",
    );
    one_line_exit_2(
        &["qemu-args", "--nic-only", "--libvirt"],
        "cannot be used with",
    );
    one_line_exit_2(&["bogus-subcommand"], "bogus-subcommand");
    // Help and version stay as clap prints them: several lines on stdout, exit status 0.
    for a in ["--help", "-h", "--version"] {
        let out = bin().arg(a).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{a}");
        assert!(out.stderr.is_empty(), "{a}");
        assert!(!out.stdout.is_empty(), "{a}");
    }
    let help = bin().args(["qemu-args", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).lines().count() > 10);
}

#[test]
fn shutdown_log_names_the_signal() {
    let d = tmpdir("sigterm");
    let log = d.join("daemon.log");
    let mut child = bin()
        .arg("--socket-dir")
        .arg(&d)
        .args(["--vfs", "1", "--ready-file"])
        .arg(d.join("ready"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_for(
        std::time::Duration::from_secs(10),
        || d.join("ready").exists(),
        "ready",
    );
    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGTERM: shutting down"), "{text}");
    assert!(!text.contains("Some("), "{text}");
}

#[test]
fn committed_libvirt_snippet_is_the_generators_output_on_the_default_config() {
    let out = bin().args(["qemu-args", "--libvirt"]).output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu/libvirt-snippet.xml"),
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "qemu/libvirt-snippet.xml is stale: regenerate it with \
         `vhost-user-sriov-net qemu-args --libvirt > qemu/libvirt-snippet.xml`"
    );
}

#[test]
fn qemu_args_asks_for_the_vcpus_64_vfs_need() {
    let out = bin().args(["qemu-args", "--vfs", "64"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let i = lines.iter().position(|l| *l == "-smp").unwrap();
    assert_eq!(lines[i + 1], "2");
    let out = bin()
        .args(["qemu-args", "--vfs", "64", "--nic-only"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("-smp"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 2 vCPUs"));
    let out = bin()
        .args(["qemu-args", "--vfs", "4", "--nic-only"])
        .output()
        .unwrap();
    assert!(out.stderr.is_empty());
}
