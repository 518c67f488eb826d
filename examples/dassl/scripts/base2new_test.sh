#!/bin/bash
# Evaluate FDBPL's base-trained prompts on new (or base) classes through CoOp's train.py
# --eval-only (the shape of CoCoOp's base2new_test.sh); no table is needed.
# bash base2new_test.sh DATASET SEED [KEY VALUE ...]; SUB=base evaluates the base classes.
set -e
cd "$(dirname "$0")/../.."

DATA=${DATA:-/path/to/datasets}
TRAINER=FDBPL
CFG=${CFG:-fdbpl}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-50}  # the config's OPTIM.MAX_EPOCH (fdbpl.yaml: 50)
SUB=${SUB:-new}
PYTHON=${PYTHON:-python}

DATASET=$1
SEED=$2
shift 2

COMMON_DIR=${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
MODEL_DIR=output/base2new/train_base/${COMMON_DIR}
DIR=output/base2new/test_${SUB}/${COMMON_DIR}
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
    --model-dir "${MODEL_DIR}" \
    --load-epoch "${LOADEP}" \
    --eval-only \
    DATASET.NUM_SHOTS "${SHOTS}" \
    DATASET.SUBSAMPLE_CLASSES "${SUB}" \
    "$@"
fi
