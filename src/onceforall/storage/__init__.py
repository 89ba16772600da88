"""File formats: verified training checkpoints (:mod:`.checkpoint`), checks of a state
dict against a network (:mod:`.state_dicts`), ONNX writing and checking
(:mod:`.onnx_export`)."""
