"""A CoOp-style training loop with FDBPL's pieces, end to end, on tiny random models.

    python examples/coop_loop.py [--out DIR] [--epochs 2] [--no-student-features]

It is what the guide "Wrap an existing CoOp script" describes, made runnable: the places
a CoOp trainer changes are marked ``# FDBPL``. The models are random-initialised (nothing
is downloaded); swap in ``open_clip.create_model_and_transforms("ViT-B-32",
pretrained="openai")`` and a real image folder for a real run. CI runs this file.

The table also stores the frozen student's image feature of every crop (``student=`` of
``build_table``), so the loop runs no image encoder; ``--no-student-features`` builds a
table of labels only, and the loop then encodes the replayed crops.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import open_clip
import torch

from fdbpl.cache import (
    RegionDataset,
    RILTable,
    build_table,
    clip_student_features,
    clip_teacher,
    scan_image_folder,
)
from fdbpl.demo import TINY_STUDENT
from fdbpl.images import InputRecipe
from fdbpl.losses import FDBPLLoss
from fdbpl.prompts import DualPromptLearner
from fdbpl.sparsify import SparseSoftLabels
from fdbpl.synthetic import draw_image_folder

TINY = TINY_STUDENT  # the demo's tiny CLIP config: 32 px, 2 layers of width 64
MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-student-features", action="store_true", help="a table of labels only")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fdbpl-example-"))
    torch.manual_seed(0)
    images = draw_image_folder(out / "images", per_class=4)
    classnames = scan_image_folder(images).classnames

    # build_model(): the frozen student and the dual prompts.
    clip_model = open_clip.CLIP(**TINY).eval()
    recipe = InputRecipe(32, MEAN, STD)  # the student's input: size and normalisation
    prompt_learner = DualPromptLearner(clip_model, classnames)  # FDBPL: replaces PromptLearner + TextEncoder
    optimizer = torch.optim.SGD(prompt_learner.parameters(), lr=0.05, momentum=0.9)

    # Once, offline: the teacher's soft labels for random crops, and the     # FDBPL
    # frozen student's image feature of each crop.
    teacher = open_clip.CLIP(**TINY).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    build_table(
        images,
        out / "table",
        clip_teacher(teacher, classnames, tokenizer, 32, MEAN, STD),
        student=None if args.no_student_features else clip_student_features(clip_model, recipe),
        crops_per_image=16,
        topk=3,
        progress=False,
        overwrite=True,
    )
    table = RILTable.open(out / "table", classnames=classnames)  # FDBPL
    if table.has_features:
        table.check_student(clip_model, recipe)  # FDBPL: the stored features are this student's
    data = RegionDataset(table, images, recipe=recipe)  # FDBPL: replaces the labelled dataset
    print(f"image features: {'stored in the table' if data.features else 'encoded from the replayed crops'}")
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    criterion = FDBPLLoss()  # FDBPL: replaces cross-entropy
    logit_scale = clip_model.logit_scale.exp().detach()

    for epoch in range(args.epochs):
        data.set_epoch(epoch)  # FDBPL: a new region of every image
        for batch in loader:
            # forward_backward(batch):
            labels = SparseSoftLabels.from_batch(batch, table.num_classes)  # FDBPL: the teacher's labels
            if "features" in batch:  # FDBPL: stored by the table, no image encoder
                image_features = batch["features"].float()
            else:
                with torch.no_grad():
                    image_features = clip_model.encode_image(batch["image"])
            positive, negative = prompt_learner()
            loss = criterion(image_features, positive, negative, labels, batch["weight"], logit_scale)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
        parts = ", ".join(f"{k} {float(v):.4f}" for k, v in loss._asdict().items())
        print(f"epoch {epoch}: {parts}")
    torch.save(prompt_learner.state_dict(), out / "prompts.pt")  # both spaces and the class names
    print(f"saved {out / 'prompts.pt'}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        main()
