"""Sphinx configuration for fdbpl. Builds and reads offline: no intersphinx, and MathJax is
copied into the built HTML (sphinx-mathjax-offline), so equations render with no network."""

import fdbpl

project = "fdbpl"
author = "the fdbpl developers"
copyright = "2026, the fdbpl developers"
release = fdbpl.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # serves MathJax from _static/mathjax, not from a CDN
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shape", "params_style")]
nitpicky = False

html_theme = "furo"
html_title = f"fdbpl {release}"
exclude_patterns = ["_build"]
