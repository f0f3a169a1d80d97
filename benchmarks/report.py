"""The benchmark report: a JSON file, a Markdown table and (optionally) BENCHMARKS.md's section of
this card, all rewritten after every row, each by writing a temporary file and renaming it over
the old one, so a run killed at any moment leaves complete files holding every row it finished
(and, under "running", the row it was in)."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

KERNEL_COLUMNS = [("op", "op"), ("shape", "shape"), ("variant", "variant"), ("median ms", "median_ms"),
                  ("p90 ms", "p90_ms"), ("GB/s", "gbs"), ("% of copy", "pct_copy"), ("x eager", "speedup_vs_eager")]
RESTORE_COLUMNS = [("model", "model"), ("image", "image"), ("batch", "batch"), ("variant", "label"),
                   ("median ms", "median_ms"), ("p90 ms", "p90_ms"), ("images/s", "images_per_s"),
                   ("first call s", "first_call_s"), ("peak alloc MiB", "peak_alloc_mib"),
                   ("peak reserved MiB", "peak_reserved_mib"), ("TFLOP/s", "tflops"), ("% of matmul", "pct_matmul"),
                   ("J/image", "joules_per_image"), ("PSNR vs fp32 dB", "psnr_vs_ref"), ("reps", "reps"),
                   ("est. s", "estimate_s"), ("wall s", "wall_s"), ("note", "note")]


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` all at once: a reader (or a kill) sees the old file or the new
    one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Report:
    """Collects the run and rewrites ``json_path``, ``markdown_path`` and, when given,
    ``benchmarks_md`` (that file as it was at the start, with this card's section replaced)
    whenever it changes. Paths of None are not written (the dry run's report)."""

    def __init__(self, json_path: Path | None, markdown_path: Path | None, command: str,
                 benchmarks_md: Path | None = None, call: str | None = None, cuda_tests: str | None = None):
        self.json_path = Path(json_path) if json_path else None
        self.markdown_path = Path(markdown_path) if markdown_path else None
        self.benchmarks_md = Path(benchmarks_md) if benchmarks_md else None
        for path in (self.json_path, self.markdown_path, self.benchmarks_md):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        self._benchmarks_text = None
        if self.benchmarks_md is not None:
            self._benchmarks_text = self.benchmarks_md.read_text() if self.benchmarks_md.exists() else "# Benchmarks\n"
        self.data = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": {},
                     "ceilings": {}, "models": {}, "kernels": [], "restore": []}
        if call:
            self.data["call"] = call
        if cuda_tests:
            self.data["cuda_tests"] = cuda_tests

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.flush()

    def add(self, kind: str, entry: dict) -> None:
        """Append a finished row (which ends the "running" one)."""
        self.data[kind].append(entry)
        self.data.pop("running", None)
        self.flush()

    def start(self, what: str, estimate_s: float, at_s: float) -> None:
        """Record the row about to run, so a run killed during it says where it stopped."""
        self.data["running"] = {"what": what, "estimate_s": estimate_s, "started_at_s": at_s}
        self.flush()

    def done(self) -> None:
        self.data.pop("running", None)
        self.flush()

    def flush(self) -> None:
        if self.json_path is not None:
            write_atomic(self.json_path, json.dumps(self.data, indent=1, default=str) + "\n")
        if self.markdown_path is not None:
            write_atomic(self.markdown_path, render_markdown(self.data))
        if self.benchmarks_md is not None and self.data["environment"]:
            write_atomic(self.benchmarks_md,
                         update_benchmarks_md(self._benchmarks_text, card_name(self.data), render_section(self.data)))


# -- Markdown --------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    """Three significant digits (whole numbers from 1000 up); '-' for missing; pipes escaped."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "/")


def table(columns: list[tuple[str, str]], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(key)) for _, key in columns) + " |" for row in rows]
    return lines


def _restore_display_rows(data: dict) -> list[dict]:
    """Restore rows with the model's size in its name and every remark folded into 'note'."""
    rows = []
    for row in data["restore"]:
        params = data["models"].get(row["preset"], {}).get("params_m")
        notes = [] if row.get("status", "ok") == "ok" else [row["status"]]
        notes += [row["note"]] if row.get("note") else []
        if row.get("ratio_to_compile") is not None:
            notes.append(f"{row['ratio_to_compile']:.2f}x torch.compile's time")
        if row.get("graph_pool_mib") is not None:
            notes.append(f"graph pool {row['graph_pool_mib']:.0f} MiB")
        if row.get("status") == "ok" and row.get("joules_per_image") is None and data["environment"].get("device") == "cuda":
            notes.append(f"no energy: window {row.get('window_s', 0):.1f} s < 2 s or no NVML counter")
        model = row["preset"] + (f" ({params:.1f}M)" if params else "")
        rows.append({**row, "model": model, "note": "; ".join(notes)})
    return rows


def _kernel_checks(section: dict) -> str:
    checks = []
    if "max_abs_err_vs_twin" in section:
        checks.append(f"max abs error vs twin {fmt(section['max_abs_err_vs_twin'])}")
    if "bitwise_equal_to_twin" in section:
        checks.append(f"bitwise equal to twin: {fmt(section['bitwise_equal_to_twin'])}")
    if "speedup_vs_compile" in section:
        checks.append(f"{section['speedup_vs_compile']:.2f}x faster than torch.compile")
    if "recompiled_for_new_sizes" in section:
        checks.append(f"recompiled for new H, W: {fmt(section['recompiled_for_new_sizes'])}")
    for name, meaning in section.get("layouts", {}).items():
        checks.append(f"{name}: {meaning}")
    if section.get("error"):
        checks.append(f"error: {section['error']}")
    return f"- {section['op']} {section['shape']}: " + "; ".join(checks)


def card_name(data: dict) -> str:
    return data["environment"].get("card", "unknown device")


def render_section(data: dict) -> str:
    """The Markdown of one run, headed by its card: what BENCHMARKS.md keeps per card."""
    env, ceil = data["environment"], data["ceilings"]
    if data.get("call"):
        measured = f"Measured {data['date']} by `{data['call']}`, whose benchmark ran `{data['command']}`."
    else:
        measured = f"Measured {data['date']} with `{data['command']}`."
    lines = [f"## {card_name(data)}", "", measured,
             f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"driver {env.get('driver', '-')}, Python {env.get('python')}; SM clock max {env.get('sm_clock_max_mhz', '-')} "
             f"MHz (at start {env.get('sm_clock_now_mhz', '-')}), memory clock max {env.get('mem_clock_max_mhz', '-')} MHz "
             f"(at start {env.get('mem_clock_now_mhz', '-')}), power limit {fmt(env.get('power_limit_w'))} W.", ""]
    if data.get("cuda_tests"):
        lines += [f"CUDA tests in the same call: {data['cuda_tests']}", ""]
    if ceil:
        lines += [f"Ceilings measured in this run: copy {fmt(ceil.get('copy_gbs'))} GB/s (bytes read + written), "
                  f"matmul {fmt(ceil.get('matmul_tflops'))} TFLOP/s ({ceil.get('matmul')}).", ""]
    if data["kernels"]:
        rows = [{**r, "op": k["op"], "shape": k["shape"]} for k in data["kernels"] for r in k["rows"]]
        lines += ["### Kernels", "", *table(KERNEL_COLUMNS, rows), "", *map(_kernel_checks, data["kernels"]), ""]
    if data["restore"]:
        lines += ["### 4-step restore", "", *table(RESTORE_COLUMNS, _restore_display_rows(data)), ""]
    if data.get("conv_layers"):  # only runs with --conv-layers have it
        from .conv_rows import render_conv_section

        lines += render_conv_section(data["conv_layers"])
    running = data.get("running")
    if running:
        lines += [f"**Not finished:** {running['what']}, started {running['started_at_s']:.0f} s into the run "
                  f"(estimated {running['estimate_s']:.0f} s). A run that ends here was stopped during it; "
                  "everything above it was measured.", ""]
    if "elapsed_s" in data:
        lines += [f"Whole run: {data['elapsed_s']:.0f} s.", ""]
    elif not running:
        lines += ["The run had not finished when this was written.", ""]
    return "\n".join(lines)


def render_markdown(data: dict) -> str:
    return "# resflow-fast benchmark\n\n" + render_section(data)


# -- BENCHMARKS.md: the latest section per card -----------------------------------------------------
def _markers(card: str) -> tuple[str, str]:
    return f"<!-- results: {card} -->", f"<!-- end results: {card} -->"


def update_benchmarks_md(text: str, card: str, section: str) -> str:
    """``text`` with the section of ``card`` replaced by ``section`` (appended if it has none);
    every other card's section and all prose stay as they are."""
    begin, end = _markers(card)
    block = f"{begin}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_benchmarks_md(path: Path, data: dict) -> None:
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    write_atomic(path, update_benchmarks_md(text, card_name(data), render_section(data)))
