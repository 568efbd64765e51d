"""Records per second of `vitsplit-vlm check-data`, extrapolated to LLaVA-1.5's 665K records.

A playground set (`shapes.write_llava_dataset`, 336-px PNG scenes as LLaVA-1.5's CLIP sees,
multi-round VQA records) is repeated to ``--records`` records (`broken_data.write_scaled_dataset`)
and checked as ``check-data --model-path LLM --vision-tower CLIP`` would (every check, records
tokenized, every image fully decoded) at each ``--jobs`` value. Repetitions alternate the job
counts so that a busy machine slows all alike; medians are reported, with the time 665,298
records would take at that rate, and the machine's load average (other processes share the
cores: the figures are lower bounds for an idle machine).

Caveats written into the result: the playground records are shorter than LLaVA's (fewer
rounds), and its images are small PNGs that stay in the page cache; LLaVA's are ~640x480 JPEGs
read from disk, whose decode time is measured separately (``jpeg_640x480_decode_ms``). The CPU
time per record at ``--jobs 1`` (``cpu_ms_per_record_jobs_1``) is the figure least changed by
other processes: one core checks ``1000 / cpu_ms`` records per second.

    .venv/bin/python benchmarks/check_data_throughput.py --records 20000 --jobs 1 2

Writes ``benchmarks/results/check_data_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "check_data_throughput.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=20_000, help="records per timed run")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to compare")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per --jobs value")
    p.add_argument("--scenes", type=int, default=200, help="distinct playground images")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def build(root: Path, records: int, scenes: int):
    """(scaled data file, image folder, tiny LLM folder, tiny CLIP folder, chars per record)."""
    from vitsplit_vlm.playground.broken_data import write_scaled_dataset
    from vitsplit_vlm.playground.shapes import write_llava_dataset
    from vitsplit_vlm.playground.tiny import make_tiny

    data = write_llava_dataset(root / "shapes", num_train=scenes, num_heldout=0, image_size=336)
    tiny = make_tiny(root / "tiny")
    scaled = write_scaled_dataset(root / "scaled.json", data, records)
    chars = scaled.stat().st_size / records
    return scaled, data.image_folder, tiny.llama, tiny.clip, chars


def jpeg_decode_ms(root: Path, repeats: int = 50) -> float:
    """Median ms to open and fully decode a 640x480 photo-like JPEG as 8-bit RGB."""
    import numpy as np
    from PIL import Image

    from vitsplit_vlm.images import open_rgb

    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    noise = rng.integers(0, 40, (480, 640, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(smooth).resize((640, 480), Image.BICUBIC)) + noise
    path = root / "photo.jpg"
    Image.fromarray(photo.astype(np.uint8)).save(path, quality=90)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        open_rgb(path)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    from vitsplit_vlm.playground.broken_data import LLAVA_MIX665K_RECORDS
    from vitsplit_vlm.vlm.check_data import Checker, add_arguments, build_reader

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, images, llm, clip, chars = build(root, args.records, args.scenes)
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        flags = ["--data", str(data), "--image-folder", str(images), "--model-path", str(llm),
                 "--vision-tower", str(clip)]  # fmt: skip
        reader = build_reader(parser.parse_args(flags))
        rates: dict[int, list[float]] = {jobs: [] for jobs in args.jobs}
        cpu_ms: list[float] = []  # per record, --jobs 1 (all in this process)
        loads = []
        for _ in range(args.repeats):
            for jobs in args.jobs:
                cpu = time.process_time()
                report = Checker(reader, jobs=jobs).run(data, progress=False)
                assert report.records == args.records and report.unusable == 0
                rates[jobs].append(report.records / report.seconds)
                if jobs == 1:
                    cpu_ms.append((time.process_time() - cpu) * 1000 / report.records)
                loads.append(os.getloadavg()[0])
                print(f"--jobs {jobs}: {rates[jobs][-1]:,.0f} records/s", flush=True)
        jpeg_ms = jpeg_decode_ms(root)
    medians = {jobs: statistics.median(r) for jobs, r in rates.items()}
    base = medians[args.jobs[0]]
    result = {
        "benchmark": "check_data_throughput",
        "records_per_run": args.records,
        "distinct_images": args.scenes,
        "bytes_per_record": round(chars, 1),
        "repeats": args.repeats,
        "records_per_s": {
            str(jobs): {
                "median": round(m, 1),
                "runs": [round(r, 1) for r in rates[jobs]],
                "speedup_vs_first": round(m / base, 2),
                "llava_665k_minutes": round(LLAVA_MIX665K_RECORDS / m / 60, 1),
            }
            for jobs, m in medians.items()
        },
        # CPU time is what the load of other processes changes least: records/s of one core
        "cpu_ms_per_record_jobs_1": round(statistics.median(cpu_ms), 3) if cpu_ms else None,
        "jpeg_640x480_decode_ms": round(jpeg_ms, 2),
        "llava_665k_records": LLAVA_MIX665K_RECORDS,
        "load_average_during_runs": {
            "min": round(min(loads), 2),
            "median": round(statistics.median(loads), 2),
        },
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "note": "tiny Llama tokenizer; playground records and images (see the module doc); the "
        "load average counts other processes sharing the cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
