#!/usr/bin/env python3
"""Host side of the guest checkpoint channel (used by scripts/e2e.sh; stdlib only).

The guest's second serial port (ttyS1) is a QEMU `-chardev socket` client connected to the Unix
socket this helper listens on. Protocol, one line each way:

    guest -> host   SNAP <name>          (name: [A-Za-z0-9._-]+)
    host -> guest   ACK <name>           snapshot saved as <results>/snap-<name>.json
                    NAK <name> <reason>  snapshot failed (the guest goes on; the check reports it)
    guest -> host   CTL <name> <words>   run `<daemon> ctl --socket-dir DIR <words>` (the operator's
                                         side of an admin scenario; words: [A-Za-z0-9._:]+)
    host -> guest   ACK <name> / NAK <name> <reason>, as for SNAP
    guest -> host   RESTART <name>       kill -9 the daemon (the PID in its ready file) and start
                                         the same command again (--daemon-cmd), its output
                                         appended to --daemon-log
    host -> guest   ACK <name>           once the new daemon's ready file names it
                    NAK <name> <reason>  it could not be killed, or the new one did not get ready

For every SNAP the helper runs `<daemon> ctl --socket-dir DIR show -j` and saves its JSON output
(checked to parse) atomically. With --standin there is no daemon: every SNAP and RESTART is
acknowledged without doing anything. The guest blocks until it gets its answer, so the daemon's
counters are read while the guest is quiet, however slow the guest is under TCG.

A restarted daemon is not the child of scripts/e2e.sh, and it outlives this helper (which exits with
QEMU), so it runs under a small `sh` launcher in a session of its own, which writes its exit status
to daemon-<pid>.exit next to --daemon-cmd; e2e.sh reads that after stopping it. Each restart is
recorded in <results>/restart-<name>.json (old and new PID, how long after the kill the old one was
dead and the new one ready), and <results>/daemons.json lists each daemon (PID) with the snapshots
taken while it ran: counters start from zero in a new daemon, so scripts/e2e_check.py never compares
snapshots of different daemons.

The helper listens before QEMU starts (QEMU connects at start-up and fails if nobody listens), so no
guest output can be lost. It exits when QEMU closes the connection.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

SNAP_RE = re.compile(rb"SNAP ([A-Za-z0-9._-]{1,64})\s*$")
CTL_RE = re.compile(rb"CTL ([A-Za-z0-9._-]{1,64})((?: [A-Za-z0-9._:]{1,32}){1,24})\s*$")
RESTART_RE = re.compile(rb"RESTART ([A-Za-z0-9._-]{1,64})\s*$")
T0 = time.monotonic()
# The restarted daemon's launcher: runs the command, then writes its exit status to
# DIR/daemon-<pid>.exit (the async list's PID is the daemon's: env and setpriv exec).
LAUNCHER = 'd=$1; shift; "$@" & p=$!; wait "$p"; echo "$?" >"$d/daemon-$p.exit"'


def log(msg):
    print(f"[sync +{time.monotonic() - T0:7.2f}s] {msg}", flush=True)


def ctl(args, words):
    """Run `<daemon> ctl --socket-dir DIR <words>`; returns (stdout, None) or (None, reason)."""
    cmd = [args.ctl, "ctl", "--socket-dir", args.socket_dir] + words
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=args.ctl_timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"ctl timed out after {args.ctl_timeout}s"
    except OSError as err:
        return None, f"cannot run ctl: {err}"
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        return None, f"ctl exit {proc.returncode}: {err[-1] if err else ''}"
    return proc.stdout, None


def take_snapshot(args, name):
    """Run ctl show -j and store it; returns None on success or a short reason."""
    if args.standin:
        return None
    out, reason = ctl(args, ["show", "-j"])
    if reason is not None:
        return reason
    try:
        json.loads(out)
    except ValueError as err:
        return f"ctl printed invalid JSON: {err}"
    path = os.path.join(args.results, f"snap-{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, path)
    return None


def read_pid(path):
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def proc_state(pid):
    """The state letter of PID ("Z": a zombie, dead but not reaped), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:][:1].decode()


def running(pid):
    return pid is not None and proc_state(pid) not in (None, "Z")


def dead(pid):
    """PID and all its threads have exited, so its sockets are closed: it is gone, or a zombie
    with no thread left but the leader (the leader of a killed process can be a zombie while its
    other threads are still exiting)."""
    state = proc_state(pid)
    if state is None:
        return True
    if state != "Z":
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


class Daemons:
    """Which daemon (PID) answered which snapshot: <results>/daemons.json."""

    def __init__(self, args):
        self.path = os.path.join(args.results, "daemons.json")
        first = read_pid(args.daemon_ready) if args.daemon_ready else None
        self.runs = [{"pid": first, "snapshots": []}]
        self.save()

    def snapshot(self, name):
        for run in self.runs:
            if name in run["snapshots"]:
                run["snapshots"].remove(name)
        self.runs[-1]["snapshots"].append(name)
        self.save()

    def restarted(self, info):
        self.runs.append({"pid": info["new_pid"], "restart": info["name"], "snapshots": []})
        self.save()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"daemons": self.runs}, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.path)


def wait_until(cond, timeout):
    """Poll COND every 5 ms for up to TIMEOUT s; returns whether it came true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def restart_daemon(args, name):
    """kill -9 the daemon and start it again; returns (record, None) or (None, reason)."""
    old = read_pid(args.daemon_ready)
    if not running(old):
        return None, f"no running daemon in {args.daemon_ready} (PID {old})"
    with open(args.daemon_cmd, "rb") as f:
        cmd = f.read().split(b"\0")[:-1]
    if not cmd:
        return None, f"no command in {args.daemon_cmd}"
    t_kill = time.monotonic()
    os.kill(old, signal.SIGKILL)
    if not wait_until(lambda: dead(old), 10):
        return None, f"daemon PID {old} still running 10s after SIGKILL"
    t_dead = time.monotonic()
    try:
        os.unlink(args.daemon_ready)
    except FileNotFoundError:
        pass
    with open(args.daemon_log, "ab") as log_file:
        log_file.write(f"---- scripts/e2e_sync.py: RESTART {name}: daemon PID {old} killed "
                       "(SIGKILL), the same command started again ----\n".encode())
        log_file.flush()
        launcher = subprocess.Popen(
            ["sh", "-c", LAUNCHER, "e2e-daemon", os.path.dirname(os.path.abspath(args.daemon_cmd))]
            + cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    t_start = time.monotonic()
    new = None

    def ready():
        nonlocal new
        new = read_pid(args.daemon_ready)
        return (new != old and running(new)) or launcher.poll() is not None

    if not wait_until(ready, args.ready_timeout):
        return None, f"the new daemon was not ready within {args.ready_timeout}s"
    if not (new != old and running(new)):
        return None, f"the new daemon exited with status {launcher.returncode} before it was ready"
    t_ready = time.monotonic()

    def after(t):
        return round((t - t_kill) * 1000, 1)

    return {"name": name, "old_pid": old, "new_pid": new, "killed_at_s": round(t_kill - T0, 3),
            "dead_after_ms": after(t_dead), "started_after_ms": after(t_start),
            "ready_after_ms": after(t_ready)}, None


def run_ctl(args, words):
    """Run one ctl command for the guest; returns None on success or a short reason."""
    if args.standin:
        return None
    return ctl(args, words)[1]


def restart(args, daemons, name):
    """Handle RESTART <name>; returns None on success or a short reason."""
    if args.standin:
        log(f"RESTART {name}: acknowledged (stand-in, no daemon)")
        return None
    info, reason = restart_daemon(args, name)
    if reason is not None:
        log(f"RESTART {name}: FAILED: {reason}")
        return reason
    path = os.path.join(args.results, f"restart-{name}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    daemons.restarted(info)
    log(f"RESTART {name}: PID {info['old_pid']} killed, dead after {info['dead_after_ms']} ms; "
        f"PID {info['new_pid']} ready {info['ready_after_ms']} ms after the kill")
    return None


def serve(args, conn):
    buf = b""
    seen = set()
    daemons = Daemons(args) if not args.standin else None
    while True:
        data = conn.recv(4096)
        if not data:
            log("guest side closed (QEMU exited)")
            return
        buf += data
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.replace(b"\r", b"").replace(b"\0", b"")
            c = CTL_RE.search(line)
            if c:
                name, words = c.group(1).decode(), c.group(2).decode().split()
                reason = run_ctl(args, words)
                log(f"CTL {name}: ctl {' '.join(words)}: {'ok' if reason is None else reason}")
                reply = f"ACK {name}\n" if reason is None else f"NAK {name} {reason}\n"
                conn.sendall(reply.encode())
                continue
            r = RESTART_RE.search(line)
            if r:
                name = r.group(1).decode()
                reason = restart(args, daemons, name)
                reply = f"ACK {name}\n" if reason is None else f"NAK {name} {reason}\n"
                conn.sendall(reply.encode())
                continue
            m = SNAP_RE.search(line)
            if not m:
                if line.strip():
                    log(f"ignored line from guest: {line!r}")
                continue
            name = m.group(1).decode()
            if name in seen:
                log(f"SNAP {name} again: overwriting the earlier snapshot")
            seen.add(name)
            t = time.monotonic()
            reason = take_snapshot(args, name)
            if reason is None and daemons is not None:
                daemons.snapshot(name)
            if reason is None:
                log(f"SNAP {name}: saved ({time.monotonic() - t:.2f}s)" if not args.standin
                    else f"SNAP {name}: acknowledged (stand-in, no daemon)")
                reply = f"ACK {name}\n"
            else:
                log(f"SNAP {name}: FAILED: {reason}")
                reply = f"NAK {name} {reason}\n"
            conn.sendall(reply.encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="Unix socket path to listen on")
    ap.add_argument("--ready", help="file to create once listening")
    ap.add_argument("--results", required=True, help="directory for snap-<name>.json")
    ap.add_argument("--ctl", help="daemon binary (runs '<ctl> ctl --socket-dir DIR show -j')")
    ap.add_argument("--socket-dir", help="the daemon's --socket-dir")
    ap.add_argument("--standin", action="store_true", help="no daemon: acknowledge without snapshots")
    ap.add_argument("--daemon-cmd", help="the daemon's command line, NUL-separated (for RESTART)")
    ap.add_argument("--daemon-ready", help="the daemon's --ready-file (for RESTART)")
    ap.add_argument("--daemon-log", help="the daemon's log, appended to by a restarted daemon")
    ap.add_argument("--ready-timeout", type=float, default=30.0,
                    help="seconds a restarted daemon has to get ready")
    ap.add_argument("--ctl-timeout", type=float, default=30.0)
    ap.add_argument("--accept-timeout", type=float, default=600.0)
    args = ap.parse_args()
    if not args.standin and not (args.ctl and args.socket_dir):
        ap.error("--ctl and --socket-dir are required unless --standin")
    if not args.standin and not (args.daemon_cmd and args.daemon_ready and args.daemon_log):
        ap.error("--daemon-cmd, --daemon-ready and --daemon-log are required unless --standin")

    if os.path.exists(args.listen):
        os.unlink(args.listen)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.listen)
    srv.listen(1)
    srv.settimeout(args.accept_timeout)
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(f"{os.getpid()}\n")
    log(f"listening on {args.listen} ({'stand-in' if args.standin else 'daemon'} mode)")
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        log(f"nobody connected within {args.accept_timeout}s")
        return 1
    conn.settimeout(None)
    log("QEMU connected")
    try:
        serve(args, conn)
    except (ConnectionError, OSError) as err:
        log(f"connection error: {err}")
    finally:
        conn.close()
        srv.close()
        try:
            os.unlink(args.listen)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
