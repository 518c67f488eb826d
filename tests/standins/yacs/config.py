"""Stand-in for ``yacs.config.CfgNode``: a dict with attribute access (tests only)."""

from __future__ import annotations


class CfgNode(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value
