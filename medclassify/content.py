"""What files and images are by content: a file's digest, and telling a blank image from its
content hash, without the image readers (the split reads this)."""

import hashlib

# Starts the content hash of an image whose pixels are all equal (a blank slice or export): such
# images share their content by having none, so duplicate checks and patient linking skip them.
CONSTANT_CONTENT = "constant-"


def is_constant_content(content_hash):
    """Whether a ``content_hash`` (``medclassify.io.content_hash``) is that of a blank image."""
    return str(content_hash).startswith(CONSTANT_CONTENT)


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file's bytes, read in chunks (weights files and MedMNIST archives reach
    hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()
