"""The built documentation reads offline: no page loads a script from the network."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("html")
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def test_no_page_loads_a_remote_script(html):
    pages = sorted(html.rglob("*.html"))
    assert len(pages) > 10
    remote = {
        (p.name, src)
        for p in pages
        for src in SCRIPT_SRC.findall(p.read_text(encoding="utf-8"))
        if re.match(r"(https?:)?//", src)
    }
    assert not remote, sorted(remote)[:5]


def test_equations_render_with_the_bundled_mathjax(html):
    page = (html / "equations.html").read_text(encoding="utf-8")
    sources = SCRIPT_SRC.findall(page)
    mathjax = [s for s in sources if "mathjax" in s.lower()]
    assert mathjax, sources  # the page loads MathJax ...
    for src in mathjax:  # ... from the built folder itself
        assert (html / src.split("?")[0]).is_file(), src
    assert "\\(" in page or 'class="math' in page  # and has maths for it to typeset
