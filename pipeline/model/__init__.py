"""The train stage: the FlexUNet (`network`), its losses and the metrics `fit` reports
(`losses`, `train_metrics`), the tf.data input (`dataset`), the training loop (`training`)
and training past one device (`distribute`).
"""
