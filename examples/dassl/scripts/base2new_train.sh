#!/bin/bash
# FDBPL on base classes through CoOp's train.py (the shape of CoCoOp's base2new_train.sh).
# Copy into CoOp/scripts/fdbpl/, then: bash base2new_train.sh DATASET SEED [KEY VALUE ...]
# DATASET names a file of CoOp's configs/datasets (oxford_pets, imagenet, ...); KEY VALUE
# pairs are added to the config (e.g. TRAINER.FDBPL.TEACHER ViT-L-14). The trainer builds the
# table of this seed's draw on the first run and reuses it afterwards.
set -e
cd "$(dirname "$0")/../.."

DATA=${DATA:-/path/to/datasets}  # CoOp's DATASET.ROOT
TRAINER=FDBPL
CFG=${CFG:-fdbpl}                # configs/trainers/FDBPL/${CFG}.yaml
SHOTS=${SHOTS:-16}
PYTHON=${PYTHON:-python}

DATASET=$1
SEED=$2
shift 2

DIR=output/base2new/train_base/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
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
    DATASET.SUBSAMPLE_CLASSES base \
    "$@"
fi
