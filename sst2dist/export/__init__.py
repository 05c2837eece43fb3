"""Export: a trained model folder in, a verified ONNX bundle out.

`bundle.export_bundle` exports through Optimum, optimizes it (ORT fusions) and quantizes it (`int8`), proves each
variant against PyTorch on real data (`gate`), times them, and writes `manifest.json` (`manifest`) last, into a
temporary folder renamed into place. `options` holds the command's flags.
"""
