"""`runbook-celery graph`: Mermaid and DOT for workflow files and runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from observe_helpers import chromium, mermaid_js, run_chromium

from runbook_celery import load_workflow, submit
from runbook_celery.cli.graphview import GraphView, dot, mermaid

DEFINITIONS = sorted((ROOT / "definitions").glob("*.yaml"))

# Every line the Mermaid emitter may produce; anything else is a bug in the emitter.
MERMAID_LINE = re.compile(
    r"^(%% .*"
    r"|flowchart LR"
    r'|  s\d+\["[^"\n]+"\]'
    r"|  s\d+ --> s\d+"
    r"|  classDef [a-z]+ fill:#[0-9a-f]{6},stroke:#[0-9a-f]{6},color:#[0-9a-f]{6}"
    r"(,stroke-dasharray:4 4)?"
    r"|  class s\d+(,s\d+)* [a-z]+)$"
)


def _view(path: Path) -> GraphView:
    wf = load_workflow(path).workflow
    return GraphView(wf.name, {s.id: tuple(s.needs) for s in wf.steps})


def test_there_are_definitions_to_check():
    assert len(DEFINITIONS) >= 4


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_mermaid_of_every_definition_has_each_step_and_each_need(path):
    view = _view(path)
    res = run_cli("graph", str(path))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text == mermaid(view)
    lines = text.splitlines()
    assert lines[:2] == [f"%% workflow {view.name}", "flowchart LR"]
    bad = [line for line in lines if not MERMAID_LINE.match(line)]
    assert not bad, bad
    node = dict(re.findall(r'^  (s\d+)\["([^"]+)"\]$', text, re.M))
    assert sorted(node.values()) == sorted(view.needs)
    edges = {(node[a], node[b]) for a, b in re.findall(r"^  (s\d+) --> (s\d+)$", text, re.M)}
    assert edges == {(n, s) for s, needs in view.needs.items() for n in needs}


def test_mermaid_of_every_definition_parses_and_renders_in_real_mermaid(tmp_path):
    """The real Mermaid library, in headless Chromium, parses and renders every diagram."""
    js = mermaid_js()
    if chromium() is None or js is None:
        pytest.skip("needs chromium and mermaid.min.js (npm install mermaid; RUNBOOK_MERMAID_JS)")
    statuses = ["succeeded", "failed", "skipped", "running", "pending", "cancelled"]
    diagrams = [mermaid(_view(p)) for p in DEFINITIONS]
    coloured = _view(DEFINITIONS[0])
    diagrams.append(
        mermaid(
            GraphView(
                coloured.name,
                coloured.needs,
                {s: statuses[i % len(statuses)] for i, s in enumerate(coloured.needs)},
                run_id="0123abcd",
            )
        )
    )
    page = tmp_path / "check.html"
    page.write_text(
        _MERMAID_PAGE.replace("MERMAID_JS", js.as_uri()).replace("DIAGRAMS", json.dumps(diagrams))
    )
    dom = run_chromium(
        page.as_uri(),
        tmp_path / "profile",
        "--allow-file-access-from-files",
        "--virtual-time-budget=20000",
        "--dump-dom",
    )
    found = re.search(r"RESULTS(.*?)END", dom, re.S)
    assert found, dom[-2000:]
    results = found.group(1).split()
    assert results == ["OK"] * len(diagrams), found.group(1)


_MERMAID_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="MERMAID_JS"></script></head><body><pre id="out">waiting</pre><script>
mermaid.initialize({startOnLoad: false});
(async () => {
  const out = [];
  for (const [i, text] of DIAGRAMS.entries()) {
    try {
      await mermaid.parse(text);
      const {svg} = await mermaid.render("d" + i, text);
      out.push(svg.includes("<svg") ? "OK" : "NOSVG");
    } catch (e) { out.push("ERROR:" + String(e.message || e).replace(/\\s+/g, "_")); }
  }
  document.getElementById("out").textContent = "RESULTS " + out.join(" ") + " END";
})();
</script></body></html>
"""


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_dot_of_every_definition_is_accepted_by_graphviz(path):
    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed")
    res = run_cli("graph", str(path), "--format", "dot")
    assert res.returncode == 0, res.stderr
    assert res.stdout == dot(_view(path))
    laid_out = subprocess.run(
        ["dot", "-Tjson"], input=res.stdout, capture_output=True, text=True, timeout=30
    )
    assert laid_out.returncode == 0, laid_out.stderr
    graph = json.loads(laid_out.stdout)
    names = [o["name"] for o in graph["objects"]]
    assert sorted(names) == sorted(_view(path).needs)
    edges = {(names[e["tail"]], names[e["head"]]) for e in graph["edges"]}
    assert edges == {(n, s) for s, needs in _view(path).needs.items() for n in needs}


def test_a_run_graph_colours_each_step_by_status():
    view = GraphView(
        "wf",
        {"a": (), "b": ("a",), "c": ("b",)},
        {"a": "succeeded", "b": "failed", "c": "skipped"},
        run_id="r1",
    )
    text = mermaid(view)
    assert '  s1["b (failed)"]' in text
    assert "  classDef failed fill:#ffcdd2,stroke:#c62828,color:#b71c1c" in text
    assert "  class s0 succeeded" in text and "  class s2 skipped" in text
    graph = dot(view)
    assert '"b" [label="b (failed)", fillcolor="#ffcdd2"' in graph
    assert 'style="rounded,filled,dashed"' in graph  # skipped


def test_graph_of_an_unknown_run_or_missing_file_is_refused():
    missing_run = run_cli("graph", "no-such-run")
    assert missing_run.returncode == 4
    assert "not found" in missing_run.stderr
    missing_file = run_cli("graph", "nowhere/absent.yaml")
    assert missing_file.returncode == 2


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(90)
def test_graph_of_a_run_shows_each_steps_status(write_workflow):
    wf = write_workflow("""
name: coloured
steps:
  - id: ok
    run: 'true'
  - id: bad
    needs: [ok]
    run: exit 1
  - id: never
    needs: [bad]
    run: 'true'
""")
    run = submit(wf)
    assert run.wait(timeout=60).status == "failed"
    res = run_cli("graph", run.id)
    assert res.returncode == 0, res.stderr
    assert f"%% workflow coloured, run {run.id}" in res.stdout
    for label, status in (("ok", "succeeded"), ("bad", "failed"), ("never", "skipped")):
        assert f'["{label} ({status})"]' in res.stdout
        assert f"classDef {status} " in res.stdout
    as_dot = run_cli("graph", run.id, "--format", "dot")
    assert as_dot.returncode == 0
    assert '"ok" -> "bad";' in as_dot.stdout
