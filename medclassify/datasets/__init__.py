"""Datasets the workflow can make for itself: the synthetic demo and MedMNIST imports.

The columns of the manifests they write are here, apart from the writers (which import the image
libraries), so that the workflow can check a config's subgroup columns against them when it starts.
"""

DEMO_MANIFEST_COLUMNS = ("path", "label", "patient", "modality", "site", "sex")
MEDMNIST_MANIFEST_COLUMNS = ("path", "label", "patient", "modality", "split")
