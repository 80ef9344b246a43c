"""Datasets the workflow can make for itself: the synthetic demo and MedMNIST imports.

The columns of the manifests they write are here, apart from the writers (which import the image
libraries), so that the workflow can check a config's subgroup columns against them when it starts.
"""

DEMO_MANIFEST_COLUMNS = ("path", "label", "patient", "modality", "site", "sex")
MEDMNIST_MANIFEST_COLUMNS = ("path", "label", "patient", "modality", "split")

# The keys of a dataset entry that each kind of source reads; the other kinds ignore them.
SOURCE_KEYS = {"demo": ("demo", "demo_patients"), "medmnist": ("medmnist", "medmnist_size", "npz"),
               "manifest": ("manifest", "root")}


def source_kind(options):
    """Where a dataset's manifest comes from, by its resolved options: "demo", "medmnist" or the user's ("manifest")."""
    if options["demo"]:
        return "demo"
    if options["medmnist"] is not None:
        return "medmnist"
    return "manifest"
