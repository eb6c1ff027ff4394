"""Find the batch timeout (and optionally max batch size and worker count) that serves a load best.

    python scripts/tune_timeout.py sweep --model models/heavy.keras \\
        --timeouts 0 2 5 10 20 --users 1 20 100 --duration 30 --target-users 100 --metric avg

`--policies fixed adaptive` also runs the adaptive policy (BATCH_POLICY=adaptive, which has
no timeout) at every load; the plot shows it as one star per load beside the timeouts' curves.

For every setting in the grid it starts a real Gunicorn server on a free port, waits for
`/readyz`, runs the self-checkout Locust load (locustfiles/checkout.py) at each user count
for a fixed time after the ramp-up, and stops the server. It records requests, failures,
average, p50, p95 and p99 response time, throughput and the mean batch size the server
reported; prints a table; writes a CSV and a PNG plot of latency against timeout (one line
per user count); and recommends the setting with the lowest `--metric` at `--target-users`,
printing the environment variables that select it. `--max-batch-sizes 1 32` adds a
"no batching" line (MAX_BATCH_SIZE=1) to compare against.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from scripts.launcher import PROJECT_ROOT, LiveServer

LOCUSTFILE = PROJECT_ROOT / "locustfiles" / "checkout.py"
METRICS = {"avg": "avg_ms", "p95": "p95_ms", "p99": "p99_ms"}
SERVER_START_ESTIMATE_S = 15


@dataclass(frozen=True)
class Setting:
    batch_timeout_ms: float
    max_batch_size: int | None = None
    workers: int | None = None
    batch_policy: str = "fixed"

    def env(self) -> dict[str, str]:
        """The environment variables that select this setting."""
        if self.batch_policy == "fixed":
            env = {"BATCH_POLICY": "fixed", "BATCH_TIMEOUT_MS": f"{self.batch_timeout_ms:g}"}
        else:
            env = {"BATCH_POLICY": self.batch_policy}
        if self.max_batch_size is not None:
            env["MAX_BATCH_SIZE"] = str(self.max_batch_size)
        if self.workers is not None:
            env["WORKERS"] = str(self.workers)
        return env

    def label(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.env().items())


@dataclass(frozen=True)
class SweepRow:
    batch_timeout_ms: float
    max_batch_size: int | None
    workers: int | None
    users: int
    requests: int
    failures: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    mean_batch_size: float
    batch_policy: str = "fixed"

    @property
    def setting(self) -> Setting:
        return Setting(self.batch_timeout_ms, self.max_batch_size, self.workers, self.batch_policy)


def parse_locust_stats(stats_csv: Path) -> dict:
    """The 'Aggregated' row of Locust's `<prefix>_stats.csv` as numbers."""
    with open(stats_csv, newline="") as stream:
        row = next(r for r in csv.DictReader(stream) if r["Name"] == "Aggregated")

    def number(key):
        value = row[key]
        return float(value) if value not in ("", "N/A") else math.nan

    return {
        "requests": int(number("Request Count")),
        "failures": int(number("Failure Count")),
        "avg_ms": number("Average Response Time"),
        "p50_ms": number("50%"),
        "p95_ms": number("95%"),
        "p99_ms": number("99%"),
        "throughput_rps": number("Requests/s"),
    }


def recommend(rows: list[SweepRow], target_users: int, metric: str) -> SweepRow:
    """The row at `target_users` with the lowest metric among those with the fewest failures.

    Raises ValueError if the sweep has no row for `target_users`.
    """
    candidates = [row for row in rows if row.users == target_users and row.requests > 0]
    if not candidates:
        raise ValueError(f"the sweep has no results at {target_users} users")
    fewest_failures = min(row.failures / row.requests for row in candidates)
    reliable = [row for row in candidates if row.failures / row.requests == fewest_failures]
    return min(reliable, key=lambda row: getattr(row, METRICS[metric]))


def write_csv(rows: list[SweepRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=[f.name for f in fields(SweepRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def read_csv(path: Path) -> list[SweepRow]:
    def parse(name, value):
        if name == "batch_policy":
            return value or "fixed"
        if value == "":
            return None
        return float(value) if name.endswith("_ms") or name in ("throughput_rps", "mean_batch_size") else int(value)

    with open(path, newline="") as stream:
        return [SweepRow(**{k: parse(k, v) for k, v in row.items()}) for row in csv.DictReader(stream)]


def plot(rows: list[SweepRow], path: Path, metric: str) -> None:
    """Latency (the chosen metric) against timeout: one colour per user count, one line per other setting.

    Rows without batching (MAX_BATCH_SIZE=1, where the timeout does not matter) are drawn as
    dashed horizontal lines in their user count's colour, so the gain of batching shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    user_counts = sorted({row.users for row in rows})
    colours = {users: plt.get_cmap("tab10")(index % 10) for index, users in enumerate(user_counts)}
    fixed = [row for row in rows if row.batch_policy == "fixed"]
    adaptive = [row for row in rows if row.batch_policy != "fixed"]
    key = lambda row: (row.users, row.max_batch_size or 0, row.workers or 0)  # noqa: E731
    for (users, max_batch, workers), group in itertools.groupby(sorted(fixed, key=key), key=key):
        group = sorted(group, key=lambda row: row.batch_timeout_ms)
        values = [getattr(row, METRICS[metric]) for row in group]
        label = f"{users} users" + (f", {workers} workers" if workers else "")
        if max_batch == 1:
            axes.axhline(statistics.fmean(values), color=colours[users], linestyle="--", label=label + ", no batching")
            continue
        label += f", max batch {max_batch}" if max_batch else ""
        axes.plot([row.batch_timeout_ms for row in group], values, "o-", color=colours[users], label=label)
    if adaptive:
        timeouts = sorted({row.batch_timeout_ms for row in fixed}) or [0.0]
        x_adaptive = timeouts[-1] + max(2.0, 0.15 * (timeouts[-1] - timeouts[0]))
        for row in adaptive:
            axes.plot([x_adaptive], [getattr(row, METRICS[metric])], "*", markersize=14, color=colours[row.users])
        axes.plot([], [], "*", color="grey", markersize=12, label="adaptive policy (one per load)")
        axes.set_xticks([*timeouts, x_adaptive], [f"{t:g}" for t in timeouts] + ["adaptive"])
    axes.set_xlabel("BATCH_TIMEOUT_MS")
    axes.set_ylabel(f"{metric} response time (ms, log scale)")
    axes.set_yscale("log")
    axes.set_title("Self-checkout load: response time against batch timeout")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def format_table(rows: list[SweepRow]) -> str:
    lines = [
        "| setting | users | requests | failures | avg (ms) | p50 (ms) | p95 (ms) | p99 (ms) | req/s | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.setting.label()} | {row.users} | {row.requests} | {row.failures} | {row.avg_ms:.1f} | "
            f"{row.p50_ms:.0f} | {row.p95_ms:.0f} | {row.p99_ms:.0f} | {row.throughput_rps:.1f} | "
            f"{row.mean_batch_size:.2f} |"
        )
    return "\n".join(lines)


class Progress:
    """One line per run, refreshed every second on a terminal: which setting, which load, time left."""

    def __init__(self, runs: int, seconds_per_run: float, settings_count: int):
        self.runs, self.done = runs, 0
        self.seconds_per_run = seconds_per_run
        self.starts_left = settings_count
        self.interactive = sys.stdout.isatty()

    def remaining_s(self, this_run_left_s: float) -> float:
        later_runs = self.runs - self.done - 1
        return this_run_left_s + later_runs * self.seconds_per_run + self.starts_left * SERVER_START_ESTIMATE_S

    def show(self, label: str, run_left_s: float) -> None:
        line = (
            f"[{self.done + 1}/{self.runs}] {label}: {run_left_s:4.0f} s left in this run, "
            f"about {self.remaining_s(run_left_s) / 60:.1f} min left in all"
        )
        if self.interactive:
            print("\r" + line, end="", flush=True)

    def started(self, label: str) -> None:
        if not self.interactive:
            print(f"[{self.done + 1}/{self.runs}] {label} ...", flush=True)

    def finished(self) -> None:
        self.done += 1
        if self.interactive:
            print()


def run_checkout_load(url: str, users: int, duration_s: float, workdir: Path, progress: Progress, label: str) -> dict:
    """Locust headless against `url`; the statistics cover the `duration_s` after the ramp-up."""
    spawn_rate = max(1, min(users, 50))
    ramp_up_s = users / spawn_rate
    prefix = workdir / f"locust-{users}"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "--reset-stats",
        "-u", str(users), "-r", str(spawn_rate), "-t", f"{math.ceil(ramp_up_s + duration_s)}s",
        "--host", url, "--csv", str(prefix), "--batch-report", f"{prefix}-batches.json", "--stop-timeout", "10",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    progress.started(label)
    started = time.monotonic()
    log_path = Path(f"{prefix}.log")
    with open(log_path, "w") as log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) as locust:
        while locust.poll() is None:
            progress.show(label, max(0.0, ramp_up_s + duration_s - (time.monotonic() - started)))
            with contextlib.suppress(subprocess.TimeoutExpired):
                locust.wait(1)
    progress.finished()
    stats_file = Path(f"{prefix}_stats.csv")
    if not stats_file.exists():
        raise RuntimeError(f"locust wrote no statistics (exit {locust.returncode}):\n{log_path.read_text()[-2000:]}")
    stats = parse_locust_stats(stats_file)
    batches = json.loads(Path(f"{prefix}-batches.json").read_text())
    return {**stats, "mean_batch_size": batches["mean_batch_size"]}


def sweep(args) -> list[SweepRow]:
    grid = [
        Setting(timeout, max_batch, workers, policy)
        for max_batch in args.max_batch_sizes or [None]
        for workers in args.workers or [None]
        for policy in args.policies
        # Without batching the timeout is moot, and the adaptive policy has none.
        for timeout in (args.timeouts if max_batch != 1 and policy == "fixed" else args.timeouts[:1])
        if policy == "fixed" or max_batch != 1
    ]
    runs = len(grid) * len(args.users)
    ramp_up_s = sum(users / max(1, min(users, 50)) for users in args.users) / len(args.users)
    progress = Progress(runs, args.duration + ramp_up_s + 2, len(grid))
    rows = []
    for setting in grid:
        env = {"MODEL_PATH": args.model, **setting.env(), **dict(pair.split("=", 1) for pair in args.env)}
        progress.starts_left -= 1
        with tempfile.TemporaryDirectory() as workdir, LiveServer(env) as server:
            for users in args.users:
                label = f"{setting.label()} users={users}"
                measured = run_checkout_load(server.url, users, args.duration, Path(workdir), progress, label)
                rows.append(
                    SweepRow(
                        setting.batch_timeout_ms,
                        setting.max_batch_size,
                        setting.workers,
                        users,
                        **measured,
                        batch_policy=setting.batch_policy,
                    )
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("sweep", help="run the grid and report")
    run.add_argument("--model", default=os.environ.get("MODEL_PATH", "models/digits.keras"))
    run.add_argument("--timeouts", type=float, nargs="+", default=[0, 1, 2, 5, 10, 20, 50], help="BATCH_TIMEOUT_MS")
    run.add_argument("--max-batch-sizes", type=int, nargs="*", help="MAX_BATCH_SIZE values (1 means no batching)")
    run.add_argument("--workers", type=int, nargs="*", help="WORKERS values (default: the planner's choice)")
    run.add_argument("--policies", nargs="+", choices=["fixed", "adaptive"], default=["fixed"], help="BATCH_POLICY")
    run.add_argument("--users", type=int, nargs="+", default=[1, 20, 100], help="simulated checkout machines")
    run.add_argument("--duration", type=float, default=30, help="seconds measured per load, after ramp-up")
    run.add_argument("--target-users", type=int, help="recommend for this load (default: the largest)")
    run.add_argument("--metric", choices=sorted(METRICS), default="avg")
    run.add_argument("--env", nargs="*", default=[], help="extra server settings, NAME=VALUE")
    run.add_argument("--out", type=Path, default=Path("out/sweep"), help="prefix of the CSV and PNG written")
    report = commands.add_parser("report", help="table, plot and recommendation from a sweep's CSV")
    report.add_argument("csv", type=Path)
    report.add_argument("--target-users", type=int)
    report.add_argument("--metric", choices=sorted(METRICS), default="avg")
    report.add_argument("--out", type=Path, help="prefix of the PNG written (default: the CSV's)")
    args = parser.parse_args()

    if args.command == "sweep":
        rows = sweep(args)
        write_csv(rows, args.out.with_suffix(".csv"))
        out = args.out
    else:
        rows = read_csv(args.csv)
        out = args.out or args.csv.with_suffix("")
    plot(rows, out.with_suffix(".png"), args.metric)
    target_users = args.target_users or max(row.users for row in rows)
    best = recommend(rows, target_users, args.metric)
    print(format_table(rows))
    print(f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    print(
        f"best for {target_users} users by {args.metric}: {best.setting.label()} "
        f"({getattr(best, METRICS[args.metric]):.1f} ms, {best.failures} failures of {best.requests})"
    )
    print("use it with:\n  " + " ".join(f"{name}={value}" for name, value in best.setting.env().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
