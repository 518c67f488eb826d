"""The base methods FDBPL trains, each declared once as a :class:`MethodSpec`.

A method's spec names its prompt learner, the options it takes and its refusals, and the
loss terms it adds to FDBPL's (PromptSRC's constraints, KgCoOp's knowledge-guided term).
Training, evaluation, :class:`~fdbpl.prompts.PromptModel` and the command line run from the
registry (:func:`method_spec`); :func:`register_method` or an entry point adds a method
from outside the package. See docs/base-methods.rst, "Add a base method".
"""

from fdbpl.methods.registry import (
    BUILTIN,
    DEFAULT_METHOD,
    ENTRY_POINTS,
    method_names,
    method_spec,
    register_method,
)
from fdbpl.methods.spec import ExtraLoss, MethodSpec, MethodTerms, RunContext, StepOutputs

__all__ = [
    "BUILTIN",
    "DEFAULT_METHOD",
    "ENTRY_POINTS",
    "ExtraLoss",
    "MethodSpec",
    "MethodTerms",
    "RunContext",
    "StepOutputs",
    "method_names",
    "method_spec",
    "register_method",
]
