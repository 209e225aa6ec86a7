"""The values options offer, in a module that imports nothing: the parser shows them without
importing torch, and :mod:`..pipeline` and :mod:`..devices` check against the same tuples."""

METHODS = ("cam", "gradcam", "gradcampp")  # CAM methods (cam.METHODS holds their classes)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
IMAGE_FORMATS = ("nrrd", "nii.gz")  # heat maps and label maps
