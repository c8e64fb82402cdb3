"""What leaves the run: the offline report page (`page`, built from `html` parts), the model
card both it and the exported model carry (`model_card`), and the exported SavedModel with
its contract (`export`).
"""
