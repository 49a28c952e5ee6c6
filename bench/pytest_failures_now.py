"""pytest plugin for bench/gpu_run.sh: append each failure's report to $OUT/failures.txt
as soon as it is known (under pytest-xdist the controller and the worker both see it),
so a run stopped by a time limit still says what failed and why."""

import os


def pytest_runtest_logreport(report):
    if report.failed:
        path = os.path.join(os.environ["OUT"], "failures.txt")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"===== {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n")
