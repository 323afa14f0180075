"""The stages' imports as a picture: which stage imports which, counted over every module (lazy imports too).

    python benchmarks/import_graph.py --out benchmarks/results/imports-<date>

writes imports.md (the stage-by-stage table and every import that does not point down the pipeline) and
imports.png (the stages left to right, an arrow per importing pair). tests/test_core.py checks the same rule.
"""
from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("core", "training", "export", "devices", "bench", "reports")  # the pipeline, left to right
FOLDERS = {"core": "edgecxr", "training": "training", "export": "export", "devices": "devices", "bench": "bench",
           "reports": "reports"}
# Imports that go against the pipeline on purpose: the CLI's lazy command table and the demo run every stage.
ALLOWED = {("core", "cli.py"), ("core", "demo.py")}


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "edgecxr":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in STAGES[1:] else "core"


def stage_imports(repo: Path = REPO) -> list[tuple[str, str, str, int]]:
    """(importing stage, imported stage, file, line) for every edgecxr import between two different stages."""
    edges = []
    for stage, folder in FOLDERS.items():
        files = (repo / folder).rglob("*.py")
        for path in sorted(files):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for target in filter(None, map(_stage_of, names)):
                    if target != stage:
                        edges.append((stage, target, path.relative_to(repo).as_posix(), node.lineno))
    return edges


def upward(edges) -> list[tuple[str, str, str, int]]:
    """Imports of a later stage (or a sideways one): against the pipeline."""
    return [e for e in edges if STAGES.index(e[1]) >= STAGES.index(e[0])]


def against_the_pipeline(edges) -> list[tuple[str, str, str, int]]:
    """Upward imports that ALLOWED does not name."""
    return [e for e in upward(edges) if (e[0], Path(e[2]).name) not in ALLOWED]


def _table(edges) -> str:
    counts = Counter((a, b) for a, b, _, _ in edges)
    rows = ["| imports -> | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    rows += [f"| {a} | " + " | ".join(str(counts.get((a, b), "")) for b in STAGES) + " |" for a in STAGES]
    return "\n".join(rows)


def _picture(edges, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter((a, b) for a, b, _, _ in edges)
    x = {s: i for i, s in enumerate(STAGES)}
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for s in STAGES:
        ax.text(x[s], 0, s, ha="center", va="center", fontsize=12, bbox={"boxstyle": "round", "fc": "#e8eef7"})
    for (a, b), n in counts.items():
        down = x[b] < x[a]
        ax.annotate("", xy=(x[b], 0.12 if down else -0.12), xytext=(x[a], 0.12 if down else -0.12),
                    arrowprops={"arrowstyle": "->", "color": "#3a6ea5" if down else "#c0392b", "lw": 1 + n ** 0.5 / 2,
                                "connectionstyle": "arc3,rad=0.3"})
    ax.set_xlim(-0.6, len(STAGES) - 0.4)
    ax.set_ylim(-1.1, 1.1)
    ax.axis("off")
    ax.set_title("edgecxr stage imports (blue: towards the core; red: the demo, by design)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for imports.md and imports.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    edges = stage_imports()
    wrong = against_the_pipeline(edges)
    lines = ["# Stage imports", "", "`python benchmarks/import_graph.py --out <this folder>`", "",
             "Rows import columns; each count is one import statement (lazy ones included).", "", _table(edges), "",
             "Imports towards a later stage (allowed by design):", ""]
    lines += [f"- {a} -> {b}: `{f}:{n}`" for a, b, f, n in upward(edges)] or ["- none"]
    lines += ["", f"Against the pipeline and not allowed: {len(wrong)}"]
    lines += [f"- {a} -> {b}: `{f}:{n}`" for a, b, f, n in wrong]
    (args.out / "imports.md").write_text("\n".join(lines) + "\n")
    _picture(edges, args.out / "imports.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
