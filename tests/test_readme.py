"""The README's Python snippets run as written, in order, in a fresh process (the docs cannot rot)."""

import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(tmp_path):
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(snippets) >= 3, "the README should show the package, remote-code and pipeline loading paths"
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(snippets))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'label': 'LABEL_" in result.stdout  # the pipeline printed its predictions


DOCS = README.parent / "docs"
OWN_PAGES = ("training", "backbones", "conversion", "benchmarks", "publishing", "design")
WRITTEN_ELSEWHERE = {"docs/deploy.md", "docs/fine_tuning.md"}  # pages of the deploy and fine-tuning work


def test_the_readme_is_short_and_the_docs_pages_say_what_they_are_for():
    assert len(README.read_text().split()) < 1500
    for name in OWN_PAGES:
        text = (DOCS / f"{name}.md").read_text()
        first_paragraph = text.split("\n\n")[1]
        assert first_paragraph.startswith("This page is for"), name


def test_docs_hold_no_issue_numbers_or_run_anecdotes_and_their_links_resolve():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert not re.search(r"\bissues? \d+|\bissue's\b|stray|mistaken tabulation|nice 19", text), page.name
        for target in re.findall(r"\]\(([^)\s#:]+?)(?:#[^)]*)?\)", text):  # relative links, anchors dropped
            path = (page.parent / target).resolve()
            if str(path.relative_to(README.parent)) in WRITTEN_ELSEWHERE and not path.exists():
                continue
            assert path.exists(), f"{page.name} links to {target}"


def test_the_readme_names_both_titles_of_the_paper():
    text = README.read_text()
    assert "Vision Xformers: Efficient Attention for Image Classification" in text
    assert "Resource-efficient Hybrid X-formers for Vision" in text and "two names" in text
