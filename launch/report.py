"""Collects a sweep's results into tables and a plot of the learning curves.

    python -m launch.report --workdir runs/ablations [--out DIR] [--target_error 0.25]

Reads `<workdir>/sweep.json` (written by launch.sweep) and each variant's
TensorBoard event files, the same ones TensorBoard shows. Writes to `--out`
(default: the workdir):
  - report.md: one row per variant (seeds pooled): final and best validation
    top-1/top-5 error, steps to the target training error, images/s and the
    parameter count, each as mean +- std over seeds, and the differences to
    the baseline (the sweep's first variant) paired by seed, over the seeds
    where both runs finished with the same config (but for the swept fields
    and those that leave the numbers as they are); a note under the table
    names every run left out of a difference and why;
  - report.csv: the same numbers, unrounded; runs.csv: one row per run;
  - curves.png: training and validation top-1 error against steps.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from alexnet_jax import errors
from alexnet_jax.runs import config_json, sweep_status
from launch import report_curves, report_tables, run_results, sweep


@errors.one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = sweep.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the sweep's --workdir")
    parser.add_argument("--out", help="where the report goes (default: the workdir)")
    parser.add_argument("--target_error", type=float, default=0.25, help="training top-1 error for 'steps to'")
    parser.add_argument("--title", default=None, help="the Markdown heading (default: the workdir)")
    args = parser.parse_args(argv)
    if not 0 < args.target_error < 1:
        raise SystemExit(f"error: --target_error={args.target_error} must be a fraction in (0, 1), e.g. 0.25")
    out = args.out or args.workdir
    sweep_status.check_local(args.workdir, "--workdir")
    sweep_status.check_local(out, "--out")
    config_json.check_writable(out, "--out")  # before the sweep's event files are read
    manifest, results = run_results.collect(args.workdir, args.target_error)
    if not any(r.status == "finished" for r in results):
        statuses = "; ".join(f"{r.name} {r.status}" for r in results)
        raise SystemExit(f"error: no run of the sweep in {args.workdir} finished ({statuses}): nothing to report")
    rows = report_tables.summarise(results)
    title = args.title or f"Sweep report: {args.workdir}"
    report = report_tables.markdown(manifest, rows, args.target_error, title, args.workdir)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report)
    report_tables.write_csv(os.path.join(out, "report.csv"), rows)
    report_tables.write_csv(
        os.path.join(out, "runs.csv"),
        [
            {"run": r.name, "variant": r.group, "seed": r.seed, "status": r.status, "num_params": r.num_params}
            | r.metrics
            for r in results
        ],
    )
    report_curves.plot_curves(results, args.target_error, os.path.join(out, "curves.png"))
    print(report)
    print(f"wrote report.md, report.csv, runs.csv and curves.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
