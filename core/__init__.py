"""Cats vs Dogs Studio core: the cv2 pipeline, Keras models, training, prediction and the run store.

Importing this package is cheap: TensorFlow loads only when a model is built or loaded.
"""
