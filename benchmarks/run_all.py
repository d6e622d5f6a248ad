"""Run every benchmark, each in its own process (a script's thread settings cannot leak into the
next); each prints its figures and ratios measured side by side in one run."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
failed = []
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name} ===", flush=True)
    if subprocess.run([sys.executable, str(script)]).returncode:
        failed.append(script.name)
if failed:
    print(f"\nfailed: {', '.join(failed)}", flush=True)
sys.exit(1 if failed else 0)
