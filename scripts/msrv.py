#!/usr/bin/env python3
"""Checks the workspace's declared MSRV (`rust-version` in Cargo.toml) against Cargo.lock.

Every package the lock file resolves for x86_64 Linux (normal, build and dev dependencies) that
declares a `rust-version` must declare one no newer than ours. Ours is the real minimum when it
equals the newest of them; a higher one is reported (it may be stale, or our own code may need
it). Packages that declare none are listed: their minimum is not checked. Needs cargo and
python3, no other toolchain.

Exit status: 1 if a locked dependency needs a newer Rust than ours, else 0.
"""
import json
import os
import subprocess
import sys


def ver(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked",
           "--filter-platform", "x86_64-unknown-linux-gnu",
           "--manifest-path", os.path.join(root, "Cargo.toml")]
    meta = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    resolved = {n["id"] for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    ours = {p["name"]: p["rust_version"] for p in meta["packages"] if p["id"] in members}
    if None in ours.values() or len(set(ours.values())) != 1:
        print(f"msrv: workspace members must all declare the same rust-version: {ours}")
        return 1
    msrv = next(iter(ours.values()))
    deps = [p for p in meta["packages"] if p["id"] in resolved and p["id"] not in members]
    declared = sorted((p for p in deps if p["rust_version"]), key=lambda p: ver(p["rust_version"]))
    undeclared = sorted(f"{p['name']} {p['version']}" for p in deps if not p["rust_version"])
    too_new = [p for p in declared if ver(p["rust_version"]) > ver(msrv)]
    for p in too_new:
        print(f"msrv: {p['name']} {p['version']} needs rust {p['rust_version']}, "
              f"but Cargo.toml says rust-version = \"{msrv}\"")
    newest = declared[-1] if declared else None
    print(f"msrv: rust-version = {msrv}; {len(declared)} locked dependencies declare one, newest "
          f"{newest['name']} {newest['version']} ({newest['rust_version']})" if newest else
          f"msrv: rust-version = {msrv}; no dependency declares one")
    print(f"msrv: {len(undeclared)} declare none (not checked): {', '.join(undeclared)}")
    if newest and ver(newest["rust_version"]) < ver(msrv):
        print(f"msrv: note: no locked dependency needs {msrv}; {newest['rust_version']} would "
              f"do unless our own code needs more")
    return 1 if too_new else 0


if __name__ == "__main__":
    sys.exit(main())
