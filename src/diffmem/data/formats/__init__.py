"""On-disk image-set formats, one module each; :func:`diffmem.data.io.load_image_set` picks one.

``png`` (single PNGs and PNG folders), ``edmzip`` (EDM-style dataset zips), ``npz``, ``cifar``
(the CIFAR-10 python archive) and ``idx`` (MNIST-family files). ``common`` holds what they share:
error messages that name the parameter and the file, and the final checks of an image set.
"""
