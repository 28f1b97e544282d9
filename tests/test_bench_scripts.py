"""Every benchmark still imports: they are run by hand (`make bench`), so a name the daemon's code
no longer has would otherwise be found only by the next person who measures."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (ROOT / "bench").glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_imports(script):
    # as `python bench/<script>.py` does: bench/ first on the path; __main__ is not run
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, 'bench'); import {script}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
