"""CTExplainTraining: fit 3D/2D CT classifiers and U-Net segmenters into CTExplain model packages."""
