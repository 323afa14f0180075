"""The bundle contract: the format table, bundles, signatures, model info, Keras files, the TensorRT check."""
