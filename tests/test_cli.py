"""The fdbpl command and python -m fdbpl."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from processes import student_args, teacher_args

import fdbpl
from fdbpl.cli import main


def test_main_prints_help(capsys):
    assert main([]) == 0
    assert "usage: fdbpl" in capsys.readouterr().out


def test_python_m_fdbpl():
    out = subprocess.run(
        [sys.executable, "-m", "fdbpl", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fdbpl {fdbpl.__version__}"


@pytest.mark.skipif(
    shutil.which("fdbpl") is None, reason="console script not on PATH (package not installed)"
)
def test_console_script():
    out = subprocess.run(["fdbpl"], capture_output=True, text=True, check=True)
    assert "usage: fdbpl" in out.stdout


def run_main(argv, capsys):
    """(exit status, stderr) of the command run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


BAD_VALUES = [
    (["--scale", "0.5", "0.1"], "--scale: expected 0 < MIN <= MAX <= 1, got 0.5 0.1"),
    (["--scale", "0", "1"], "--scale: expected a finite number > 0, got '0'"),
    (["--ratio", "0", "1"], "--ratio: expected a finite number > 0, got '0'"),
    (["--ratio", "2", "1"], "--ratio: expected 0 < MIN <= MAX, got 2 1"),
    (["--temperature", "inf"], "--temperature: expected a finite number > 0, got 'inf'"),
    (["--temperature", "-1"], "--temperature: expected a finite number > 0, got '-1'"),
    (["--crops-per-image", "0"], "--crops-per-image: expected an integer >= 1, got '0'"),
    (["--topk", "2.5"], "--topk: expected an integer >= 1, got '2.5'"),
    (["--batch-size", "-1"], "--batch-size: expected an integer >= 1, got '-1'"),
    (["--seed", "-3"], "--seed: expected an integer >= 0, got '-3'"),
    (["--shots", "nan"], "--shots: expected an integer >= 1, got 'nan'"),
    (["--shard-size", "0"], "--shard-size: expected an integer >= 1, got '0'"),
    (["--num-workers", "-1"], "--num-workers: expected an integer >= 0, got '-1'"),
    (["--template", "a photo of {} and {}"], "--template: expected exactly one '{}' for the class name"),
    (["--template", "a photo"], "--template: expected exactly one '{}' for the class name"),
    (["--device", "cuda:7"], "--device: cuda:7 does not exist here"),
    (["--device", "gpu"], "--device: 'gpu' is not a device"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_VALUES)
def test_bad_build_values_are_one_line_errors(extra, message, tmp_path, capsys):
    code, err = run_main(["build-cache", tmp_path, tmp_path / "out", "--teacher", "ViT-B-32", *extra], capsys)
    assert code == 2
    assert err.strip() == f"fdbpl build-cache: error: {message}" or err.startswith(
        f"fdbpl build-cache: error: {message}"
    ), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


TRAIN_BAD = [
    (["--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
    (["--lr", "0"], "--lr: expected a finite number > 0, got '0'"),
    (["--alpha", "nan"], "--alpha: expected a finite number >= 0, got 'nan'"),
    (["--delta", "nan"], "--delta: expected a finite number, got 'nan'"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1, got '0'"),
    (["--lambda-neg", "-1"], "--lambda-neg: expected a finite number >= 0, got '-1'"),
    (["--lambda-diff2", "inf"], "--lambda-diff2: expected a finite number >= 0, got 'inf'"),
    (["--n-ctx", "0"], "--n-ctx: expected an integer >= 1, got '0'"),
]


@pytest.mark.parametrize(("extra", "message"), TRAIN_BAD)
def test_bad_train_values_are_one_line_errors(extra, message, tmp_path, capsys):
    code, err = run_main(
        ["train", tmp_path, tmp_path, "--student", "x", "--out", tmp_path / "r", *extra], capsys
    )
    assert (code, err) == (2, f"fdbpl train: error: {message}\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["evaluate", "run", "imgs", "--batch-size", "-1"],
            "fdbpl evaluate: error: --batch-size: expected an integer >= 1, got '-1'",
        ),
        (["demo", "--epochs", "0"], "fdbpl demo: error: --epochs: expected an integer >= 1, got '0'"),
        (["inspect"], "fdbpl inspect: error: the following arguments are required: table"),
    ],
)
def test_other_commands_refuse_bad_values(argv, message, capsys):
    assert run_main(argv, capsys) == (2, message + "\n")


def test_an_existing_file_as_out_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_main(["build-cache", tmp_path, tmp_path / "file", "--teacher", "ViT-B-32"], capsys)
    assert (code, err) == (
        2,
        f"fdbpl build-cache: error: out: {tmp_path / 'file'} exists and is not a folder\n",
    )


def _build_args(image_root, out, teacher_files, *extra):
    return ["build-cache", image_root, out, *teacher_args(teacher_files), "--no-progress", *extra]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("a\nb\na\nc\nd\ne\nf\ng\n", "classnames: repeated class names 'a' and 'a'"),
        ("a\nB\nb\nc\nd\ne\nf\ng\n", "classnames: case-colliding class names 'B' and 'b'"),
        ('["a", 1]', "--classnames: "),
        ("[not json", "--classnames: "),
    ],
)
def test_bad_class_name_files_are_refused(image_root, teacher_files, tmp_path, capsys, names, message):
    (tmp_path / "names.txt").write_text(names)
    argv = _build_args(image_root, tmp_path / "t", teacher_files, "--classnames", tmp_path / "names.txt")
    code, err = run_main(argv, capsys)
    assert code == 2 and err.startswith(f"fdbpl build-cache: error: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_weights_errors_say_what_to_do(image_root, teacher_files, tmp_path, capsys):
    config, _ = teacher_files
    base = ["build-cache", image_root, tmp_path / "t", "--no-progress"]
    code, err = run_main([*base, "--teacher", "ViT-B-32"], capsys)
    assert code == 2 and "pretrained: ViT-B-32 needs weights" in err and "--pretrained none" in err
    code, err = run_main([*base, "--teacher", "ViT-B-32", "--pretrained", "opnai"], capsys)
    assert code == 2 and "pretrained: 'opnai' is not a pretrained tag of ViT-B-32; valid: openai, " in err
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    code, err = run_main([*base, "--teacher", config, "--pretrained", tmp_path / "garbage.pt"], capsys)
    assert code == 2 and f"pretrained: {tmp_path / 'garbage.pt'} is not a checkpoint of" in err
    code, err = run_main([*base, "--teacher", config, "--pretrained", tmp_path / "missing.pt"], capsys)
    assert code == 2 and "pretrained: checkpoint file" in err and "does not exist" in err
    (tmp_path / "bad.json").write_text("{oops")
    code, err = run_main([*base, "--teacher", tmp_path / "bad.json", "--pretrained", "none"], capsys)
    assert code == 2 and "model: " in err and "is not a JSON model config" in err
    for out in (err,):
        assert "Traceback" not in out


def test_random_weights_are_the_same_on_every_call(teacher_files):
    from fdbpl.models import load_open_clip

    config, _ = teacher_files
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match=r"random-initialised \(pretrained=none, seed 3\)"):
        a = load_open_clip(str(config), "none", seed=3).model.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    with pytest.warns(UserWarning):
        b = load_open_clip(str(config), "none", seed=3).model.state_dict()
        c = load_open_clip(str(config), "none", seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.filterwarnings("ignore:fdbpl-tiny-teacher is random-initialised")
def test_two_random_teacher_builds_give_the_same_table(image_root, teacher_files, tmp_path, capsys):
    config, _ = teacher_files
    for name in ("a", "b"):
        argv = ["build-cache", image_root, tmp_path / name, "--teacher", config, "--pretrained", "none"]
        assert run_main([*argv, "--crops-per-image", 2, "--topk", 2, "--no-progress"], capsys)[0] == 0
    for p in (tmp_path / "a").rglob("*"):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p


def test_evaluate_refuses_a_folder_of_other_classes(image_root, teacher_files, tmp_path, capsys):
    from fdbpl.synthetic import draw_image_folder

    config, checkpoint = teacher_files
    table = tmp_path / "t"
    argv = [
        *_build_args(image_root, table, teacher_files, "--crops-per-image", 2, "--topk", 2),
        "--subset",
        "base",
    ]
    assert run_main(argv, capsys)[0] == 0
    run = tmp_path / "run"
    train = ["train", table, image_root, "--student", config, "--pretrained", checkpoint, "--out", run]
    assert run_main([*train, "--epochs", 1, "--batch-size", 4, "--no-progress"], capsys)[0] == 0
    other = draw_image_folder(
        tmp_path / "other", classes=["red_circle", "blue_square", "cyan_cross"], per_class=1
    )
    code, err = run_main(["evaluate", run, other], capsys)
    assert code == 2 and "images: the run was trained on 4 classes, which are neither the 3 classes" in err
    assert run_main(["evaluate", run, image_root], capsys)[0] == 0


def test_a_table_with_student_features_trains_without_the_image_encoder(
    image_root, teacher_files, tmp_path, capsys
):
    config, checkpoint = teacher_files
    table, student = tmp_path / "t", student_args(teacher_files)
    argv = _build_args(image_root, table, teacher_files, "--crops-per-image", 2, "--topk", 2)
    assert run_main([*argv, "--student", config, "--student-pretrained", checkpoint], capsys)[0] == 0
    assert main(["inspect", str(table)]) == 0
    assert "features    fdbpl-tiny-teacher (" in capsys.readouterr().out
    train = ["train", table, image_root, *student, "--epochs", 1, "--batch-size", 4, "--no-progress"]
    assert run_main([*train, "--out", tmp_path / "run", "--image-features", "cached"], capsys)[0] == 0
    assert run_main([*train, "--out", tmp_path / "chunked", "--class-chunk-size", "2"], capsys)[0] == 0
    # another student's weights: refused in one line, naming the way out
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["visual.proj"] = state["visual.proj"] * 2
    torch.save(state, other)
    code, err = run_main(
        [*train, "--out", tmp_path / "r2", "--student", config, "--pretrained", other], capsys
    )
    assert code == 2 and "belong to another student" in err and "--image-features encode" in err, err
    code, err = run_main(
        ["build-cache", image_root, tmp_path / "t3", *teacher_args(teacher_files), "--student", "ViT-B-32"],
        capsys,
    )
    assert code == 2 and "ViT-B-32 needs weights" in err, err


def test_random_positive_context_with_the_negative_phrase(image_root, teacher_files, tmp_path, capsys):
    table = tmp_path / "t"
    assert (
        run_main(_build_args(image_root, table, teacher_files, "--crops-per-image", 2, "--topk", 2), capsys)[
            0
        ]
        == 0
    )
    train = ["train", table, image_root, *student_args(teacher_files), "--epochs", 1]
    argv = [*train, "--batch-size", 4, "--no-progress", "--n-ctx", 8, "--positive-init", "random"]
    assert run_main([*argv, "--out", tmp_path / "run"], capsys)[0] == 0
    extra = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["learner"]["_extra_state"]
    assert extra["n_ctx"] == {"positive": 8, "negative": 4}
    assert extra["inits"] == {"positive": None, "negative": "a photo of no"}
    argv = [*train, "--batch-size", 4, "--no-progress", "--n-ctx", 3, "--out", tmp_path / "run2"]
    assert run_main(argv, capsys)[0] == 0  # --n-ctx alone: both spaces random, as before
    extra = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["learner"]["_extra_state"]
    assert extra["n_ctx"] == {"positive": 3, "negative": 3}


def test_ctrl_c_prints_one_line_and_exits_130(image_root, teacher_files, tmp_path):
    import signal
    import time

    from processes import fdbpl_command, single_thread_env

    out = tmp_path / "t"
    cmd = fdbpl_command(
        *_build_args(
            image_root, out, teacher_files, "--crops-per-image", 400, "--batch-size", 400, "--topk", 3
        )
    )
    # A runner started in the background (``cmd &``) ignores SIGINT, and a child inherits that:
    # Python then installs no KeyboardInterrupt handler. Give the child the default disposition,
    # as a terminal would.
    proc = subprocess.Popen(
        cmd,
        env=single_thread_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("shard-*.partial")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (
        err.strip().splitlines()[-1]
        == "fdbpl build-cache: interrupted — run the same command again to resume"
    )
    assert "Traceback" not in err


def test_weights_that_cannot_be_downloaded_name_the_local_file_option(monkeypatch):
    import open_clip

    from fdbpl.errors import FDBPLError
    from fdbpl.models import load_open_clip

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(
        FDBPLError, match=r"could not be loaded or downloaded .* pass the local file \(--pretrained PATH\)"
    ):
        load_open_clip("ViT-B-32", "openai")


def test_cocoop_trains_and_evaluates_end_to_end(image_root, teacher_files, tmp_path, capsys):
    """fdbpl train --method cocoop, from stored features and from replayed crops; evaluate
    reads the method from the run; a resume with another method is refused."""
    config, checkpoint = teacher_files
    table = tmp_path / "t"
    argv = _build_args(image_root, table, teacher_files, "--crops-per-image", 2, "--topk", 2)
    assert run_main([*argv, "--student", config, "--student-pretrained", checkpoint], capsys)[0] == 0
    train = ["train", table, image_root, *student_args(teacher_files), "--epochs", 1, "--batch-size", 4]
    cocoop = [*train, "--no-progress", "--method", "cocoop"]
    assert run_main([*cocoop, "--out", tmp_path / "run"], capsys)[0] == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["learner"]
    assert state["_extra_state"]["method"] == "cocoop" and "meta_net.shared.0.weight" in state
    argv = [*cocoop, "--meta-net", "per_space", "--image-features", "encode", "--class-chunk-size", 2]
    assert run_main([*argv, "--out", tmp_path / "run2"], capsys)[0] == 0
    state = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["learner"]
    assert "meta_net.negative.2.bias" in state
    assert main(["evaluate", str(tmp_path / "run"), str(image_root), "--initial"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("learned") and out[2].startswith("initial"), out
    code, err = run_main([*train, "--no-progress", "--out", tmp_path / "run", "--epochs", 1], capsys)
    assert code == 2 and "method: 'cocoop' -> 'coop'" in err, err
    code, err = run_main([*cocoop, "--out", tmp_path / "r3", "--class-specific"], capsys)
    assert code == 2 and "class_specific: the cocoop learner has one context per space" in err, err


@pytest.mark.parametrize("method", ["vpt", "ivlp", "maple", "promptsrc"])
def test_deep_methods_train_and_evaluate_end_to_end(method, image_root, teacher_files, tmp_path, capsys):
    """Each deep method from a table through the CLI (its images replayed: the image tower is
    prompted), then evaluated with the run's own learner."""
    table = tmp_path / "t"
    assert (
        run_main(_build_args(image_root, table, teacher_files, "--crops-per-image", 2, "--topk", 2), capsys)[
            0
        ]
        == 0
    )
    run = tmp_path / "run"
    argv = ["train", table, image_root, *student_args(teacher_files), "--epochs", 2, "--batch-size", 4]
    argv += ["--no-progress", "--method", method, "--depth", 2, "--out", run]
    if method == "ivlp":  # the memory options: same run, less memory on a GPU
        argv = [*argv[:-2], "--gradient-checkpointing", "--amp", *argv[-2:]]
    if method == "vpt":  # started from VPT's own checkpoint (its key names, 8 vision tokens)
        vpt = {
            "image_encoder.VPT": torch.randn(8, 64),
            "image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(8, 64),
        }
        torch.save({"state_dict": vpt, "epoch": 5}, tmp_path / "model.pth.tar-5")
        code, err = run_main([*argv, "--init-from", tmp_path / "model.pth.tar-5", "--vision-ctx", 4], capsys)
        assert code != 0 and "'image_encoder.VPT' is (8, 64)" in err, err
        argv = [*argv, "--init-from", tmp_path / "model.pth.tar-5"]
    assert run_main(argv, capsys)[0] == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (
        state["learner"]["_extra_state"]["method"] == method
        and state["learner"]["_extra_state"]["depth"] == 2
    )
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "step" in entry]
    assert all(("src_image" in entry) == (method == "promptsrc") for entry in steps)
    if method == "promptsrc":
        assert len(state["gpa"]["seen"]) == 2
    assert main(["evaluate", str(run), str(image_root)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("learned")
    code, err = run_main([*argv[:-1], tmp_path / "r2", "--image-features", "cached"], capsys)
    assert code == 2 and "prompts the image tower" in err, err


CONFLICTS = [
    (
        ["build-cache", "imgs", "out", "--teacher", "t", "--student-pretrained", "openai"],
        "--student-pretrained: needs --student",
    ),
    (
        ["build-cache", "imgs", "out", "--teacher", "t", "--vocabulary", "v.txt", "--classnames", "c.txt"],
        "--vocabulary: cannot be given with --classnames",
    ),
    (
        ["build-cache", "root", "out", "--teacher", "t", "--dataset", "OxfordPets", "--classnames", "c.txt"],
        "--dataset: cannot be given with --classnames",
    ),
    (
        ["evaluate", "run", "root", "--protocol", "cross-dataset", "--dataset", "OxfordPets"],
        "--protocol: cannot be given with --dataset",
    ),
    (
        ["evaluate", "run", "root", "--protocol", "cross-dataset", "--classes", "base-new"],
        "--protocol: cannot be given with --classes",
    ),
    (
        ["evaluate", "run", "root", "--protocol", "domain-generalisation", "--initial", "--classnames", "c"],
        "--protocol: cannot be given with --classnames, --initial",
    ),
]


@pytest.mark.parametrize(("argv", "message"), CONFLICTS)
def test_contradictory_options_are_refused_naming_both(argv, message, capsys):
    code, err = run_main(argv, capsys)
    assert code == 2 and err.startswith(f"fdbpl {argv[0]}: error: {message} ("), err
    assert len(err.strip().splitlines()) == 1


def test_names_that_become_one_prompt_once_cut_are_refused(teacher_files, tmp_path):
    import open_clip

    from fdbpl.cache.teacher import clip_teacher
    from fdbpl.errors import InputValueError

    model = open_clip.create_model("fdbpl-tiny-teacher")
    tokenizer = open_clip.get_tokenizer("fdbpl-tiny-teacher")
    long = " ".join(["word"] * 80)
    names = ["cat", f"{long} one", f"{long} two"]
    with pytest.raises(InputValueError, match=r"give the same prompt once cut to the text tower's 77 tokens"):
        clip_teacher(model, names, tokenizer, 32, (0.5,) * 3, (0.5,) * 3)
    clip_teacher(model, names[:2], tokenizer, 32, (0.5,) * 3, (0.5,) * 3)  # distinct prompts pass
