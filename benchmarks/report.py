"""Turns the raw runs of ``benchmarks/run.py`` into ``latest.{json,md,png}``.

Every metric is summarised per system as the median over the repeats with the min-max spread. The
ratio columns compare medians so that a ratio above 1 always means *better* than the reference:
``value / reference`` for throughputs, ``reference / value`` for times, latencies, CPU and memory.
The reference is the best *peer* (arq, saq, taskiq, streaq: never vecna nor the floor loops), and,
in a second column, the at-least-once floor loop ``bare-alo``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLOOR_REF = "bare-alo"
DASH = "\u2013"  # en dash
TIMES = "\u00d7"  # multiplication sign


@dataclass(frozen=True)
class Metric:
    key: str  # id in latest.json
    workload: str
    field: str
    short: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 0


METRICS = [
    Metric("drain_tps", "drain", "per_second", "(a) drain",
           "(a) drain: 1 worker empties a full queue", "tasks/s", True),
    Metric("concurrent_tps", "concurrent", "per_second", "(b) concurrent",
           "(b) concurrent: producer and worker together", "tasks/s", True),
    Metric("roundtrip_p50", "roundtrip", "p50_ms", "(c) round trip p50",
           "(c) round trip p50 (send + await result)", "ms", False, 2),
    Metric("roundtrip_p99", "roundtrip", "p99_ms", "(c) round trip p99", "(c) round trip p99",
           "ms", False, 2),
    Metric("pickup_p50", "pickup", "p50_ms", "(d) pickup p50",
           "(d) pickup latency p50 (enqueue to task start)", "ms", False, 2),
    Metric("pickup_p99", "pickup", "p99_ms", "(d) pickup p99", "(d) pickup latency p99", "ms",
           False, 2),
    Metric("sleep_seconds", "sleep", "seconds", "(e) sleep-bound",
           "(e) sleep-bound: tasks of asyncio.sleep(0.1) at concurrency 100", "s", False, 2),
    Metric("cpu_per_task", "drain", "cpu_us_per_task", "(f) worker CPU/task",
           "(f) worker CPU per task (in drain)", "µs", False),
    Metric("redis_cpu_per_task", "drain", "redis_cpu_us_per_task", "(f) Redis CPU/task",
           "(f) redis-server CPU per task (in drain)", "µs", False),
    Metric("rss_peak", "drain", "rss_peak_mib", "(g) peak RSS", "(g) worker peak RSS (in drain)",
           "MiB", False, 1),
    Metric("rss_ready", "drain", "rss_ready_mib", "(g) idle RSS",
           "(g) worker RSS when ready (idle)", "MiB", False, 1),
    Metric("enqueue_single", "enqueue", "single_per_second", "(h) enqueue, single",
           "(h) enqueue throughput, one awaited send at a time", "tasks/s", True),
    Metric("enqueue_batch", "enqueue", "batch_per_second", "(h) enqueue, batched",
           "(h) enqueue throughput, batches of 100", "tasks/s", True),
]  # fmt: skip


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _ratio(value: float, ref: float, higher_is_better: bool) -> float:
    if not value or not ref or math.isnan(value) or math.isnan(ref):
        return float("nan")
    return value / ref if higher_is_better else ref / value


def build(
    config: dict[str, Any],
    facts: dict[str, Any],
    systems: dict[str, dict[str, Any]],
    runs: list[dict[str, Any]],
    redis_benchmark: dict[str, Any],
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for m in METRICS:
        if m.workload not in config["workloads"]:
            continue
        per_system: dict[str, Any] = {}
        for name in systems:
            values = [
                float(r["metrics"][m.field])
                for r in runs
                if r["ok"] and r["system"] == name and r["workload"] == m.workload
                and m.field in r["metrics"]
            ]  # fmt: skip
            s = _summary(values)
            if s is not None:
                per_system[name] = s
        peers = {n: s for n, s in per_system.items() if systems[n]["role"] == "peer"}
        best = None
        if peers:
            pick = max if m.higher_is_better else min
            best = pick(peers, key=lambda n: peers[n]["median"])
        floor = per_system.get(FLOOR_REF)
        for s in per_system.values():
            s["vs_best_peer"] = (
                _ratio(s["median"], peers[best]["median"], m.higher_is_better) if best else None
            )
            s["vs_floor"] = (
                _ratio(s["median"], floor["median"], m.higher_is_better) if floor else None
            )
        summary[m.key] = {
            "title": m.title,
            "unit": m.unit,
            "higher_is_better": m.higher_is_better,
            "best_peer": best,
            "systems": per_system,
        }
    return {
        "config": config,
        "machine": facts,
        "systems": systems,
        "summary": summary,
        "redis_benchmark": redis_benchmark,
        "runs": runs,
    }


def _fmt(v: float | None, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{v:,.{digits}f}"


def _fmt_ratio(v: float | None) -> str:
    if v is None or math.isnan(v):
        return DASH
    return f"{v:.2f}{TIMES}"


def markdown(data: dict[str, Any]) -> str:
    cfg, facts, systems, summary = (
        data["config"], data["machine"], data["systems"], data["summary"]
    )  # fmt: skip
    out: list[str] = []
    add = out.append
    add("# vecna_async vs arq, saq, taskiq, streaq\n")
    add(
        f"{facts['date_utc']} · {cfg['repeats']} repeat(s)"
        f"{' · **--quick** (smoke sizes)' if cfg['quick'] else ''} · "
        f"{cfg['total_minutes']} min · `python benchmarks/run.py {' '.join(cfg['argv'])}`\n"
    )
    add(
        "Each cell is the **median** over the repeats, with the min-max spread. The ratio "
        "columns compare medians and are oriented so that **> 1 means better** than the "
        "reference (faster, lower latency, less CPU or memory): *vs best peer* is against the "
        "best of arq, saq, taskiq and streaq for that row (vecna and the floor loops are never "
        "the reference); *vs floor* is against `bare-alo`, the framework-free at-least-once "
        "loop. Rows marked *floor* are not competitors: they show what Redis and Python allow.\n"
    )

    add("## Summary\n")
    names = list(systems)
    add("| metric | best peer | " + " | ".join(names) + " |")
    add("|---|---|" + "---|" * len(names))
    for key, row in summary.items():
        m = next(x for x in METRICS if x.key == key)
        best = row["best_peer"]
        best_val = row["systems"][best]["median"] if best else None
        cells = []
        for n in names:
            s = row["systems"].get(n)
            if s is None:
                cells.append(DASH)
                continue
            cells.append(f"{_fmt(s['median'], m.digits)} ({_fmt_ratio(s['vs_best_peer'])})")
        arrow = "↑" if m.higher_is_better else "↓"
        add(
            f"| {m.short} {arrow} {m.unit} | {best or DASH} {_fmt(best_val, m.digits)} | "
            + " | ".join(cells)
            + " |"
        )
    add("\n↑ higher is better, ↓ lower is better; in parentheses: ratio vs the best peer.\n")

    add("## Per workload\n")
    for key, row in summary.items():
        m = next(x for x in METRICS if x.key == key)
        direction = "higher is better" if m.higher_is_better else "lower is better"
        add(f"### {m.title} — {m.unit}, {direction}\n")
        if m.workload == "sleep" and row["systems"]:
            ideal = next(
                (
                    r["metrics"]["ideal_seconds"]
                    for r in data["runs"]
                    if r["ok"] and r["workload"] == "sleep"
                ),
                None,
            )
            if ideal:
                add(f"Ideal: {ideal:.1f} s (tasks / 100 {TIMES} 0.1 s).\n")
        add(f"| system | role | median | min {DASH} max | n | vs best peer | vs floor |")
        add("|---|---|---:|---:|---:|---:|---:|")
        ordered = sorted(
            row["systems"].items(),
            key=lambda kv: -kv[1]["median"] if m.higher_is_better else kv[1]["median"],
        )
        for name, s in ordered:
            star = " ★" if name == row["best_peer"] else ""
            add(
                f"| {name}{star} | {systems[name]['role']} | {_fmt(s['median'], m.digits)} | "
                f"{_fmt(s['min'], m.digits)} {DASH} {_fmt(s['max'], m.digits)} | {s['n']} | "
                f"{_fmt_ratio(s['vs_best_peer'])} | {_fmt_ratio(s['vs_floor'])} |"
            )
        add("")

    add("## Floor: what Redis itself allows\n")
    add(
        "`bare-redis` is a framework-free at-most-once list queue (LPUSH, RPOP with a count / "
        "BRPOP, SET result + PUBLISH per batch). `bare-alo` is the at-least-once design vecna "
        "competes with, with no framework: one Lua call claims up to 100 messages with leases "
        "and owner tokens, tasks run as coroutines, one token-checking Lua call per batch acks, "
        "writes results and publishes replies. Both use redis.asyncio + hiredis + msgspec on "
        "uvloop, 100 slots. Their rows are in every table above (*vs floor* = against "
        "`bare-alo`).\n"
    )
    rb = data.get("redis_benchmark") or {}
    if rb:
        add("redis-benchmark on the same private server (requests/s; p50 latency):\n")
        add("| command | -P 1 | p50 ms | -P 16 | p50 ms |")
        add("|---|---:|---:|---:|---:|")
        p1 = rb.get("P1", {}).get("results", {})
        p16 = rb.get("P16", {}).get("results", {})
        for cmd in p1 or p16:
            a, b = p1.get(cmd, {}), p16.get(cmd, {})
            add(
                f"| {cmd} | {_fmt(a.get('requests_per_second'), 0)} | "
                f"{_fmt(a.get('p50_ms'), 3)} | {_fmt(b.get('requests_per_second'), 0)} | "
                f"{_fmt(b.get('p50_ms'), 3)} |"
            )
        add("\n`" + rb.get("P1", {}).get("command", "") + "` (and `-P 16`).\n")

    add("## How each system runs\n")
    add("| system | role | delivery | results | worker / producer |")
    add("|---|---|---|---|---|")
    for name, d in systems.items():
        add(f"| {name} | {d['role']} | {d['delivery']} | {d['results']} | {d['notes']} |")
    add(
        f"\nCommon to all: one worker process, concurrency {cfg['concurrency']}, uvloop, logging "
        "at WARNING (per-task INFO lines off everywhere), a fresh FLUSHALL'd Redis per run, the "
        "same task (`task_body` in benchmarks/systems/_common.py: note the pickup latency, "
        "optionally sleep, count the execution, return the send time). Polling systems poll "
        f"every {cfg['poll_seconds'] * 1000:.0f} ms (arq worker and Job.result, taskiq "
        "wait_result) instead of their 0.5 s / 0.2 s defaults, so that latencies measure the "
        "system rather than a sleep.\n"
    )
    s = cfg["sizes"]
    add("Workloads and sizes:\n")
    add(
        f"- **drain**: {s['drain']:,} no-op tasks enqueued first (batches of 100), then one "
        "worker starts; time from its *ready* signal (sent once imports and set-up are done, "
        "just before it consumes) to the execution that completes the count, timestamped in "
        "the worker. Worker CPU (psutil user+system over that window) and peak RSS (VmHWM) "
        "come from this run.\n"
        f"- **concurrent**: the worker is ready first; a producer sends {s['concurrent']:,} "
        f"tasks one by one from {s['senders']} concurrent coroutines; time from the first send "
        "to the last completion.\n"
        f"- **round trip**: {s['roundtrip']:,} sequential send + await-result calls "
        f"(+{s['roundtrip_warmup']} warm-up), each system's own result API.\n"
        f"- **pickup**: {s['pickup']:,} tasks sent one every {s['pickup_interval'] * 1000:.0f} "
        "ms; the task records `time.time() - sent` in the worker.\n"
        f"- **sleep**: {s['sleep_tasks']:,} tasks of `asyncio.sleep({s['sleep_seconds']})` "
        "enqueued first, timed like drain.\n"
        f"- **enqueue**: {s['enqueue']:,} sends with no worker, one awaited at a time, then "
        "in batches of 100 (the system's bulk API, else 100 concurrent sends).\n"
    )

    failed = [r for r in data["runs"] if not r["ok"]]
    if failed:
        add("## Failed runs\n")
        for r in failed:
            first = (r.get("error") or "").strip().splitlines()[:3]
            add(f"- {r['workload']} r{r['repeat']} {r['system']}: " + " / ".join(first))
        add("")

    add("## Machine\n")
    add("| | |\n|---|---|")
    for k in ("cpu_model", "cpu_cores", "ram_gib", "kernel", "redis_version", "redis_server",
              "python_orchestrator", "vecna_measured", "vecna_commit",
              "vecna_uncommitted_changes"):  # fmt: skip
        add(f"| {k} | {facts.get(k)} |")
    for env, pkgs in facts.get("environments", {}).items():
        listed = ", ".join(f"{k} {v}" for k, v in pkgs.items())
        add(f"| venv `{env}` | {listed} |")
    add("")
    return "\n".join(out)


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    summary = data["summary"]
    systems = data["systems"]
    keys = list(summary)
    if not keys:
        return
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 2.9), squeeze=False)
    colors = {"vecna": "#d62728", "peer": "#1f77b4", "floor": "#7f7f7f"}
    for ax, key in zip(axes.flat, keys, strict=False):
        row = summary[key]
        names = [n for n in systems if n in row["systems"]]
        ratios = [row["systems"][n]["vs_best_peer"] or float("nan") for n in names]
        bar_colors = [colors[systems[n]["role"]] for n in names]
        hatches = ["//" if systems[n]["role"] == "floor" else "" for n in names]
        y = range(len(names))
        bars = ax.barh(list(y), ratios, color=bar_colors)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}{TIMES}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        finite = [r for r in ratios if not math.isnan(r)]
        if finite:
            ax.set_xlim(min(min(finite), 1.0) / 1.6, max(max(finite), 1.0) * 2.2)
        ax.set_yticks(list(y), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{row['title']}\n({row['unit']})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        for i, r in enumerate(ratios):
            if not math.isnan(r):
                ax.text(r, i, f" {r:.2f}{TIMES}", va="center", fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(
        "Ratio vs the best peer (arq, saq, taskiq, streaq) per metric, medians; "
        "> 1 = better. Red: vecna, blue: peers, grey hatched: framework-free floor loops",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(data, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(data))
    chart(data, paths[2])
    return paths
