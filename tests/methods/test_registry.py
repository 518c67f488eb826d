"""The method registry: every base method declared once, runs of any registered method
(built-in, registered at run time, or from a plugin's entry point) through train, evaluate
and the command line, and FDBPL + KgCoOp as the proof that a method is one file."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from processes import student_args, teacher_args
from tiny_models import tiny_open_clip

import fdbpl
import fdbpl.methods.registry as registry
from fdbpl.cache import RILTable, build_table, clip_teacher, scan_image_folder
from fdbpl.cli import main
from fdbpl.errors import FDBPLError
from fdbpl.methods import BUILTIN, MethodSpec, MethodTerms, method_names, method_spec, register_method
from fdbpl.methods.coop import coop_learner_options
from fdbpl.prompts import DualPromptLearner, PromptLearnerBase, build_learner
from fdbpl.train import TrainConfig, train

ROOT = Path(fdbpl.__file__).parent


@pytest.fixture
def clean_registry(monkeypatch):
    """The registry as built in, restored after the test."""
    method_names()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture(scope="module")
def table(tmp_path_factory, image_root, loaded_teacher):
    scan = scan_image_folder(image_root)
    lt = loaded_teacher
    teacher = clip_teacher(lt.model, scan.classnames, lt.tokenizer, lt.image_size, lt.mean, lt.std)
    out = tmp_path_factory.mktemp("methods") / "table"
    build_table(image_root, out, teacher, scan=scan, crops_per_image=2, topk=3, batch_size=24, progress=False)
    return RILTable.open(out)


def _string_constants(path: Path) -> set[str]:
    """Every string literal of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }


@pytest.mark.parametrize("module", ["train.py", "evaluate.py", "cli.py", "prompts/build.py"])
def test_the_upper_floors_name_no_method(module):
    assert not _string_constants(ROOT / module) & set(BUILTIN)


def test_every_builtin_is_one_spec_with_its_learners_capabilities():
    assert method_names()[: len(BUILTIN)] == tuple(BUILTIN)
    for name in BUILTIN:
        spec = method_spec(name)
        assert spec.name == name and issubclass(spec.learner, PromptLearnerBase)
    assert method_spec("cocoop").per_image and not method_spec("coop").per_image
    assert {n for n in BUILTIN if method_spec(n).prompts_images} == {"vpt", "ivlp", "maple", "promptsrc"}
    assert {n for n in BUILTIN if method_spec(n).class_specific} == {"coop", "kgcoop"}
    with pytest.raises(FDBPLError, match=r"method: expected one of \['coop', "):
        method_spec("nope")


class _EchoTerms(MethodTerms):
    """A user's extra term: a constant times the mean positive feature, logged as 'echo'."""

    def __init__(self, run):
        self.factor = run.options.factor

    def loss(self, step):
        term = self.factor * step.positive.mean()
        return fdbpl.methods.ExtraLoss(term, {"echo": term})


@dataclass(frozen=True)
class _EchoOptions:
    factor: float = field(default=0.5, metadata={"help": "the echo's factor (default: 0.5)"})


ECHO = MethodSpec(
    "echo",
    DualPromptLearner,
    "coop plus a test term",
    coop_learner_options,
    options=_EchoOptions,
    terms=_EchoTerms,
)


def test_a_method_registered_from_outside_trains_and_names_its_term(
    clean_registry, table, image_root, tmp_path
):
    assert register_method(ECHO) is ECHO and "echo" in method_names()
    with pytest.raises(FDBPLError, match="a method 'echo' exists"):
        register_method(MethodSpec("echo", DualPromptLearner, "another"))
    with pytest.raises(
        FDBPLError, match=r"method_options: the echo method takes \['factor'\], not \['factr'\]"
    ):
        TrainConfig(method="echo", method_options={"factr": 1.0})
    student, tok = tiny_open_clip("clip", seed=5)
    cfg = TrainConfig(epochs=1, batch_size=4, method="echo", method_options={"factor": 2.0})
    result = train(
        table, image_root, student, tmp_path / "run", config=cfg, tokenizer=tok, image_size=32, progress=False
    )
    assert "echo" in result.last and result.last["total"] != pytest.approx(result.last["echo"])
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first = next(s for s in steps if "step" in s)
    fdbpl_parts = first["positive"] + first["negative"] + first["first_order"] + first["second_order"]
    assert first["total"] == pytest.approx(fdbpl_parts + first["echo"], rel=1e-5)


def test_a_plugin_method_from_an_entry_point_is_found(monkeypatch):
    fake = SimpleNamespace(name="echo", value=f"{__name__}:ECHO")
    monkeypatch.setattr(registry, "entry_points", lambda group: [fake] if group == "fdbpl.methods" else [])
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    assert method_names()[-1] == "echo" and method_spec("echo") is ECHO
    argv = ["train", "t", "i", "--student", "s", "--out", "r", "--method", "echo", "--echo-factor", "3"]
    parser_help = fdbpl.cli.build_parser().parse_args(argv)
    assert parser_help.method == "echo" and parser_help.method_option__echo__factor == 3.0


def test_options_of_another_method_and_bad_values_are_command_line_errors(capsys):
    base = ["train", "t", "i", "--student", "s", "--out", "r"]
    with pytest.raises(SystemExit) as refused:
        main([*base, "--kgcoop-weight", "2"])
    assert refused.value.code == 2
    assert "--kgcoop-weight: an option of --method kgcoop, not of coop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--method", "kgcoop", "--kgcoop-weight", "-1"])
    assert (
        "fdbpl train: error: --kgcoop-weight: expected a finite number >= 0, got -1"
        in capsys.readouterr().err
    )


def test_kgcoop_adds_the_authors_term_to_fdbpl(table, image_root, tmp_path):
    """The first step's logged term is the authors' score of the initial contexts against the
    frozen student's hand-crafted prompts, times the weight."""
    student, tok = tiny_open_clip("clip", seed=5)
    template = "a blurry photo of a {}."
    cfg = TrainConfig(
        epochs=1, batch_size=4, method="kgcoop", method_options={"weight": 3.0, "template": template}
    )
    result = train(
        table, image_root, student, tmp_path / "run", config=cfg, tokenizer=tok, image_size=32, progress=False
    )
    first = next(json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines())
    fresh, _ = tiny_open_clip("clip", seed=5)
    learner = DualPromptLearner(fresh, table.classnames, tokenizer=tok, normalize_classnames=False)
    with torch.no_grad():
        learned = learner()[0]
        old = fresh.encode_text(tok([template.format(c) for c in table.classnames]))
    learned, old = learned / learned.norm(dim=-1, keepdim=True), old / old.norm(dim=-1, keepdim=True)
    want = 3.0 * (1.0 - torch.mean(torch.nn.CosineSimilarity(dim=1, eps=1e-07)(learned, old)))
    assert first["kg"] == pytest.approx(float(want), rel=1e-4, abs=1e-6)
    assert (
        result.steps > 0
        and json.loads((tmp_path / "run" / "config.json").read_text())["config"]["method"] == "kgcoop"
    )
    assert F.cosine_similarity(learned, old).numel() == len(table.classnames)


def test_fdbpl_train_method_kgcoop_runs_and_evaluates(tmp_path, image_root, teacher_files, capsys):
    build = [
        "build-cache",
        image_root,
        tmp_path / "t",
        *teacher_args(teacher_files),
        "--crops-per-image",
        2,
        "--topk",
        2,
    ]
    assert main([str(a) for a in [*build, "--no-progress"]]) == 0
    train_args = [
        "train",
        tmp_path / "t",
        image_root,
        *student_args(teacher_files),
        "--out",
        tmp_path / "run",
    ]
    extra = ["--method", "kgcoop", "--kgcoop-weight", 8, "--epochs", 1, "--batch-size", 4, "--no-progress"]
    assert main([str(a) for a in [*train_args, *extra]]) == 0
    assert "kg " in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), str(image_root)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("learned")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert recorded["method"] == "kgcoop" and recorded["method_options"] == {"weight": 8.0}


def test_build_learner_takes_a_registered_method(clean_registry):
    register_method(ECHO)
    model, tok = tiny_open_clip("clip")
    prompts = build_learner("echo", model, ["cat", "dog"], tokenizer=tok)
    assert isinstance(prompts.learner, DualPromptLearner) and not prompts.prompts_images
