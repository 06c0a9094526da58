"""The shape of src/ that src/lib.rs and docs/development.md describe: arrows run one way, from
the host glue through delivery, a request and the config down to the leaves; no two modules
import each other, directly or through others; only the glue speaks Proxy-Wasm."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# The stages in data-path order; a module may import only its own stage and those before it.
STAGES = [
    {"error", "text", "caps", "metrics", "log_limit", "host"},
    {"pattern", "rules", "classify", "details", "actions", "privacy", "identity", "sites"},
    {"headers", "app", "request"},
    {"hit", "config"},
    {"outbox", "tracker"},
    {"leader", "matomo", "lanes", "delivery"},
    {"wasm_host", "http", "root"},
]
LEAVES, GLUE = STAGES[0], STAGES[-1]
STAGE = {m: i for i, stage in enumerate(STAGES) for m in stage}


def code(path: Path) -> str:
    """The module's code without its unit tests (they may use anything) and without comments."""
    text = path.read_text()
    text = re.split(r"^#\[cfg\(test\)\]\s*\nmod tests", text, flags=re.M)[0]
    return re.sub(r"//.*", "", text)


def imports() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.glob("*.rs"):
        if path.stem == "lib":
            continue
        body = code(path)
        used = set(re.findall(r"\bcrate::(\w+)", body))
        # `use crate::{a, b::C, ...}` groups.
        for group in re.findall(r"\bcrate::\{([^}]*)\}", body, flags=re.S):
            used |= set(re.findall(r"(?:^|,)\s*(\w+)", group))
        graph[path.stem] = used & STAGE.keys() - {path.stem}
    return graph


def test_every_module_has_a_stage():
    modules = {p.stem for p in SRC.glob("*.rs")} - {"lib"}
    assert modules == set(STAGE), (
        f"not in a stage: {sorted(modules - set(STAGE))}; gone: {sorted(set(STAGE) - modules)}")


def test_imports_point_only_to_the_same_or_an_earlier_stage():
    wrong = [f"{m} (stage {STAGE[m]}) imports {d} (stage {STAGE[d]})"
             for m, deps in imports().items() for d in deps if STAGE[d] > STAGE[m]]
    assert not wrong, wrong


def test_leaves_import_nothing_and_nothing_imports_the_glue():
    graph = imports()
    assert {m: graph[m] for m in LEAVES if graph[m]} == {}
    assert {m: deps & GLUE for m, deps in graph.items() if deps & GLUE and m not in GLUE} == {}


def test_no_module_reaches_itself_through_others():
    graph = imports()
    cycles = []

    def visit(start: str, node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep == start:
                cycles.append(" → ".join([*path, dep]))
            elif dep not in path and STAGE[dep] == STAGE[start]:
                visit(start, dep, [*path, dep])

    for module in sorted(graph):
        visit(module, module, [module])
    assert not cycles, cycles


def test_only_the_glue_speaks_proxy_wasm():
    speaking = sorted(p.stem for p in SRC.glob("*.rs")
                      if p.stem != "lib" and "proxy_wasm" in code(p))
    assert set(speaking) <= GLUE, speaking
