#!/bin/bash
# FDBPL on all classes of ImageNet (or DATASET=...) for cross-dataset transfer and domain
# generalisation (the shape of CoCoOp's xd_train.sh): bash xd_train.sh SEED [KEY VALUE ...]
set -e
cd "$(dirname "$0")/../.."

DATA=${DATA:-/path/to/datasets}
TRAINER=FDBPL
CFG=${CFG:-fdbpl}
SHOTS=${SHOTS:-16}
DATASET=${DATASET:-imagenet}
PYTHON=${PYTHON:-python}

SEED=$1
shift 1

DIR=output/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}
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
    DATASET.NUM_SHOTS "${SHOTS}" \
    "$@"
fi
