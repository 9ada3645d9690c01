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

For every SNAP the helper runs `<daemon> ctl --socket-dir DIR show -j` and saves its JSON output
(checked to parse) atomically. With --standin there is no daemon: every SNAP is acknowledged without
a snapshot. The guest blocks until it gets its answer, so the daemon's counters are read while the
guest is quiet, however slow the guest is under TCG.

The helper listens before QEMU starts (QEMU connects at start-up and fails if nobody listens), so no
guest output can be lost. It exits when QEMU closes the connection.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

SNAP_RE = re.compile(rb"SNAP ([A-Za-z0-9._-]{1,64})\s*$")
CTL_RE = re.compile(rb"CTL ([A-Za-z0-9._-]{1,64})((?: [A-Za-z0-9._:]{1,32}){1,24})\s*$")
T0 = time.monotonic()


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


def run_ctl(args, words):
    """Run one ctl command for the guest; returns None on success or a short reason."""
    if args.standin:
        return None
    return ctl(args, words)[1]


def serve(args, conn):
    buf = b""
    seen = set()
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
    ap.add_argument("--ctl-timeout", type=float, default=30.0)
    ap.add_argument("--accept-timeout", type=float, default=600.0)
    args = ap.parse_args()
    if not args.standin and not (args.ctl and args.socket_dir):
        ap.error("--ctl and --socket-dir are required unless --standin")

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
