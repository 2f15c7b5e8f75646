"""Per stop model and budget: full-depth and adaptive time and measured / ideal, mean of the two
rounds, with glibc's malloc as a fresh process has it (``default-*.json``: ``stop_speed.py
--default-malloc``) and with ``stopwise.perf.reuse_freed_memory()`` (``tuned-*.json``: the
benchmark's setting) → ``summary.json``. Run from the repository root."""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
FIELDS = ("full_seconds", "adaptive_seconds", "wall_over_ideal")


def main() -> None:
    table: dict[tuple, dict[str, list]] = {}
    for malloc in ("default", "tuned"):
        for round_ in (1, 2):
            for row in json.loads((HERE / f"{malloc}-{round_}.json").read_text())["rows"]:
                key = (row["task"], row["model"], row["threads"], row["budget"])
                table.setdefault(key, {}).setdefault(malloc, []).append(row)
    rows = []
    for (task, model, threads, budget), by in table.items():
        out = {"task": task, "model": model, "threads": threads, "budget": budget,
               "ideal": by["default"][0]["ideal_speedup"]}  # fmt: skip
        for malloc, runs in by.items():
            out[malloc] = {f: statistics.fmean(r[f] for r in runs) for f in FIELDS}
            out[malloc]["per_round_wall_over_ideal"] = [r["wall_over_ideal"] for r in runs]
        rows.append(out)
        print(f"{task:18s} {model[:26]:26s} {budget:>10s} ideal {out['ideal']:6.2f}  "
              f"wall/ideal {out['default']['wall_over_ideal']:.2f} (default) "
              f"{out['tuned']['wall_over_ideal']:.2f} (reuse_freed_memory)")  # fmt: skip
    (HERE / "summary.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
