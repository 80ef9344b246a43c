"""Telling a blank image from its content hash, without the image readers (the split reads this)."""

# Starts the content hash of an image whose pixels are all equal (a blank slice or export): such
# images share their content by having none, so duplicate checks and patient linking skip them.
CONSTANT_CONTENT = "constant-"


def is_constant_content(content_hash):
    """Whether a ``content_hash`` (``medclassify.io.content_hash``) is that of a blank image."""
    return str(content_hash).startswith(CONSTANT_CONTENT)
