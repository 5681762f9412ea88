"""Prints, after the run, each benchmark group's ratios against its baselines (same run, same data)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group, []).append(bench)
    terminalreporter.section("fastdissect speed-ups (median time ratio, same run)")
    for group, benches in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ours = [b for b in benches if b.extra_info.get("role") == "fastdissect"]
        for mine in ours:
            for other in benches:
                if other is mine or other.extra_info.get("role") == "fastdissect":
                    continue
                ratio = other.stats.median / mine.stats.median
                terminalreporter.write_line(f"{group}: {mine.name} is {ratio:,.1f}x faster than {other.name} "
                                            f"({100 / ratio:.1f}% of its time)")
    for bench in session.benchmarks:  # benchmarks of several pieces of work: the time of one
        per, count = bench.extra_info.get("per"), bench.extra_info.get("count")
        if per and count:
            terminalreporter.write_line(f"{bench.group}: {bench.name} takes {1000 * bench.stats.median / count:,.0f} ms "
                                        f"per {per} (median of {bench.stats.rounds}, {count} {per}s)")


def pytest_configure(config):
    # Packed label caches (fd.datasets.mask_cache) go to a directory of this run, never the user's.
    import os
    import tempfile

    os.environ["FASTDISSECT_CACHE"] = tempfile.mkdtemp(prefix="fastdissect-test-cache-")


def pytest_unconfigure(config):
    import os
    import shutil

    shutil.rmtree(os.environ.pop("FASTDISSECT_CACHE", ""), ignore_errors=True)
