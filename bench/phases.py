"""Where a request's time goes: the facade's latency gap to the baseline, phase by phase.

    python bench/phases.py [--rate 100] [--rounds 2] [compare.py's other options]

Runs ``bench/compare.py`` (every option is passed on to it) with the instrumentation in
``bench/phases_hook/`` loaded into the facade and the baseline, then prints, per target, how long
each phase of an ``$everything`` took (p10 / p50 / p90 / mean, ms, over every request of the run,
the unmeasured settle phases included, all at the same rate):

    pre       the handler starts → the first backend request is begun
    backends  → the last backend body has been read
    post      → the response is ready (the facade: the rest of the mapping, merge, redaction, the
              Bundle, the access log)

and the facade's ``post`` split further, stage by stage of its walk (``proxy/pipeline/walk.py``, from
the ``StageFinished`` events its hook bus publishes to the subscriber ``phases.py`` names in
``FHIR_FACADE_HOOK_SUBSCRIBERS``). What happens before the handler starts (reading and
parsing the request) and after (writing the response) is not covered: compare the sum with the
p50 gap ``compare.py`` prints. A ``--variant`` with its own ``PYTHONPATH`` keeps the hook on it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
HOOK = BENCH / "phases_hook"

PHASES = (("pre", "a", "s"), ("backends", "s", "r"), ("post", "r", "d"), ("all", "a", "d"))
# the facade's post, from its hook bus (StageFinished per stage of the walk; the first backend's
# share settled): see phases_hook/sitecustomize.py
POST = (
    ("last body → fan-out back, mapped", "r", "settled"),
    ("→ cached, outcomes (fetch)", "settled", "end:fetch_and_map"),
    ("→ PDL (pdl)", "end:fetch_and_map", "end:pdl"),
    ("→ merged (merge)", "end:pdl", "end:merge"),
    ("→ redacted (redact)", "end:merge", "end:redact"),
    ("→ look-alikes marked", "end:redact", "end:lookalikes"),
    ("→ filtered, the answer (select)", "end:lookalikes", "end:select"),
    ("→ Bundle, access logged, ready", "end:select", "d"),
)


def _with_hook(args: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] == "--variant" and "PYTHONPATH=" in arg:
            parts = arg.split(",")
            arg = ",".join(f"{p}:{HOOK}" if p.strip().startswith("PYTHONPATH=") else p for p in parts)
        out.append(arg)
    return out


def _row(label: str, values: list[float]) -> str:
    v = sorted(values)
    p10, p50, p90 = (v[int(q * (len(v) - 1))] for q in (0.1, 0.5, 0.9))
    return f"  {label:34} {p10:7.2f} {p50:7.2f} {p90:7.2f} {statistics.mean(v):7.2f}"


def report(out: Path) -> None:
    for path in sorted(out.glob("*.json"), key=lambda p: (not p.name.startswith("baseline"), p.name)):
        records: list[dict[str, Any]] = json.loads(path.read_text())
        records = [r for r in records[len(records) // 20 :] if r.get("s") and r.get("r")]
        if not records:
            continue
        print(f"{path.stem}: {len(records)} requests       p10     p50     p90    mean (ms)")
        for label, start, end in PHASES:
            print(_row(label, [(r[end] - r[start]) * 1000 for r in records]))
        post = [r for r in records if all(k in r for _, a, b in POST for k in (a, b))]
        if post:
            print("  post, step by step:")
            for label, start, end in POST:
                print(_row("  " + label, [(r[end] - r[start]) * 1000 for r in post]))


def main() -> None:
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(__doc__)
        return
    with tempfile.TemporaryDirectory(prefix="fhir-facade-phases-") as tmp:
        # the facade's phases: its hook bus, subscribed at start-up (proxy/app.py), no wrapping
        env = dict(
            os.environ, FHIR_FACADE_BENCH_PHASES=tmp, FHIR_FACADE_HOOK_SUBSCRIBERS="sitecustomize:subscribe"
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(HOOK), os.environ.get("PYTHONPATH"))))
        done = subprocess.run([sys.executable, str(BENCH / "compare.py"), *_with_hook(args)], env=env)
        if done.returncode:
            raise SystemExit(done.returncode)
        print()
        report(Path(tmp))


if __name__ == "__main__":
    main()
