"""Inputs: dataset folders and splits, image decoding, the preprocessing spec and the input contract."""

DEFAULT_CLASSES = ("NORMAL", "PNEUMONIA")  # the class folders, negative first (--classes)
