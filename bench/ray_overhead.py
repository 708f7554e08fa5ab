"""What each Ray Serve ingress costs per request, and what a second replica buys, with a model of no cost.

The same app and stand-in model as bench/overhead.py (open_clip's tokenizer, a fixed vector at once), so
what is measured is the path around the model: the plain server (`create_app` under uvicorn, one process)
against the same app deployed from deploy/ray/serve-cpu.yaml on a local Ray cluster on 127.0.0.1 whose
nodes are set as app.serve.node says, once per ingress, side by side (docs/scaling-out.md#choosing-the-ingress):

- `proxy`: Serve's Python HTTP proxy (Ray's default: `RAY_SERVE_ENABLE_HA_PROXY=0`);
- `haproxy`: HAProxy in front of the replicas' own HTTP ports (the service's default);
- `direct`: the clients straight to the replicas' own ports, split evenly, no balancer at all
  (`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`): the floor any ingress can reach.

Each Ray arm runs in a child process of its own (Ray reads these switches when it starts). Loads: captions
and single tiny images (64x48 JPEGs from a local static server) at one client (what each request pays)
and at 16 (throughput), on one replica, then on two. Each load runs against the plain server first, then
against the arm: every ratio compares figures measured seconds apart in the same run. Also printed: the
CPU each request costs the serving processes (the plain server; the replicas; HAProxy or the Python
proxy), from /proc. Figures go to bench/README.md. 127.0.0.1 only; Linux; do not run it beside other
heavy work (the machine's cores are shared by every process measured).

`--plot PATH` also draws the caption loads (items/s and p50 against clients: the plain server, each arm
on 1 and 2 replicas) into a PNG.

Usage: python -m bench.ray_overhead [--duration 8] [--arms proxy,haproxy,direct] [--plot ray.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from app.serve.node import node_env
from bench.overhead import SERVER_ENV, tiny_photos
from bench.plot import Panel, machine_note, sweep_figure
from bench.procs import cpu_seconds
from scripts.procs import free_port, spawn, stop, wait_healthy

if TYPE_CHECKING:
    from ray.serve import Application

APP_ENV = SERVER_ENV | {"HF_HUB_OFFLINE": "1"}
# Each arm's switches over every node's (app.serve.node), for Ray's own processes.
ARMS: dict[str, dict[str, str]] = {
    "proxy": {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
    "haproxy": {},
    "direct": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},
}
# The processes an arm's requests cross besides the replicas, by their command line.
INGRESS_PROCESS = {"proxy": "ray::ProxyActor", "haproxy": "haproxy", "direct": None}
# (kind, clients) on one replica, then on two.
LOADS = [("text", 1), ("image", 1), ("text", 16), ("image", 16)]
SCALING_LOADS = [("text", 16), ("image", 16)]
# issue 27's targets: (replicas, kind, clients, measure, bound).
TARGETS = [(2, "image", 16, "ratio", 0.8), (2, "text", 16, "ratio", 0.6), (1, "text", 1, "p50 diff ms", 2.0)]
Figures = dict[str, float]
Row = tuple[str, int, str, int, Figures, Figures]  # arm, replicas, kind, clients, plain, arm


def descendants(pid: int) -> dict[int, str]:
    """Return the processes under `pid` (Ray's, started by this one) with their command lines."""
    parents: dict[int, int] = {}
    lines: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child = int(stat.parent.name)
            parents[child] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            lines[child] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = lines[child]
                frontier.append(child)
    return found


def cpu_of(pids: list[int]) -> float:
    """Return the CPU seconds of the processes still alive among `pids`."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def load(
    bases: list[str], kind: str, clients: int, duration: float, photos: str, groups: dict[str, list[int]]
) -> Figures:
    """Run bench.load against `bases` (clients split evenly); return items/s, p50, p99, errors and the CPU µs
    per item of each group of processes."""
    command = [sys.executable, "-m", "bench.load", "--json", "--server", ",".join(bases), "--kind", kind]
    command += ["-c", str(clients), "--duration", str(duration), "--photos", photos, "--glob", "*.jpg"]
    before = {name: cpu_of(pids) for name, pids in groups.items()}
    out = subprocess.run(command, env=os.environ | APP_ENV, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    items = max(1.0, result["items_per_s"] * result["seconds"])
    cpu = {f"{name} us": (cpu_of(pids) - before[name]) / items * 1e6 for name, pids in groups.items()}
    return (
        {k: result[k] for k in ("items_per_s", "p50_ms", "p99_ms")} | {"errors": sum(result["errors"].values())} | cpu
    )


@contextmanager
def plain_server() -> Iterator[tuple[str, int]]:
    """The stand-in app under uvicorn in a child process (bench/overhead.py's server): its URL and pid."""
    port = free_port()
    server = spawn(["-m", "bench.overhead", "--serve", str(port)], os.environ | APP_ENV)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", time.monotonic() + 120, server)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        stop(server)


def sweep_panels(rows: list[Row], kind: str = "text") -> tuple[Panel, Panel]:
    """Return the plot's panels: items/s and p50 against clients for `kind`, one line per arm and replica
    count, and one for the plain server (the mean of its loads beside the arms')."""
    rate, p50 = Panel(f"{kind}s/s"), Panel("p50 ms")
    plain: dict[int, list[Figures]] = {}
    for arm, replicas, row_kind, clients, before, figures in rows:
        if row_kind == kind:
            plain.setdefault(clients, []).append(before)
            rate.add(f"{arm}, {replicas} replica(s)", clients, figures["items_per_s"])
            p50.add(f"{arm}, {replicas} replica(s)", clients, figures["p50_ms"])
    for clients, runs in sorted(plain.items()):
        rate.add("plain", clients, sum(r["items_per_s"] for r in runs) / len(runs))
        p50.add("plain", clients, sum(r["p50_ms"] for r in runs) / len(runs))
    return rate, p50


def _stand_in(settings: object) -> object:
    from bench.overhead import StandIn

    return StandIn()


def stand_in(args: dict[str, str]) -> Application:
    """Build the service's deployment with the stand-in model (the application builder the arms deploy)."""
    from app.serve.deployment import deployment

    return deployment.bind(_stand_in)


def run_ray_arm(arm: str, plain: str, plain_pid: int, duration: float, photos: str) -> list[Row]:
    """Deploy the stand-in with `arm`'s ingress; load it on 1 then 2 replicas, each load after the plain server's."""
    from tests.support.ray_serve import deploy, local_cluster, replica_bases

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as ray_dir, local_cluster(APP_ENV, Path(ray_dir), ray_env=ARMS[arm]) as cluster:
        for replicas in (1, 2):
            deploy(cluster, import_path="bench.ray_overhead:stand_in", num_replicas=replicas, autoscaling_config=None)
            bases = replica_bases() if arm == "direct" else [cluster.base]
            for kind, clients in LOADS if replicas == 1 else SCALING_LOADS:
                before = load([plain], kind, clients, duration, photos, {"server": [plain_pid]})
                figures = load(bases, kind, clients, duration, photos, serving_processes(arm))
                rows.append((arm, replicas, kind, clients, before, figures))
    return rows


def serving_processes(arm: str) -> dict[str, list[int]]:
    """Return the pids of this cluster's replicas and of `arm`'s ingress processes (HAProxy's change on reloads)."""
    processes = descendants(os.getpid())
    groups = {"replicas": [p for p, line in processes.items() if "ServeReplica:clip" in line]}
    if (name := INGRESS_PROCESS[arm]) is not None:
        groups["ingress"] = [p for p, line in processes.items() if line.split(" ", 1)[0].endswith(name)]
    return groups


def run_arm_in_child(arm: str, plain: tuple[str, int], duration: float, photos: str) -> list[Row]:
    """Run one Ray arm in a fresh process: Ray reads its switches from the environment when it starts."""
    command = [sys.executable, "-m", "bench.ray_overhead", "--child", arm, "--plain", plain[0]]
    command += ["--plain-pid", str(plain[1]), "--duration", str(duration), "--photos", photos]
    env = os.environ | node_env() | ARMS[arm]
    out = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {arm} arm failed:\n{out.stderr[-4000:]}")
    return [tuple(row) for row in json.loads(out.stdout.splitlines()[-1])]  # type: ignore[misc]


def print_tables(rows: list[Row]) -> None:
    """Print every arm side by side with the plain server measured just before each of its loads, then the targets."""
    print(
        "arm      replicas load  clients | items/s: plain    arm ratio | p50 ms: plain    arm   diff | arm p99 errors",
        end="",
    )
    print(" | CPU us/item: plain replicas ingress")
    measures: dict[tuple[str, int, str, int], dict[str, float]] = {}
    for arm, replicas, kind, clients, plain, r in rows:
        ratio, diff = r["items_per_s"] / plain["items_per_s"], r["p50_ms"] - plain["p50_ms"]
        measures[(arm, replicas, kind, clients)] = {"ratio": ratio, "p50 diff ms": diff}
        ingress = f"{r['ingress us']:8.0f}" if "ingress us" in r else "       -"
        print(
            f"{arm:8s} {replicas:8d} {kind:5s} {clients:7d} | {plain['items_per_s']:14.0f} {r['items_per_s']:6.0f}",
            end="",
        )
        print(f" {ratio:5.2f} | {plain['p50_ms']:13.1f} {r['p50_ms']:6.1f} {diff:+6.1f} | {r['p99_ms']:7.1f}", end="")
        print(f" {r['errors'] + plain['errors']:6.0f} | {plain['server us']:18.0f} {r['replicas us']:8.0f} {ingress}")
    print("\ntargets (issue 27)")
    for replicas, kind, clients, measure, bound in TARGETS:
        cells = []
        for arm in dict.fromkeys(row[0] for row in rows):
            value = measures[(arm, replicas, kind, clients)][measure]
            met = value >= bound if measure == "ratio" else value <= bound
            cells.append(f"{arm} {value:.2f} {'met' if met else 'missed'}")
        what = f"{kind} C{clients}, {replicas} replica(s), {measure} ({'>=' if measure == 'ratio' else '<='} {bound})"
        print(f"  {what:44s} " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, among " + ", ".join(ARMS))
    parser.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--plain", help=argparse.SUPPRESS)
    parser.add_argument("--plain-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    parser.add_argument("--plot", type=Path, help="also draw the caption loads into this PNG")
    args = parser.parse_args()
    if not 1 <= args.duration <= 120:
        raise SystemExit("duration must be 1..120 s")
    if args.child:
        print(json.dumps(run_ray_arm(args.child, args.plain, args.plain_pid, args.duration, args.photos)))
        return
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arms {sorted(unknown)}: choose among {', '.join(ARMS)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as photos, plain_server() as plain:
        tiny_photos(photos)
        for arm in (a for a in ARMS if a in arms):
            rows += run_arm_in_child(arm, plain, args.duration, photos)
    print_tables(rows)
    if args.plot:
        title = "bench.ray_overhead: captions, stand-in model, plain server and each Serve ingress"
        note = f"{args.duration:g} s per load; {machine_note()}"
        print(f"plot: {sweep_figure(args.plot, title, 'clients', sweep_panels(rows), note, log_x=True)}")


if __name__ == "__main__":
    main()
