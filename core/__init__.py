"""Cats vs Dogs Studio core: the cv2 pipeline, Keras models, training, prediction and the run store.

Importing this package is cheap: TensorFlow loads only when a model is built or loaded.
"""

import os

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI and newer; elsewhere (an AVX2
# AMD EPYC here) its Eigen fallback spends over a third of training's CPU time in the kernel, faulting in fresh
# pages: `python benchmarks/onednn.py` measured a short training at 0.53x the wall time and 0.55x the CPU with it on.
# Set before TensorFlow is first imported, which every path into it does through this package; a user's own
# TF_ENABLE_ONEDNN_OPTS wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
