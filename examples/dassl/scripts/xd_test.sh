#!/bin/bash
# Evaluate the prompts of xd_train.sh on all classes of another dataset (cross-dataset:
# caltech101, oxford_pets, ...; domain generalisation: imagenetv2, imagenet_sketch,
# imagenet_a, imagenet_r) through CoOp's train.py --eval-only (the shape of CoCoOp's
# xd_test.sh): bash xd_test.sh DATASET SEED [KEY VALUE ...]
set -e
cd "$(dirname "$0")/../.."

DATA=${DATA:-/path/to/datasets}
TRAINER=FDBPL
CFG=${CFG:-fdbpl}
SHOTS=${SHOTS:-16}
SOURCE=${SOURCE:-imagenet}  # the dataset xd_train.sh trained on
LOADEP=${LOADEP:-50}        # the config's OPTIM.MAX_EPOCH (fdbpl.yaml: 50)
PYTHON=${PYTHON:-python}

DATASET=$1
SEED=$2
shift 2

DIR=output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}
if [ -d "$DIR" ]; then
    echo "Oops! The results exist at ${DIR} (so skip this job)"
else
    "$PYTHON" train.py \
    --root "${DATA}" \
    --seed "${SEED}" \
    --trainer ${TRAINER} \
    --dataset-config-file configs/datasets/${DATASET}.yaml \
    --config-file configs/trainers/${TRAINER}/${CFG}.yaml \
    --output-dir "${DIR}" \
    --model-dir output/${SOURCE}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED} \
    --load-epoch "${LOADEP}" \
    --eval-only \
    "$@"
fi
