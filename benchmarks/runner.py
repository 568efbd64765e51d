"""One runner for every benchmark: ``python -m benchmarks`` or ``vitsplit-vlm bench``.

    python -m benchmarks                    # every case at its full size
    python -m benchmarks --quick            # small sizes (minutes on a laptop CPU)
    python -m benchmarks --cases truncation,cached_epoch
    python -m benchmarks --readme           # only rewrite README's tables from the JSON

Each case is one of the scripts next to this file (each also runs alone); it times the code the
command line runs (the dense engine's `train_step` / `train`, the VLM trainer as a subprocess,
`VLMEngine` generation) in alternating rounds and writes ``benchmarks/results/<case>.json``. The
runner adds the machine (CPU model, cores, torch; the CUDA device when there is one: then bf16
and ``torch.cuda.max_memory_allocated`` are measured too), draws ``<case>.png`` where the script
draws none, collects each case's headline rows (medians and ratios) in ``summary.json`` and
rewrites the README section between the ``benchmarks:begin`` / ``benchmarks:end`` markers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


@dataclass(frozen=True)
class Options:
    quick: bool
    threads: int
    dense_sizes: str | None  # DINOv2 sizes of dense_methods (None: S and B; S with --quick)
    cuda: bool
    assets: Callable[[], object]  # tiny models + a shapes set, made once when a case asks


@dataclass(frozen=True)
class Case:
    """A benchmark case: `script` (a module here with ``main(argv)``), its arguments, and the
    headline rows of its JSON."""

    title: str
    script: str
    argv: Callable[[Options, Path], list[str]]
    rows: Callable[[dict], list[dict]]
    draws_png: bool = False
    default: bool = True  # run without --cases (False: long, opt-in)


def row(what: str, a: str, a_value: float, b: str, b_value: float, unit: str, ratio: float,
        target: str = "", note: str = "") -> dict:  # fmt: skip
    """One headline comparison: `a` against `b` (values in `unit`); `ratio`: the speed-up of
    `a` over `b` for times (b / a), a / b for scores."""
    return {"what": what, "a": a, "a_value": round(a_value, 4), "b": b,
            "b_value": round(b_value, 4), "unit": unit, "ratio": round(ratio, 3),
            "target": target, "note": note}  # fmt: skip


# --------------------------------------------------------------------------- the cases


def _dense_argv(
    o: Options,
    out: Path,
    sizes: str | None = None,
    methods: str = "vitsplit,full,linear,vitsplit-cached",
) -> list[str]:
    sizes = sizes or o.dense_sizes or ("dinov2-s" if o.quick else "dinov2-s,dinov2-b")
    argv = ["--sizes", sizes,
            "--crop", "224" if o.quick else "512", "--batch", "2", "--modes", "default",
            "--methods", methods, "--steps", "2", "--rounds", "2",
            "--threads", str(o.threads), "--out", str(out.with_suffix(""))]  # fmt: skip
    return argv + (["--precisions", "bf16,fp32"] if o.cuda else [])


def _dense_large_argv(o: Options, out: Path) -> list[str]:
    """DINOv2-L (the paper's trunk for its dense tables, k=4 n=8): ViT-Split, cached and full
    fine-tuning only (an L step is minutes on a CPU); --quick as `dense_methods`."""
    if o.quick:
        return _dense_argv(o, out)
    return _dense_argv(o, out, sizes="dinov2-l", methods="vitsplit,full,vitsplit-cached")


def _dense_rows(report: dict) -> list[dict]:
    by = {(r["size"], r["method"], r["precision"]): r for r in report["results"]}
    out = []
    for size, method, precision in by:
        if method == "full":
            continue
        mine, full = by[(size, method, precision)], by[(size, "full", precision)]
        shape = f"{mine['input_hw'][0]}px, batch {mine['batch']}, {precision}"
        target = ">= 2.2x" if method == "vitsplit-cached" else ""
        note = ""
        if "gflops_per_step" in mine:
            note = f"FLOP ceiling {full['gflops_per_step'] / mine['gflops_per_step']:.2f}x"
        out.append(row(f"dense seg {size} ({shape}): {method} vs full fine-tuning", method,
                       mine["seconds_per_step"], "full", full["seconds_per_step"], "s/step",
                       full["seconds_per_step"] / mine["seconds_per_step"], target, note))  # fmt: skip
    return out


def _truncation_argv(o: Options, out: Path) -> list[str]:
    quick = ["--quick", "--tiny", str(o.assets()[0].root)] if o.quick else []
    return ["--rounds", "5", "--threads", str(o.threads), "--out", str(out), *quick]


def _truncation_rows(report: dict) -> list[dict]:
    return [
        row(
            f"trunk truncation, {r['config']}: {r['blocks_run']['needed']} of "
            f"{r['blocks_run']['full']} blocks",
            "needed",
            r["seconds_median"]["needed"],
            "full trunk",
            r["seconds_median"]["full"],
            "s/forward",
            r["speedup"],
            note=f"block ceiling {r['block_ratio_ceiling']:.2f}x",
        )  # fmt: skip
        for r in report["results"]
    ]


def _cached_argv(o: Options, out: Path) -> list[str]:
    return ["--rounds", "2", "--threads", str(o.threads), "--out", str(out)] + (
        ["--quick"] if o.quick else []
    )


def _cached_large_argv(o: Options, out: Path) -> list[str]:
    """The linear probe on DINOv2-L (the paper's largest dense trunk): the trunk, which the cache
    removes, is most of its uncached step (the head at 4x the patch grid is what stays); --quick
    runs the tiny DINOv2 instead, as for every case."""
    return ["--cases", "dense", "--dense-trunk", "dinov2-l", "--dense-methods", "linear",
            *_cached_argv(o, out)]  # fmt: skip


def _cached_rows(report: dict) -> list[dict]:
    out = []
    for side in ("vlm", "dense"):
        for method, r in report.get(side, {}).items():
            s = r["setup"]
            where = (f"VLM stage 1 (trainer), {s['images']} images, batch {s['batch']}"
                     if side == "vlm" else
                     f"dense seg {s['trunk']} {s['input']}px, {s['images']} images, batch "
                     f"{s['batch']}")  # fmt: skip
            m = r["epoch_s_median"]
            out.append(row(f"cached epoch, {where}: {method}", "cached", m["cached"], "uncached",
                           m["uncached"], "s/epoch", r["speedup"], ">= 3x",
                           f"losses differ by {r['max_loss_difference']:.1e}"))  # fmt: skip
    return out


def _connector_argv(o: Options, out: Path, batch_size: int = 16) -> list[str]:
    tiny, data = o.assets()
    return ["--llm", str(tiny.llama), "--vision", str(tiny.clip), "--data", str(data.pretrain),
            "--images", str(data.image_folder), "--batch-size", str(batch_size),
            "--steps", "3" if o.quick else "5", "--warmup", "2",
            "--repeats", "2" if o.quick else "3", "--threads", str(o.threads),
            "--out", str(out)]  # fmt: skip


def _connector_rows(report: dict) -> list[dict]:
    c = report["connectors"]
    a, b = c["vitsplit"]["median_step_s"], c["mlp2x_gelu"]["median_step_s"]
    return [row(f"VLM stage-1 step (trainer, ZeRO-2), batch {report['batch_size']}: connector",
                "vitsplit", a, "mlp2x_gelu", b, "s/step", b / a,
                note=f"trainable {c['vitsplit']['trainable']:,} vs "
                f"{c['mlp2x_gelu']['trainable']:,}")]  # fmt: skip


def _logits_argv(o: Options, out: Path) -> list[str]:
    return [*_connector_argv(o, out, batch_size=32), "--compare", "logits"]


def _logits_rows(report: dict) -> list[dict]:
    c = report["logits"]
    a, b = c["supervised"]["median_step_s"], c["all"]["median_step_s"]
    ra, rb = c["supervised"]["peak_rss_mib"], c["all"]["peak_rss_mib"]
    return [row(f"VLM stage-1 step (trainer, ZeRO-2), batch {report['batch_size']}: LM head on",
                "supervised positions", a, "all positions", b, "s/step", b / a,
                note=f"peak RSS {ra:,.0f} vs {rb:,.0f} MiB" if ra and rb else "")]  # fmt: skip


def _generation_argv(o: Options, out: Path) -> list[str]:
    return ["--questions", "16" if o.quick else "32", "--repeats", "3" if o.quick else "5",
            "--threads", str(o.threads), "--out", str(out)]  # fmt: skip


def _generation_rows(report: dict) -> list[dict]:
    a, b = (
        report["batch_8"]["answers_per_second_median"],
        report["batch_1"]["answers_per_second_median"],
    )
    return [row(f"generation (VLMEngine), {report['questions']} questions x "
                f"{report['new_tokens_per_answer']} tokens", "batch 8", a, "batch 1", b,
                "answers/s", a / b, f">= {report['target_speedup']}x")]  # fmt: skip


def _learning_argv(o: Options, out: Path) -> list[str]:
    runs = Path(tempfile.mkdtemp(prefix="dense_learning_runs-"))  # checkpoints: never in git
    quick = ["--iters", "100", "--backbones", "random", "--configs", "linear,vitsplit,full"]
    return ["--out", str(out.with_suffix("")), "--runs", str(runs), "--jobs", "1",
            *(quick if o.quick else [])]  # fmt: skip


def _learning_rows(report: dict) -> list[dict]:
    table = report["table"]
    return [
        row(
            f"playground seg mIoU (paper Tab. 6), {backbone} tiny DINOv2: {config} vs full "
            "fine-tuning",
            config,
            scores[config],
            "full",
            scores["full"],
            "mIoU",
            scores[config] / scores["full"],
        )  # fmt: skip
        for backbone, scores in table.items()
        for config in scores
        if config != "full" and "full" in scores
    ]


CASES: dict[str, Case] = {
    "dense_methods": Case(
        "dense training step: ViT-Split, linear probe and cached ViT-Split vs full fine-tuning",
        "dense_speed", _dense_argv, _dense_rows, draws_png=True,
    ),
    "dense_methods_large": Case(
        "dense training step on DINOv2-L: ViT-Split and cached ViT-Split vs full fine-tuning",
        "dense_speed", _dense_large_argv, _dense_rows, draws_png=True,
    ),
    "truncation": Case("trunk truncation: stop at the deepest needed layer vs the full trunk",
                       "truncation", _truncation_argv, _truncation_rows),
    "cached_epoch": Case("a cached epoch vs an uncached one (same losses)", "cached_epoch",
                         _cached_argv, _cached_rows),
    "cached_epoch_large": Case("a cached epoch vs an uncached one, DINOv2-L linear probe (same "
                               "losses)", "cached_epoch", _cached_large_argv, _cached_rows),
    "vlm_connector": Case("VLM stage-1 step: the ViT-Split connector vs mlp2x_gelu",
                          "vlm_stage1", _connector_argv, _connector_rows),
    "vlm_logits": Case("VLM stage-1 step: LM head on supervised positions vs all",
                       "vlm_stage1", _logits_argv, _logits_rows),
    "generation": Case("generation: batch 8 vs batch 1", "eval_throughput", _generation_argv,
                       _generation_rows),
    "dense_learning": Case("what learns: paper Tab. 6 ablations on the playground (mIoU, not "
                           "time)", "dense_learning", _learning_argv, _learning_rows,
                           default=False),
}  # fmt: skip


# --------------------------------------------------------------------------- running


def machine(threads: int) -> dict:
    """Where the numbers come from."""
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "load_average": load,
            "torch": torch.__version__, "python": platform.python_version(), "cuda": cuda,
            "bf16": bool(cuda) and torch.cuda.is_bf16_supported()}  # fmt: skip


def _assets_maker(folder: Path) -> Callable[[], object]:
    made: list = []

    def assets():
        if not made:
            from vitsplit_vlm.playground.shapes import write_llava_dataset
            from vitsplit_vlm.playground.tiny import make_tiny

            tiny = make_tiny(folder / "tiny")
            data = write_llava_dataset(folder / "shapes", num_train=128, num_heldout=0,
                                       image_size=112, seed=0)  # fmt: skip
            made.append((tiny, data))
        return made[0]

    return assets


def run_case(name: str, options: Options, results: Path) -> dict:
    """Run one case; its JSON gains the machine and how the runner called it."""
    case = CASES[name]
    out = results / f"{name}.json"
    argv = case.argv(options, out)
    print(f"== {name}: {case.title}", flush=True)
    started = time.perf_counter()
    module = importlib.import_module(case.script)
    code = module.main(argv)
    if code:
        raise SystemExit(f"{name}: {case.script} exited with {code}")
    report = _portable(json.loads(out.read_text()))
    report["runner"] = {"case": name, "title": case.title, "quick": options.quick,
                        "script": f"benchmarks/{case.script}.py", "argv": _portable(argv),
                        "seconds": round(time.perf_counter() - started, 1),
                        "machine": machine(options.threads)}  # fmt: skip
    out.write_text(json.dumps(report, indent=1) + "\n")
    rows = case.rows(report)
    if not case.draws_png:
        plot_rows(case.title, rows, out.with_suffix(".png"))
    return {"title": case.title, "quick": options.quick, "rows": rows,
            "machine": report["runner"]["machine"]}  # fmt: skip


def _portable(value):
    """`value` (JSON data) with this machine's temporary and repository paths replaced."""
    if isinstance(value, str):
        tmp, repo = tempfile.gettempdir(), str(HERE.parent)
        return value.replace(repo + os.sep, "").replace(tmp + os.sep, "$TMP/")
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    return value


def plot_rows(title: str, rows: list[dict], path: Path) -> None:
    """Paired bars (a vs b) per row, the ratio written above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        ax.bar([r["a"], r["b"]], [r["a_value"], r["b_value"]], color=["tab:blue", "tab:gray"])
        ax.set_ylabel(r["unit"])
        ax.set_title(f"{r['ratio']:.2f}x", fontsize=10)
        ax.set_xlabel("\n".join(_wrap(r["what"], 40)), fontsize=7)
    fig.suptitle("\n".join(_wrap(title, 18 + 22 * len(rows))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


# --------------------------------------------------------------------------- README


def readme_tables(summary: dict) -> str:
    """The README section: the machine, then one table row per headline comparison."""
    lines = [BEGIN, "", "<!-- generated by `python -m benchmarks --readme` from "
             "benchmarks/results/summary.json; edit the runner, not this table -->", ""]  # fmt: skip
    for name, case in summary["cases"].items():
        m = case["machine"]
        where = m["cuda"] or f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} threads"
        if m.get("load_average"):
            where += f", load average {m['load_average'][0]:g} when it finished"
        size = "quick sizes" if case["quick"] else "full sizes"
        lines += [f"**{case['title']}** (`{name}`, {size}; {where}; torch {m['torch']})", "",
                  "| measured | A | B | A / B | ratio | target | note |",
                  "|---|---|---|---:|---:|---|---|"]  # fmt: skip
        for r in case["rows"]:
            lines.append(f"| {r['what']} | {r['a']} | {r['b']} | {r['a_value']:.4g} / "
                         f"{r['b_value']:.4g} {r['unit']} | {r['ratio']:.2f}x | {r['target']} | "
                         f"{r['note']} |")  # fmt: skip
        lines.append("")
    return "\n".join([*lines, END])


def refresh_rows(summary_path: Path) -> None:
    """Recompute every case's headline rows from its JSON (after the row code changed)."""
    summary = json.loads(summary_path.read_text())
    for name, case in summary["cases"].items():
        report = summary_path.parent / f"{name}.json"
        if name in CASES and report.is_file():
            case["rows"] = CASES[name].rows(json.loads(report.read_text()))
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")


def rewrite_readme(summary_path: Path = RESULTS / "summary.json", readme: Path = README) -> None:
    """Replace the marked README section with `readme_tables` of the summary."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to rewrite; add the markers")
    summary = json.loads(summary_path.read_text())
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + readme_tables(summary) + tail)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = ",".join(name for name, case in CASES.items() if case.default)
    parser.add_argument("--cases", default=default,
                        help=f"subset of {','.join(CASES)} (default: all but dense_learning, "
                        "an hour of training)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (tiny trunks, 224 px dense crops, fewer rounds)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--dense-sizes", default=None,
                        help="dense_methods: DINOv2 sizes, e.g. dinov2-s (default: dinov2-s,dinov2-b;"
                        " dinov2-s with --quick)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON/PNG go")
    parser.add_argument("--readme", action="store_true",
                        help="only rewrite README's benchmark section from summary.json")  # fmt: skip
    parser.add_argument("--no-readme", dest="update_readme", action="store_false",
                        help="do not rewrite README after running")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    summary_path = args.results / "summary.json"
    if args.readme:
        refresh_rows(summary_path)
        rewrite_readme(summary_path)
        return 0
    names = [n for n in args.cases.split(",") if n]
    if unknown := sorted(set(names) - set(CASES)):
        raise SystemExit(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    import torch

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))  # the case scripts import each other by name
    args.results.mkdir(parents=True, exist_ok=True)
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        options = Options(args.quick, args.threads, args.dense_sizes, torch.cuda.is_available(),
                          _assets_maker(Path(tmp)))  # fmt: skip
        for name in names:
            summary["cases"][name] = run_case(name, options, args.results)
            summary["cases"] = {n: summary["cases"][n] for n in CASES if n in summary["cases"]}
            summary_path.write_text(json.dumps(summary, indent=1) + "\n")
            for r in summary["cases"][name]["rows"]:
                print(f"   {r['what']}: {r['ratio']:.2f}x {r['target']}", flush=True)
    if args.update_readme and args.results == RESULTS:
        rewrite_readme(summary_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
